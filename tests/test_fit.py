"""`train fit` end to end on tiny data the test makes: loss falls, the run folder is complete,
loads back and predicts, resume continues, same seed gives the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inspect_edge.data import Sample, open_dataset, write_mask_folder, write_severstal  # noqa: E402
from inspect_edge.model_info import ModelInfo  # noqa: E402

CLASSES = ("dent", "scratch")


def make_rect_samples(n: int, h: int = 48, w: int = 128, seed: int = 0, split: str = "train") -> list[Sample]:
    """Grey noise strips; class 0 is a bright rectangle, class 1 a dark horizontal line; some images clean."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.normal(120, 8, (h, w)).clip(0, 255).astype(np.uint8)
        masks = np.zeros((len(CLASSES), h, w), bool)
        if i % 3 != 2:
            y, x = int(rng.integers(2, h - 18)), int(rng.integers(2, w - 30))
            masks[0, y : y + 14, x : x + 24] = True
            img[masks[0]] = 220
        if i % 2 == 0:
            y = int(rng.integers(2, h - 4))
            x0 = int(rng.integers(0, w // 2))
            masks[1, y : y + 3, x0 : x0 + w // 3] = True
            masks[1] &= ~masks[0]
            img[masks[1]] = 30
        out.append(Sample(image_id=f"{split}_{i:03d}", image=img, masks=masks, split=split))
    return out


def make_mask_folder(root: Path, n_train: int = 12, n_val: int = 4) -> Path:
    write_mask_folder(root, make_rect_samples(n_train) + make_rect_samples(n_val, seed=1, split="val"), CLASSES)
    return root


def tiny_cfg(data: Path, out: Path, **kw):
    from train.config import FitConfig

    base = dict(data=str(data), out=str(out), size="nano", epochs=3, batch_size=4, crop_width=64, lr=5e-3, seed=0,
                threads=1, warmup_fraction=0.1)
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_mask_folder(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    from train.fit import fit

    out = tmp_path_factory.mktemp("runs") / "run"
    metrics = fit(tiny_cfg(tiny_data, out, epochs=6), progress=False)
    return out, metrics


def test_loss_falls_and_run_folder_is_complete(tiny_run):
    out, metrics = tiny_run
    for name in ("config.json", "train.log", "best.pt", "last.pt", "model_info.json", "metrics.json", "curves.png",
                 "val_samples.png", "calibration.json", "split.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    hist = metrics["history"]
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["epochs_run"] == 6 and saved["n_train"] == 12 and saved["n_val"] == 4
    assert "epoch 6/6" in (out / "train.log").read_text()


def test_data_problems_are_kept_in_the_run_folder(tiny_run):
    out, _ = tiny_run
    rec = json.loads((out / "data_problems.json").read_text())
    assert rec["count"] == 0 and rec["first"] == []


def test_model_info_is_calibrated_and_sized_for_the_full_frame(tiny_run):
    out, _ = tiny_run
    info = ModelInfo.load(out / "model_info.json")
    cal = json.loads((out / "calibration.json").read_text())
    assert info.classes == CLASSES
    assert (info.input_height, info.input_width) == (64, 128)  # 48x128 rounded up to 32
    assert list(info.thresholds) == cal["thresholds"] and list(info.min_areas) == cal["min_areas"]
    assert info.arch == "unet-nano" and info.source_run == str(out.resolve())
    assert all(t in cal["thresholds_searched"] for t in info.thresholds)


def test_saved_run_loads_back_and_predicts(tiny_run, tiny_data):
    from train.checkpoint import load_run
    from train.predict import predict_logits

    out, _ = tiny_run
    model, info = load_run(out)
    assert not model.training
    val = open_dataset(tiny_data).split("val")
    images = [val[i].image for i in range(len(val))]
    logits = predict_logits(model, images, info)
    assert logits.shape == (len(images), 2, 48, 128) and logits.dtype == np.float32
    # The same weights through the .pt path give the same logits.
    model2, info2 = load_run(out / "best.pt")
    assert info2 == info
    np.testing.assert_allclose(predict_logits(model2, np.stack(images), info2), logits, rtol=1e-5, atol=1e-5)
    # It learnt something: bright rectangles score above the background.
    truth = np.stack([val[i].masks for i in range(len(val))])
    assert logits[:, 0][truth[:, 0]].mean() > logits[:, 0][~truth[:, 0]].mean()


def test_checkpoint_dict_follows_the_contract(tiny_run):
    out, _ = tiny_run
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ck["format"] == "inspect-edge-segmenter" and ck["format_version"] == 1
    assert ck["model_config"] == {"size": "nano", "in_channels": 1, "num_classes": 2}
    assert ck["epoch"] == 5 and isinstance(ck["best_score"], float)
    for key in ("state_dict", "model_info", "optimizer", "scheduler"):
        assert key in ck


def test_foreign_and_truncated_checkpoints_fail_with_one_line_naming_the_file(tiny_run, tmp_path):
    from train.checkpoint import CheckpointError, load_run

    out, _ = tiny_run
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "best.pt").read_bytes()[:2000])
    for bad in (foreign, truncated, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError) as e:
            load_run(bad)
        assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert issubclass(CheckpointError, ValueError)


def test_same_seed_gives_the_same_numbers_and_resume_continues(tiny_data, tmp_path):
    from train.fit import fit

    a = fit(tiny_cfg(tiny_data, tmp_path / "a", epochs=2), progress=False)
    b = fit(tiny_cfg(tiny_data, tmp_path / "b", epochs=2), progress=False)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["history"][-1]["val_dice"] == b["history"][-1]["val_dice"]
    # Resume: a 3-epoch plan stopped after 2 epochs continues at epoch 3 with the same schedule.
    c = fit(tiny_cfg(tiny_data, tmp_path / "c", epochs=3, resume=str(tmp_path / "a" / "last.pt")), progress=False)
    assert [h["epoch"] for h in c["history"]] == [1, 2, 3]
    assert c["history"][:2] == a["history"]


def test_severstal_data_without_val_split_gets_a_seeded_holdout_and_labelled_fraction(tmp_path):
    from train.fit import fit

    data = tmp_path / "sev"
    write_severstal(data, make_rect_samples(10), CLASSES)
    m = fit(tiny_cfg(data, tmp_path / "run", epochs=1, labelled_fraction=0.5, val_fraction=0.2), progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert m["n_val"] == 2 and m["n_train_before_subset"] == 8 and m["n_train"] == 4
    assert not set(split["train_ids"]) & set(split["val_ids"])
    m2 = fit(tiny_cfg(data, tmp_path / "run2", epochs=1, labelled_fraction=0.5, val_fraction=0.2), progress=False)
    assert json.loads((tmp_path / "run2" / "split.json").read_text()) == split
    assert m2["n_train"] == 4


def test_cli_rejects_bad_flags_with_the_reason(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app

    r = CliRunner().invoke(app, ["fit", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--size", "huge"])
    assert r.exit_code != 0 and "nano" in r.output
    r = CliRunner().invoke(app, ["fit", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--labelled-fraction", "0"])
    assert r.exit_code != 0 and "labelled_fraction" in r.output


def test_time_budget_stops_the_run_by_itself(tiny_data, tmp_path):
    from train.fit import fit

    m = fit(tiny_cfg(tiny_data, tmp_path / "run", epochs=50, time_budget_min=0.0005), progress=False)
    assert m["epochs_run"] == 1 and m["stopped_by_time_budget"] is True
    assert "planning 1 epoch(s)" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "model_info.json").is_file()


def test_defect_crops_land_on_defects_and_plain_crops_are_seeded(tiny_data):
    from train.datasets import CropDataset

    ds = open_dataset(tiny_data).split("train")
    defect_idx = [i for i in range(len(ds)) if ds.has_defect(i)]
    on = CropDataset(ds, (16, 16), 0.5, 0.25, seed=3, defect_crop_prob=1.0)
    for i in defect_idx:
        x, y = on[i]
        assert x.shape == (1, 16, 16) and y.shape == (2, 16, 16)
        assert y.sum() > 0, f"crop of image {i} misses every defect"
    off = CropDataset(ds, (16, 16), 0.5, 0.25, seed=3, defect_crop_prob=0.0)
    hits = sum(bool(off[i][1].sum() > 0) for i in defect_idx)
    assert hits < len(defect_idx)  # random 16x16 windows often miss the defects
    torch.testing.assert_close(off[0][0], off[0][0])  # same seed, epoch and index: same crop


def test_synthetic_pairs_come_on_top_of_the_same_real_passes(tiny_data, tmp_path):
    from train.fit import fit

    syn = tmp_path / "syn"
    write_mask_folder(syn, make_rect_samples(5, seed=7), CLASSES)
    plain = fit(tiny_cfg(tiny_data, tmp_path / "plain", epochs=2), progress=False)
    topped = fit(tiny_cfg(tiny_data, tmp_path / "topped", epochs=2, synthetic_data=str(syn), synthetic_per_batch=2), progress=False)
    again = fit(tiny_cfg(tiny_data, tmp_path / "again", epochs=2, synthetic_data=str(syn), synthetic_per_batch=2), progress=False)
    assert topped["epochs_run"] == plain["epochs_run"] == 2  # same epochs over the same real images
    assert [h["train_loss"] for h in topped["history"]] != [h["train_loss"] for h in plain["history"]]
    assert [h["train_loss"] for h in topped["history"]] == [h["train_loss"] for h in again["history"]]  # seeded
    assert "5 images, 2 on top of each batch of 4 real" in (tmp_path / "topped" / "train.log").read_text()


def test_top_up_batches_walk_a_seeded_shuffle_of_the_synthetic_set(tmp_path):
    from train.datasets import CropDataset, SyntheticTopUp

    write_mask_folder(tmp_path / "syn", make_rect_samples(5, seed=7), CLASSES)
    crops = CropDataset(open_dataset(tmp_path / "syn"), (32, 32), 0.5, 0.25, seed=1)
    top = SyntheticTopUp(crops, 3, seed=4)
    x, y = top.batch(0, 0)
    assert x.shape == (3, 1, 32, 32) and y.shape == (3, 2, 32, 32)
    x1, _ = top.batch(0, 1)  # next step: the next 3 of the shuffle (wrapping round the 5)
    torch.testing.assert_close(SyntheticTopUp(crops, 3, seed=4).batch(0, 0)[0], x)
    assert not torch.equal(x1, x)
    with pytest.raises(ValueError, match="synthetic_per_batch needs synthetic_data"):
        tiny_cfg(tmp_path, tmp_path / "x", synthetic_per_batch=2)


def test_normalisation_statistics_sample_the_whole_set_not_its_first_images(tmp_path):
    from train.datasets import estimate_mean_std

    # Sorted by class like NEU-Seg: the first 64 images are dark, the other 64 bright.
    dark = [Sample(f"a{i:03d}", np.full((16, 16), 51, np.uint8), np.zeros((2, 16, 16), bool), "train") for i in range(64)]
    bright = [Sample(f"b{i:03d}", np.full((16, 16), 204, np.uint8), np.zeros((2, 16, 16), bool), "train") for i in range(64)]
    write_mask_folder(tmp_path / "sorted", dark + bright, CLASSES)
    mean, std = estimate_mean_std(open_dataset(tmp_path / "sorted"))
    assert mean == pytest.approx(0.5, abs=0.01) and std == pytest.approx(0.3, abs=0.01)  # the first 64 alone: 0.2 / 0


def test_training_crops_pad_like_the_edge(tmp_path):
    from inspect_edge.preprocess import pad_bottom_right
    from train.datasets import CropDataset

    img = np.tile(np.arange(20, dtype=np.uint8)[None, :] * 10, (20, 1))  # a horizontal ramp 0..190
    write_mask_folder(tmp_path / "small", [Sample("s", img, np.zeros((2, 20, 20), bool), "train")], CLASSES)
    crops = CropDataset(open_dataset(tmp_path / "small"), (32, 32), 0.0, 1.0, flip=False, jitter=0.0)
    x, y = crops[0]
    expected = pad_bottom_right(img, 32, 32).astype(np.float32) / 255.0
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    assert x[0, 0, 31].item() == pytest.approx(190 / 255)  # the last column repeated, not mean grey
    assert y.shape == (2, 32, 32) and not y.any()


def test_problems_found_while_reading_are_written_into_the_run(tmp_path):
    import shutil

    from train.fit import fit

    data = tmp_path / "data"
    shutil.copytree(make_mask_folder(tmp_path / "src"), data)
    stray = data / "images" / "train" / "orphan.png"
    shutil.copyfile(next((data / "images" / "train").iterdir()), stray)  # an image with no mask
    fit(tiny_cfg(data, tmp_path / "run", epochs=1), progress=False)
    rec = json.loads((tmp_path / "run" / "data_problems.json").read_text())
    assert rec["count"] >= 1 and any("orphan" in line for line in rec["first"])


def test_fit_merges_several_data_folders_of_any_format_and_refuses_other_classes(tmp_path):
    from typer.testing import CliRunner

    from inspect_edge.data import DataError, open_datasets, write_cvat_mask
    from train.cli import app

    a = make_mask_folder(tmp_path / "original")
    b = tmp_path / "reviewed"  # the line's reviewed frames, exported for an annotation tool
    write_cvat_mask(b, make_rect_samples(6, seed=5) + make_rect_samples(2, seed=6, split="val"), CLASSES)
    merged = open_datasets([a, b])
    assert len(merged) == 16 + 8 and merged.classes == CLASSES and sorted(merged.split_names) == ["train", "val"]
    assert merged.ids[0].startswith("original/") and merged.ids[-1].startswith("reviewed/")
    assert np.array_equal(merged[len(merged) - 1].masks, open_datasets(b)[7].masks)  # each decodes its own way
    r = CliRunner().invoke(app, ["fit", "--data", str(a), "--data", str(b), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--batch-size", "4", "--crop-width", "64", "--threads", "1"])
    assert r.exit_code == 0, r.output
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train_ids"]) == 18 and any(i.startswith("reviewed/") for i in split["val_ids"])
    other = tmp_path / "other"
    write_mask_folder(other, make_rect_samples(4), ("dent", "crack"))
    with pytest.raises(DataError, match="different classes"):
        open_datasets([a, other])


def test_init_weights_starts_from_another_run_and_refuses_another_architecture(tiny_run, tiny_data, tmp_path):
    from train.checkpoint import read_checkpoint
    from train.fit import fit

    src, _ = tiny_run
    # A rate too small to move the weights: what comes out is what went in.
    fit(tiny_cfg(tiny_data, tmp_path / "ft", epochs=1, lr=1e-12, init_weights=str(src)), progress=False)
    start, after = read_checkpoint(src / "last.pt")["state_dict"], read_checkpoint(tmp_path / "ft" / "last.pt")["state_dict"]
    learnt = [k for k in start if "running_" not in k and "num_batches" not in k]  # batch-norm statistics move anyway
    assert learnt and all(torch.allclose(start[k], after[k], atol=1e-6) for k in learnt)
    fresh = fit(tiny_cfg(tiny_data, tmp_path / "fresh", epochs=1, lr=1e-12), progress=False)
    assert fresh["history"][0]["train_loss"] != pytest.approx(read_checkpoint(tmp_path / "ft" / "last.pt")["history"][0]["train_loss"])
    with pytest.raises(ValueError, match="same architecture"):
        fit(tiny_cfg(tiny_data, tmp_path / "other", epochs=1, size="small", init_weights=str(src)), progress=False)
    with pytest.raises(ValueError, match="exclude each other"):
        tiny_cfg(tiny_data, tmp_path / "both", resume=str(src), init_weights=str(src))


def test_pos_weight_counts_defect_pixels_more_and_must_match_the_classes(tiny_data, tmp_path):
    import torch.nn.functional as F

    from train.fit import fit
    from train.losses import BceDiceLoss, soft_dice_loss

    logits = torch.randn(2, 2, 8, 8)
    target = (torch.rand(2, 2, 8, 8) > 0.9).float()
    weighted = BceDiceLoss(pos_weight=(10.0, 1.0))(logits, target)
    by_hand = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor([10.0, 1.0]).view(2, 1, 1))
    assert weighted.item() == pytest.approx((by_hand + soft_dice_loss(logits, target)).item(), rel=1e-6)
    assert weighted.item() > BceDiceLoss()(logits, target).item()
    with pytest.raises(ValueError, match="pos_weight has 3 value"):
        fit(tiny_cfg(tiny_data, tmp_path / "pw", epochs=1, pos_weight=[1.0, 2.0, 3.0]), progress=False)


def test_weight_other_classes_charges_a_class_firing_on_another_class_pixels():
    from train.losses import BceDiceLoss

    # Class 0 fires (logit +4) on one pixel that is class 1's; everything else is right.
    target = torch.zeros(1, 2, 4, 4)
    target[0, 1, 0, 0] = 1.0
    logits = torch.full((1, 2, 4, 4), -8.0)
    logits[0, 1, 0, 0] = 8.0
    logits[0, 0, 0, 0] = 4.0
    plain = BceDiceLoss(dice_weight=0.0, pos_weight=(20.0, 20.0))(logits, target)
    other = BceDiceLoss(dice_weight=0.0, pos_weight=(20.0, 20.0), weight_other_classes=True)(logits, target)
    import torch.nn.functional as F

    wrong = F.binary_cross_entropy_with_logits(torch.tensor(4.0), torch.tensor(0.0))
    # The confusion is the only large term: weighted 20 times instead of once (over 32 values).
    assert (other - plain).item() == pytest.approx(19 * wrong.item() / 32, rel=1e-4)
    # Plain background pixels keep weight 1: with no other class present both losses agree.
    clean = torch.zeros(1, 2, 4, 4)
    assert BceDiceLoss(pos_weight=(20.0, 20.0), weight_other_classes=True)(logits, clean).item() == pytest.approx(
        BceDiceLoss(pos_weight=(20.0, 20.0))(logits, clean).item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs pos_weight"):
        BceDiceLoss(weight_other_classes=True)


def test_ema_averages_parameters_copies_batch_norm_statistics_and_warms_up():
    from torch import nn

    from train.ema import ema_decay_at, ema_update

    model, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
        ema.weight.fill_(0.0)
    ema_update(ema, model, decay=0.75)
    assert torch.allclose(ema.weight, torch.full((3,), 0.5))  # 0.75 * 0 + 0.25 * 2
    assert torch.equal(ema.running_mean, model.running_mean)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999


def test_ema_run_ships_the_average_and_resume_restores_both_weights(tiny_data, tmp_path):
    from train.checkpoint import read_checkpoint
    from train.fit import FitData, TrainState, fit, prepare_data
    from train.dist import Dist

    a = fit(tiny_cfg(tiny_data, tmp_path / "a", epochs=2, ema_decay=0.99), progress=False)
    assert "val_dice_without_ema" in a["history"][-1] and "val_dice_without_ema" not in a["history"][0]
    ck = read_checkpoint(tmp_path / "a" / "last.pt")
    shipped, trained = ck["state_dict"], ck["train_state_dict"]
    assert any(not torch.equal(shipped[k], trained[k]) for k in shipped if "running_" not in k and "num_batches" not in k)
    # Resume puts the trained weights back into the model and the average into the EMA.
    cfg = tiny_cfg(tiny_data, tmp_path / "b", epochs=3, ema_decay=0.99, resume=str(tmp_path / "a" / "last.pt"))
    d = Dist("cpu")
    (tmp_path / "b").mkdir()
    data: FitData = prepare_data(cfg, tmp_path / "b", d)
    state = TrainState.new(cfg, data, d.device, steps_per_epoch=3)
    state.resume(cfg, tmp_path / "b", d, steps_per_epoch=3)
    assert all(torch.equal(v, trained[k]) for k, v in state.model.state_dict().items())
    assert all(torch.equal(v, shipped[k]) for k, v in state.ema.state_dict().items())
    with pytest.raises(ValueError, match="ema_decay"):
        tiny_cfg(tiny_data, tmp_path / "c", ema_decay=1.0)
