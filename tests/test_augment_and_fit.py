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

torch.set_num_threads(1)

TINY = ["--count", "4", "--gan-steps", "2", "--gan-crop", "32", "--gan-batch-size", "2", "--gan-eval-pairs", "6",
        "--fit-epochs", "1", "--fit-batch-size", "4", "--fit-val-images", "3", "--crop-width", "64", "--threads", "1", "--seed", "1"]


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("aaf")
    data = make_mask_folder(root / "data", n_train=10, n_val=4)
    out = root / "run"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out), "--labelled-fraction", "0.5", "--ablation", *TINY])
    assert r.exit_code == 0, r.output
    return data, out


def test_ablation_writes_every_output(ablation_run):
    data, out = ablation_run
    report = json.loads((out / "report.json").read_text())
    assert report["labelled_images"] == 5 and report["eval_images"] == 4 and report["classes"] == list(CLASSES)
    assert list(report["arms"]) == ["real", "real+copy-paste", "real+gan"]
    for arm, res in report["arms"].items():
        m = res["metrics"]
        assert 0.0 <= m["competition_dice"] <= 1.0 and m["n_images"] == 4
        assert set(m["per_class_dice"]) == set(CLASSES)
        assert res["real_images"] == 5 and res["synthetic_images"] == (0 if arm == "real" else 4)
        run = out / "runs" / arm.replace("+", "_")
        for name in ("best.pt", "model_info.json", "evaluation.json", "metrics.json"):
            assert (run / name).is_file(), f"{arm}: {name}"
        ev = json.loads((run / "evaluation.json").read_text())
        assert ev["competition_dice"] == m["competition_dice"]
    assert report["verdict"] and ("beats" in report["verdict"])
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
    for method in ("gan", "copy-paste"):
        assert sq["realism"][method]["crops"] >= 4 and math.isfinite(sq["realism"][method]["frechet_distance"])
    assert "Synthetic defects vs" in md


def test_arms_share_real_labels_and_held_out_images(ablation_run):
    data, out = ablation_run
    folders = {arm: open_dataset(out / "data" / arm) for arm in ("real", "real_copy-paste", "real_gan")}
    real_ids = set(folders["real"].split("train").ids)
    val_ids = folders["real"].split("val").ids  # what `train fit` validates and calibrates on
    eval_ids = open_dataset(out / "data" / "eval", split="val").ids  # what every arm is scored on
    assert eval_ids == open_dataset(data, split="val").ids
    assert len(real_ids) == 5 and len(val_ids) == 3 and set(val_ids) < set(eval_ids)
    for arm in ("real_copy-paste", "real_gan"):
        ds = folders[arm]
        train_ids = set(ds.split("train").ids)
        assert real_ids < train_ids and len(train_ids - real_ids) == 4
        assert ds.split("val").ids == val_ids
        manifest = json.loads((out / "data" / arm / "synthetic_manifest.json").read_text())
        assert {m["image_id"] for m in manifest} == train_ids - real_ids
        # Backgrounds and shapes come from labelled images only.
        assert all(m["background"] in real_ids for m in manifest)
        assert all(d["shape_source"] in real_ids for m in manifest for d in m["defects"])
    # Same shapes/placements for both painters: identical masks, different pixels somewhere.
    cp, gan = folders["real_copy-paste"], folders["real_gan"]
    syn = sorted(train_ids - real_ids)
    cp_ids, gan_ids = cp.ids, gan.ids
    cp_syn = [cp[cp_ids.index(i)] for i in sorted(x for x in cp_ids if x.startswith("syn_"))]
    gan_syn = [gan[gan_ids.index(i)] for i in sorted(x for x in gan_ids if x.startswith("syn_"))]
    assert len(cp_syn) == len(gan_syn) == len(syn) == 4
    assert all((a.masks == b.masks).all() for a, b in zip(cp_syn, gan_syn))


def test_reusing_a_generator_skips_gan_training(ablation_run, tmp_path):
    data, out = ablation_run
    out2 = tmp_path / "run2"
    r = CliRunner().invoke(app, ["augment-and-fit", "--data", str(data), "--out", str(out2), "--generator", str(out / "gan"), *TINY])
    assert r.exit_code == 0, r.output
    report = json.loads((out2 / "report.json").read_text())
    assert not (out2 / "gan").exists()
    assert list(report["arms"]) == ["real+gan"] and report["verdict"] is None
    assert report["generator"] == str(out / "gan") and report["gan_metrics"]["pairs"] == 6
