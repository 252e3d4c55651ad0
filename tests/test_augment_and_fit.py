"""`train augment-and-fit` end to end on tiny data (a few steps): every output file is
written and holds what it says; a reused generator is not refitted."""

from __future__ import annotations

import json
import math

import cv2
import pytest
import torch
from typer.testing import CliRunner

from helpers_gan_data import CLASSES, make_mask_folder
from inspect_edge.data import open_dataset
from train.cli import app
from train.gan.augment_and_fit import DEFAULT_METHOD, DEFAULT_SCHEDULE

torch.set_num_threads(1)

TINY = ["--count", "4", "--gan-steps", "2", "--gan-crop", "32", "--gan-batch-size", "2", "--gan-eval-pairs", "6",
        "--fit-epochs", "1", "--fit-batch-size", "4", "--synthetic-per-batch", "4", "--fit-val-images", "3", "--crop-width", "64", "--threads", "1", "--seed", "1"]


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("aaf")
    data = make_mask_folder(root / "data", n_train=10, n_val=4)
    out = root / "run"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out), "--labelled-fraction", "0.5", "--ablation", *TINY])
    assert r.exit_code == 0, r.output
    return data, out


SUFFIX = "-pretrain" if DEFAULT_SCHEDULE == "pretrain-finetune" else ""  # arms are named after the default schedule
# Each schedule's equal-compute control: as many pre-train steps, or as many crops per step, on real images only.
ARMS = [f"real+{m}{SUFFIX}" for m in ("gan", "copy-paste", "gan-blend")] + ["real"] + (["real-pretrain"] if SUFFIX else ["real-equal-crops"])


def test_ablation_writes_every_output(ablation_run):
    data, out = ablation_run
    report = json.loads((out / "report.json").read_text())
    assert report["labelled_images"] == 5 and report["eval_images"] == 4 and report["classes"] == list(CLASSES)
    assert set(report["arms"]) == set(ARMS) and report["method"] == DEFAULT_METHOD
    for arm, res in report["arms"].items():
        m = res["metrics"]
        assert 0.0 <= m["competition_dice"] <= 1.0 and m["n_images"] == 4
        assert 0.0 <= m["miou_incl_background"] <= 1.0
        assert set(m["per_class_dice"]) == set(CLASSES)
        real_only = arm.startswith("real") and "+" not in arm
        assert res["real_images"] == 5 and res["synthetic_images"] == (0 if real_only else 4)
        mixed = not real_only and DEFAULT_SCHEDULE == "mix"  # pre-trained arms see no synthetic crop in their real batches
        assert res["synthetic_share_of_batch"] == (round(4 / (4 + 4), 4) if mixed else 0.0)
        assert res["schedule"] == ("real" if arm == "real" else DEFAULT_SCHEDULE)
        assert res["epochs_run"] == 1  # same real passes for every arm
        run = out / "runs" / arm.replace("+", "_")
        for name in ("best.pt", "model_info.json", "evaluation.json", "metrics.json"):
            assert (run / name).is_file(), f"{arm}: {name}"
        ev = json.loads((run / "evaluation.json").read_text())
        assert ev["competition_dice"] == m["competition_dice"]
    # The verdict names an arm per metric and says one seed decides nothing; which arm wins is not tested.
    assert report["verdict"] and "One seed decides nothing" in report["verdict"]
    assert any(arm in report["verdict"] for arm in ARMS)
    md = (out / "report.md").read_text()
    for arm in report["arms"]:
        assert f"| {arm} |" in md
    assert json.loads((out / "arms_partial.json").read_text()) == report["arms"]
    assert report["command"] in md and "--ablation" in report["command"]
    # Pictures exist, decode, and every picture the report links is there.
    for rel in report["pictures"].values():
        assert cv2.imread(str(out / rel)) is not None, rel
        assert f"]({rel})" in md
    assert "synthetic_examples.png" in report["pictures"].values() and "gan_samples.png" in report["pictures"].values()
    gm = json.loads((out / "gan" / "gan_metrics.json").read_text())
    assert gm == report["gan_metrics"] and gm["pairs"] == 6
    assert all(math.isfinite(gm[p]["masked_l1"]) for p in ("gan", "telea"))
    assert (out / "gan" / "generator.pt").is_file() and list((out / "gan" / "samples").glob("*.png"))
    sq = report["quality_segmenter_features"]
    assert "segmenter encoder" in sq["feature_net"] and sq["pairs"] == 6
    for method in ("gan", "copy-paste", "gan-blend"):
        assert sq["realism"][method]["crops"] >= 4 and math.isfinite(sq["realism"][method]["frechet_distance"])
    assert "Synthetic defects vs" in md


