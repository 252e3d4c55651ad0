"""Calibration objectives on logits made by hand: which threshold and minimum area each one picks."""

import numpy as np
import pytest

from train.calibrate import calibrate


def _frames():
    """One class on 64x64 frames: four images hold a small true mark (60 px) the model finds;
    four clean images where the model fires a small false mark (60 px) of its own."""
    pairs = []
    for i in range(8):
        logits = np.full((1, 64, 64), -6.0, np.float32)
        true = np.zeros((1, 64, 64), bool)
        logits[0, 10:16, 10:20] = 3.0
        if i < 4:
            true[0, 10:16, 10:20] = True
        pairs.append((logits, true))
    return pairs


def test_balanced_objective_scores_present_images_too():
    # The area grid of a 256x1600 frame is 0, 205, 410, ... px: any area but 0 deletes the 60-px marks.
    pairs = _frames()
    comp = calibrate(pairs, ("a",), (256, 1600), thresholds=(0.5,), objective="competition")
    bal = calibrate(pairs, ("a",), (256, 1600), thresholds=(0.5,), objective="balanced")
    # Keeping the marks: 4 true hits (1) + 4 false marks (0) -> pair Dice 0.5; deleting all
    # (any min area > 60): 4 misses (0) + 4 clean (1) -> 0.5 too; the first maximum (area 0) wins ties.
    assert comp["per_class"]["a"]["dice"] == pytest.approx(0.5)
    assert bal["min_areas"] == [0] and bal["per_class"]["a"]["dice_present"] == pytest.approx(1.0)
    assert bal["per_class"]["a"]["score"] == pytest.approx(0.75)
    assert bal["per_class"]["a"]["images_present"] == 4 and bal["objective"] == "balanced"


def test_competition_prefers_silence_when_false_marks_outnumber_true_ones():
    pairs = _frames()
    for logits, _ in pairs[4:]:
        pairs.append((logits.copy(), np.zeros_like(pairs[0][1])))   # more clean images with false marks
    comp = calibrate(pairs, ("a",), (256, 1600), thresholds=(0.5,), objective="competition")
    bal = calibrate(pairs, ("a",), (256, 1600), thresholds=(0.5,), objective="balanced")
    assert comp["min_areas"][0] > 60            # deletes every mark: 8 clean images score 1, 4 misses 0
    assert comp["per_class"]["a"]["dice_present"] == pytest.approx(0.0)
    assert bal["min_areas"] == [0]               # (1/3 + 1) / 2 beats (2/3 + 0) / 2
    assert bal["competition_dice"] == pytest.approx(4 / 12)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective must be one of competition, balanced"):
        calibrate(_frames(), ("a",), (256, 1600), objective="recall")


def test_iou_objective_pools_pixels_so_a_few_false_marks_do_not_silence_a_class():
    pairs = _frames()
    for logits, _ in pairs[4:]:
        pairs.append((logits.copy(), np.zeros_like(pairs[0][1])))   # 4 found marks, 8 clean images with false marks
    comp = calibrate(pairs, ("a",), (256, 1600), thresholds=(0.5,), objective="competition")
    iou = calibrate(pairs, ("a",), (256, 1600), thresholds=(0.5,), objective="iou")
    assert comp["min_areas"][0] > 60
    # Kept: 240 px found, 480 px false -> IoU 240/720; deleted: IoU 0.
    assert iou["min_areas"] == [0] and iou["objective"] == "iou"
    assert iou["per_class"]["a"]["iou"] == pytest.approx(1 / 3) == iou["score"]


def test_iou_objective_picks_the_threshold_that_covers_the_defect():
    # A 10x10 defect whose lower four rows the model is unsure of (p ~ 0.38).
    pairs = []
    for _ in range(3):
        logits = np.full((1, 64, 64), -6.0, np.float32)
        logits[0, 10:16, 10:20], logits[0, 16:20, 10:20] = 3.0, -0.5
        true = np.zeros((1, 64, 64), bool)
        true[0, 10:20, 10:20] = True
        pairs.append((logits, true))
    iou = calibrate(pairs, ("a",), (64, 64), thresholds=(0.3, 0.5), objective="iou")
    assert iou["thresholds"] == [0.3] and iou["per_class"]["a"]["iou"] == pytest.approx(1.0)
