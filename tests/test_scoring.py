import numpy as np
import pytest

from inspect_edge.scoring import DiceAccumulator, dice_pair, score_masks


def test_dice_pair_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_pair(a, b) == 1.0  # both empty
    b[0, :2] = True
    assert dice_pair(a, b) == 0.0  # truth only
    a[0, 1:4] = True  # 3 pixels, 1 shared with truth's 2 -> 2*1/(3+2)
    assert dice_pair(a, b) == pytest.approx(0.4)
    assert dice_pair(b, b) == 1.0
    with pytest.raises(ValueError, match="shape"):
        dice_pair(a, np.zeros((3, 3), bool))


def _worked_case():
    # 2 images x 2 classes, 2x2 pixels each.
    pred = np.zeros((2, 2, 2, 2), bool)
    true = np.zeros((2, 2, 2, 2), bool)
    # image 0 class 0: pred 2 px, truth 2 px, 1 shared -> dice 0.5, inter 1 union 3
    pred[0, 0, 0, :] = True
    true[0, 0, :, 0] = True
    # image 0 class 1: both empty -> 1
    # image 1 class 0: false positive of 1 px on an empty truth -> 0, inter 0 union 1
    pred[1, 0, 1, 1] = True
    # image 1 class 1: perfect 4 px -> 1, inter 4 union 4
    pred[1, 1] = True
    true[1, 1] = True
    return pred, true


def test_score_masks_hand_worked():
    pred, true = _worked_case()
    r = score_masks(pred, true, ["pits", "cracks"])
    assert r["n_images"] == 2
    assert r["competition_dice"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert r["per_class_dice"] == pytest.approx({"pits": 0.25, "cracks": 1.0})
    # Only images where the class is in truth: pits only in image 0, cracks only in image 1.
    assert r["per_class_dice_present"] == pytest.approx({"pits": 0.5, "cracks": 1.0})
    assert r["per_class_iou"] == pytest.approx({"pits": 1 / 4, "cracks": 1.0})
    assert r["mean_iou"] == pytest.approx((0.25 + 1.0) / 2)
    # Background = pixels of no class. Image 0: truth bg 2 px (row 0 col 1, row 1 col 1), pred bg
    # 2 px (row 1); shared 1, union 3. Image 1: no background in truth or prediction.
    assert r["background_iou"] == pytest.approx(1 / 3)
    assert r["miou_incl_background"] == pytest.approx((0.25 + 1.0 + 1 / 3) / 3)


def test_iterable_and_accumulator_agree_with_batch():
    pred, true = _worked_case()
    batch = score_masks(pred, true, ["a", "b"])
    assert score_masks(iter(pred), iter(true), ["a", "b"]) == batch
    acc = DiceAccumulator(2)
    acc.update(pred[0], true[0])
    acc.update(pred[1:], true[1:])
    assert acc.result(["a", "b"]) == batch


def test_class_never_present_gives_none_not_nan():
    pred = np.zeros((3, 2, 4, 4), bool)
    true = np.zeros((3, 2, 4, 4), bool)
    true[0, 0, 1, 1] = True
    pred[0, 0, 1, 1] = True
    r = score_masks(pred, true, ["a", "b"])
    assert r["competition_dice"] == 1.0
    assert r["per_class_dice_present"] == {"a": 1.0, "b": None}
    assert r["per_class_iou"] == {"a": 1.0, "b": None}
    assert r["mean_iou"] == 1.0


def test_empty_prediction_on_all_defect_free_scores_one_and_any_fp_lowers_it():
    true = np.zeros((4, 4, 8, 8), bool)
    pred = np.zeros_like(true)
    assert score_masks(pred, true, list("abcd"))["competition_dice"] == 1.0
    pred[2, 3, 0, 0] = True
    assert score_masks(pred, true, list("abcd"))["competition_dice"] == pytest.approx(15 / 16)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="K=2"):
        DiceAccumulator(2).update(np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool))
    with pytest.raises(ValueError, match="image 1"):
        score_masks([np.zeros((2, 4, 4))] * 2, [np.zeros((2, 4, 4)), np.zeros((2, 5, 4))], ["a", "b"])
