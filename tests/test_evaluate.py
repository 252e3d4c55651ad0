"""`train evaluate` on a tiny trained run: scores, confusion summary, timing, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from inspect_edge.data import write_severstal  # noqa: E402
from test_fit import CLASSES, make_mask_folder, make_rect_samples, tiny_cfg  # noqa: E402


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    from train.fit import fit

    root = tmp_path_factory.mktemp("eval")
    data = make_mask_folder(root / "data")
    fit(tiny_cfg(data, root / "run", epochs=6), progress=False)
    return root / "run", data


def test_evaluate_writes_scores_confusion_timing_and_worst_cases(run_and_data):
    from train.evaluate import evaluate

    run, data = run_and_data
    res = evaluate(run, data)
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert res["split"] == "val" and res["n_images"] == 4
    assert set(res["per_class_dice"]) == set(CLASSES) == set(res["per_class_iou"])
    assert 0.0 <= res["competition_dice"] <= 1.0
    # The all-empty baseline on this data: val images 0..3 carry class 0 on 0,1,3 and class 1 on 0,2.
    assert res["all_empty_baseline_dice"] == pytest.approx((1 + 2) / 8)
    conf = res["confusion"]
    assert conf["per_class"]["dent"]["images_present"] == 3 and conf["per_class"]["scratch"]["images_present"] == 2
    assert 0 <= conf["images_with_missed_defect"] <= 4 and 0 <= conf["images_with_false_defect"] <= 4
    assert res["inference_ms_per_image"] > 0
    assert (run / "worst_cases.png").stat().st_size > 0


def test_evaluate_agrees_with_scoring_the_calibrated_masks_by_hand(run_and_data):
    from inspect_edge.data import open_dataset
    from inspect_edge.postprocess import masks_from_logits
    from inspect_edge.scoring import score_masks
    from train.checkpoint import load_run
    from train.evaluate import evaluate
    from train.predict import predict_logits

    run, data = run_and_data
    res = evaluate(run, data, "train", out=run / "on_train")
    model, info = load_run(run)
    ds = open_dataset(data).split("train")
    logits = predict_logits(model, [ds[i].image for i in range(len(ds))], info)
    pred = np.stack([masks_from_logits(lg, info.thresholds, info.min_areas) for lg in logits])
    ref = score_masks(pred, np.stack([ds[i].masks for i in range(len(ds))]), info.classes)
    assert res["split"] == "train" and res["n_images"] == 12
    assert res["competition_dice"] == pytest.approx(ref["competition_dice"])
    assert (run / "on_train" / "evaluation_train.json").is_file() and (run / "on_train" / "worst_cases_train.png").is_file()
    assert not (run / "on_train" / "evaluation.json").exists()  # another split never overwrites val's scores
    assert 0.0 <= res["miou_incl_background"] <= 1.0 and res["background_iou"] > res["mean_iou"] - 1.0


def test_evaluate_uses_the_runs_own_holdout_when_the_data_has_no_val_split(tmp_path):
    from train.evaluate import evaluate
    from train.fit import fit

    data = tmp_path / "sev"
    write_severstal(data, make_rect_samples(10), CLASSES)
    fit(tiny_cfg(data, tmp_path / "run", epochs=1), progress=False)
    res = evaluate(tmp_path / "run", data)
    val_ids = json.loads((tmp_path / "run" / "split.json").read_text())["val_ids"]
    assert res["split"] == "run validation hold-out" and res["n_images"] == len(val_ids) == 2
    with pytest.raises(KeyError):
        evaluate(tmp_path / "run", data, "nope")


def test_evaluate_cli_prints_a_table(run_and_data):
    from typer.testing import CliRunner

    from train.cli import app

    run, data = run_and_data
    r = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert "competition Dice" in r.output and "dent" in r.output
    assert "[val, 4 images]" in r.output.replace("\n", "")  # not eaten as rich markup
    assert "mIoU incl. background" in r.output and "background" in r.output


def test_calibrate_cli_rechooses_thresholds_for_iou_and_keeps_the_old_calibration(run_and_data, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from train.checkpoint import read_checkpoint
    from train.cli import app
    from train.evaluate import evaluate

    src, data = run_and_data
    run = tmp_path / "run"
    shutil.copytree(src, run)   # the module's run stays as fit wrote it
    before = json.loads((run / "calibration.json").read_text())
    r = CliRunner().invoke(app, ["calibrate", str(run), "--data", str(data), "--objective", "iou"])
    assert r.exit_code == 0, r.output
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["objective"] == "iou" and cal["split"] == "val" and cal["n_images"] == 4
    assert json.loads((run / "calibration_competition.json").read_text()) == before
    assert cal["previous"]["objective"] == "competition"
    assert cal["chosen_checkpoint_epoch"] == before["chosen_checkpoint_epoch"]
    info = json.loads((run / "model_info.json").read_text())
    assert info["thresholds"] == cal["thresholds"] and info["min_areas"] == cal["min_areas"]
    assert read_checkpoint(run / "best.pt")["model_info"]["thresholds"] == cal["thresholds"]
    # The IoU the search picked is the IoU `train evaluate` then measures with those settings.
    res = evaluate(run, data)
    for c in CLASSES:
        assert cal["per_class"][c]["iou"] == pytest.approx(res["per_class_iou"][c])


def test_calibrate_cli_refuses_an_unknown_objective_and_a_bare_checkpoint(run_and_data):
    from typer.testing import CliRunner

    from train.cli import app

    run, data = run_and_data
    wide = {"COLUMNS": "400"}   # the reason on one line, not wrapped in rich's box
    r = CliRunner().invoke(app, ["calibrate", str(run), "--data", str(data), "--objective", "recall"], env=wide)
    assert r.exit_code == 2 and "objective must be one of competition, balanced, iou" in r.output
    r = CliRunner().invoke(app, ["calibrate", str(run / "best.pt"), "--data", str(data)], env=wide)
    assert r.exit_code == 2 and "give the run folder" in r.output


def test_calibrate_with_flip_tta_records_it_and_evaluate_scores_with_it(run_and_data, tmp_path):
    import shutil

    from train.checkpoint import load_run
    from train.evaluate import evaluate
    from train.recalibrate import recalibrate

    src, data = run_and_data
    run = tmp_path / "run"
    shutil.copytree(src, run)
    cal = recalibrate(run, data, objective="iou", tta="hv")
    assert cal["tta_flips"] == ["h", "v"] and cal["previous"]["tta_flips"] == []
    _, info = load_run(run)
    assert info.tta_flips == ("h", "v")
    res = evaluate(run, data)   # scored through the same four views the calibration saw
    for c in CLASSES:
        assert cal["per_class"][c]["iou"] == pytest.approx(res["per_class_iou"][c])
    assert recalibrate(run, data, objective="iou", tta="none")["tta_flips"] == []
    with pytest.raises(ValueError, match="tta must be none, h, v or hv"):
        recalibrate(run, data, tta="hh")