def test_arms_share_real_labels_and_held_out_images(ablation_run):
    data, out = ablation_run
    real = open_dataset(out / "data" / "real")
    real_ids = set(real.split("train").ids)
    val_ids = real.split("val").ids  # what `train fit` validates and calibrates on
    eval_ids = open_dataset(out / "data" / "eval", split="val").ids  # what every arm is scored on
    assert eval_ids == open_dataset(data, split="val").ids
    assert len(real_ids) == 5 and len(val_ids) == 3 and set(val_ids) < set(eval_ids)
    for arm in [a.replace("+", "_") for a in ARMS]:
        cfg = json.loads((out / "runs" / arm / "config.json").read_text())
        assert cfg["data"] == str(out / "data" / "real")  # every arm fits on the same real folder
        if DEFAULT_SCHEDULE == "mix":
            assert (cfg["synthetic_data"] is None) == (arm in ("real", "real-equal-crops"))
        else:  # synthetic pairs only in the pre-training, which calibrates on the same held-out images
            assert cfg["synthetic_data"] is None and (cfg["init_weights"] is None) == (arm == "real")
            if arm == "real-pretrain":  # the control: as many pre-train steps, on the same labelled images
                pre = json.loads((out / "runs" / arm / "pretrain" / "config.json").read_text())
                assert open_dataset(pre["data"][0], split="train").ids == real.split("train").ids
                cp_pre = json.loads((out / "runs" / f"real_copy-paste{SUFFIX}" / "pretrain" / "config.json").read_text())
                assert pre["epochs"] == cp_pre["epochs"]  # 5 real or 4 synthetic images in batches of 4: one step an epoch
            elif arm != "real":
                pre = json.loads((out / "runs" / arm / "pretrain" / "config.json").read_text())
                assert pre["data"][0].startswith(str(out / "data" / "synthetic-"))
    synthetic = {}
    for method in ("copy-paste", "gan", "gan-blend"):
        folder = out / "data" / f"synthetic-{method}"
        ds = open_dataset(folder)
        assert len(ds) == 4 and not set(ds.ids) & real_ids
        manifest = json.loads((folder / "synthetic_manifest.json").read_text())
        assert {m["image_id"] for m in manifest} == set(ds.ids)
        # Backgrounds and shapes come from labelled images only.
        assert all(m["background"] in real_ids for m in manifest)
        assert all(d["shape_source"] in real_ids for m in manifest for d in m["defects"])
        synthetic[method] = [ds[i] for i in range(len(ds))]
    # Same shapes/placements for every painter: identical masks, different pixels somewhere.
    for method in ("gan", "gan-blend"):
        assert all((a.masks == b.masks).all() for a, b in zip(synthetic["copy-paste"], synthetic[method]))
        assert any((a.image != b.image).any() for a, b in zip(synthetic["copy-paste"], synthetic[method]))


def test_reusing_a_generator_skips_gan_training(ablation_run, tmp_path):
    data, out = ablation_run
    out2 = tmp_path / "run2"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out2), "--generator", str(out / "gan"), *TINY])
    assert r.exit_code == 0, r.output
    report = json.loads((out2 / "report.json").read_text())
    assert not (out2 / "gan").exists()
    assert list(report["arms"]) == [f"real+{DEFAULT_METHOD}{SUFFIX}"] and report["verdict"] is None
    assert report["generator"] == str(out / "gan") and report["gan_metrics"]["pairs"] == 6


def test_copy_paste_needs_no_generator(tmp_path):
    data = make_mask_folder(tmp_path / "data", n_train=6, n_val=3)
    out = tmp_path / "cp"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out), "--method", "copy-paste", *TINY])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["arms"]) == [f"real+copy-paste{SUFFIX}"] and report["generator"] is None and not (out / "gan").exists()


def test_unknown_method_is_refused(tmp_path):
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(tmp_path), "--out", str(tmp_path / "x"), "--method", "magic"])
    assert r.exit_code == 2 and "unknown method 'magic'" in r.output and "gan-blend" in r.output


def test_pretrain_finetune_schedule_fits_synthetic_alone_then_real(tmp_path):
    data = make_mask_folder(tmp_path / "data", n_train=6, n_val=3)
    out = tmp_path / "pf"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out), "--method", "copy-paste",
                                 "--schedule", "pretrain-finetune", *TINY])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    arm = report["arms"]["real+copy-paste-pretrain"]
    assert report["schedule"] == "pretrain-finetune" and arm["schedule"] == "pretrain-finetune"
    run = out / "runs" / "real_copy-paste-pretrain"
    pre_s = json.loads((run / "pretrain" / "metrics.json").read_text())["train_seconds"]
    fine_s = json.loads((run / "metrics.json").read_text())["train_seconds"]
    # The pre-training's time is counted in the arm's training time.
    assert arm["synthetic_share_of_batch"] == 0.0 and arm["pretrain_seconds"] == pre_s
    assert arm["train_seconds"] == pytest.approx(pre_s + fine_s)
    pre_ids = json.loads((run / "pretrain" / "split.json").read_text())["train_ids"]
    assert pre_ids and all(i.startswith("synthetic-copy-paste/") for i in pre_ids)
    fine = json.loads((run / "config.json").read_text())
    assert fine["init_weights"] == str(run / "pretrain") and fine["synthetic_data"] is None
    assert "pretrain-finetune" in (out / "report.md").read_text()
    bad = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(tmp_path / "x"), "--schedule", "later"])
    assert bad.exit_code == 2 and "unknown schedule 'later'" in bad.output


def test_mix_ablation_adds_real_only_with_as_many_crops_per_step(tmp_path):
    data = make_mask_folder(tmp_path / "data", n_train=16, n_val=3)
    out = tmp_path / "mix"
    tiny = list(TINY)
    tiny[tiny.index("--fit-epochs") + 1] = "2"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out), "--method", "copy-paste",
                                 "--schedule", "mix", "--ablation", *tiny])
    assert r.exit_code == 0, r.output
    arms = json.loads((out / "report.json").read_text())["arms"]
    assert set(arms) == {"real+copy-paste", "real+gan", "real+gan-blend", "real", "real-equal-crops"}
    control, mixed = arms["real-equal-crops"], arms["real+copy-paste"]
    # 16 labelled images: 4 steps an epoch of 4 real (+ 4 synthetic) crops, 2 of 8 real crops: twice the epochs, the same steps.
    assert control["real_crops_per_step"] == 8 and control["synthetic_images"] == 0 and control["schedule"] == "mix"
    assert mixed["real_crops_per_step"] == 4 and mixed["synthetic_share_of_batch"] == 0.5
    assert mixed["epochs_run"] == arms["real"]["epochs_run"] == 2 and control["epochs_run"] == 4
    cfg = json.loads((out / "runs" / "real-equal-crops" / "config.json").read_text())
    assert cfg["batch_size"] == 8 and cfg["synthetic_data"] is None and cfg["synthetic_per_batch"] == 0
