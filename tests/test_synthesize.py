"""Shape bank, placements and both painters: new masks added without overlap, pixels
outside what was painted untouched, output in the input's format with a manifest."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers_gan_data import CLASSES, make_mask_folder, make_severstal, tiny_samples
from inspect_edge.data import open_dataset
from train.cli import app
from train.gan.fit_gan import save_generator
from train.gan.generator import GeneratorConfig, InpaintGenerator
from train.gan.pairs import dilate, erode
from train.gan.shape_bank import (
    LabelledImage,
    Shape,
    ShapeBank,
    TransformConfig,
    labels_from_masks,
    place_shape,
    transform_shape,
)
from train.gan.synthesize import SynthConfig, paste_matched, synthesize_samples

torch.set_num_threads(1)


def _labelled(**kw):
    return [LabelledImage(s.image_id, s.image, labels_from_masks(s.masks)) for s in tiny_samples(**kw) if s.split == "train"]


def _generator():
    torch.manual_seed(0)
    return InpaintGenerator(GeneratorConfig(num_classes=2, base=8, ffc_blocks=1)).eval()


def test_bank_holds_each_connected_component_per_class():
    labels = np.zeros((20, 20), np.uint8)
    labels[1:5, 1:5] = 1  # class 0, area 16
    labels[10:15, 10:15] = 1  # class 0, area 25
    labels[1:3, 10:19] = 2  # class 1, area 18
    labels[18, 18] = 2  # too small: dropped
    img = np.arange(400, dtype=np.uint8).reshape(20, 20)
    bank = ShapeBank.from_images([LabelledImage("a", img, labels)], 2, min_area=16)
    assert sorted((s.cls, int(s.mask.sum())) for s in bank.shapes) == [(0, 16), (0, 25), (1, 18)]
    big = next(s for s in bank.shapes if s.mask.sum() == 25)
    assert np.array_equal(big.patch, img[10:15, 10:15]) and big.source_id == "a"


def test_transforms_keep_the_rolling_direction_and_size_limit():
    bar = Shape(1, np.ones((3, 40), bool), np.full((3, 40), 200, np.uint8), "s", 1)
    rng = np.random.default_rng(0)
    cfg = TransformConfig(max_rotation_deg=10, max_extent=36)
    for _ in range(30):
        m, p = transform_shape(bar, rng, cfg)
        assert m.shape == p.shape and m.any()
        assert max(m.shape) <= 36
        assert m.shape[1] > 2 * m.shape[0]  # a streak along x stays along x


def test_placement_never_overlaps_existing_defects():
    labels = np.zeros((32, 32), np.uint8)
    labels[:, :16] = 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, x, full = place_shape(labels, np.ones((6, 6), bool), rng)
        assert full.any() and not (full & (labels > 0)).any()
    assert place_shape(np.ones((8, 8), np.uint8), np.ones((4, 4), bool), rng) is None


@pytest.mark.parametrize("method", ["copy-paste", "gan", "gan-blend"])
def test_synthesis_adds_masks_and_changes_only_what_it_paints(method):
    backgrounds = _labelled()
    bank = ShapeBank.from_images(backgrounds, 2)
    cfg = SynthConfig(count=8, method=method, seed=3, crop=32)
    items = synthesize_samples(backgrounds, bank, cfg, CLASSES, None if method == "copy-paste" else _generator())
    by_id = {b.image_id: b for b in backgrounds}
    added = 0
    for s in items:
        bg = by_id[s.record["background"]]
        old = bg.labels > 0
        assert np.array_equal(s.labels[old], bg.labels[old])  # existing defects kept and labelled
        new = (s.labels > 0) & ~old
        added += int(new.sum())
        assert sum(d["area_px"] for d in s.record["defects"]) == int(new.sum())
        painted = new if method == "copy-paste" else dilate(new, cfg.hole_margin) & ~old
        assert np.array_equal(s.image[~painted], bg.image[~painted])  # bit-exact elsewhere
        assert s.record["synthetic"] and s.record["method"] == method
    assert added > 0
    classes_drawn = {d["class"] for s in items for d in s.record["defects"]}
    assert classes_drawn == set(CLASSES)  # balanced draws reach every class


def test_both_painters_get_the_same_shapes_and_placements():
    backgrounds = _labelled()
    bank = ShapeBank.from_images(backgrounds, 2)
    a = synthesize_samples(backgrounds, bank, SynthConfig(count=5, method="gan", crop=32), CLASSES, _generator())
    b = synthesize_samples(backgrounds, bank, SynthConfig(count=5, method="copy-paste", crop=32), CLASSES)
    assert all(np.array_equal(x.labels, y.labels) for x, y in zip(a, b))
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, b))


def test_defect_free_backgrounds_are_preferred():
    backgrounds = _labelled(clean=3)
    bank = ShapeBank.from_images(backgrounds, 2)
    items = synthesize_samples(backgrounds, bank, SynthConfig(count=10, method="copy-paste", crop=32), CLASSES)
    assert all(s.record["background_defect_free"] for s in items)


@pytest.mark.parametrize("fmt", ["mask-folder", "severstal"])
def test_synthesize_command_writes_the_input_format_and_a_manifest(tmp_path, fmt):
    data = (make_mask_folder if fmt == "mask-folder" else make_severstal)(tmp_path / "data")
    gen_run = tmp_path / "gen"
    gen_run.mkdir()
    save_generator(gen_run / "generator.pt", _generator(), CLASSES, 32, 0)
    out = tmp_path / "syn"
    r = CliRunner().invoke(app, ["synthesize", "--data", str(data), "--out", str(out), "--count", "5", "--generator", str(gen_run)])
    assert r.exit_code == 0, r.output
    ds = open_dataset(out)
    assert ds.format == fmt and len(ds) == 5 and ds.classes == CLASSES
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["generator"] == str(gen_run)
    written = {i.removesuffix(".jpg") for i in ds.ids}
    assert written == {item["image_id"] for item in manifest["items"]}
    assert all(item["synthetic"] and item["defects"] for item in manifest["items"])
    for s in ds:
        assert s.masks.sum(axis=0).max() <= 1  # classes never overlap


def test_gan_method_without_a_generator_is_a_clear_error(tmp_path):
    data = make_mask_folder(tmp_path / "data")
    r = CliRunner().invoke(app, ["synthesize", "--data", str(data), "--out", str(tmp_path / "o"), "--count", "2"])
    assert r.exit_code != 0 and "--generator" in r.output
    r = CliRunner().invoke(app, ["synthesize", "--data", str(data), "--out", str(tmp_path / "o"), "--count", "2", "--method", "paint"])
    assert r.exit_code != 0 and "copy-paste" in r.output


def test_gan_paints_images_smaller_than_its_crop():
    # 64x64 images, 96x96 generator crop: the window is padded, the pad is never written back.
    backgrounds = _labelled()
    bank = ShapeBank.from_images(backgrounds, 2)
    cfg = SynthConfig(count=4, method="gan", crop=96)
    items = synthesize_samples(backgrounds, bank, cfg, CLASSES, _generator())
    by_id = {b.image_id: b for b in backgrounds}
    for s in items:
        bg = by_id[s.record["background"]]
        assert s.image.shape == bg.image.shape == (64, 64)
        old = bg.labels > 0
        painted = dilate(s.new_mask, cfg.hole_margin) & ~old
        assert np.array_equal(s.image[~painted], bg.image[~painted])
        assert not np.array_equal(s.image, bg.image)


def test_gan_blend_keeps_the_real_core_shifted_to_the_new_background():
    backgrounds = _labelled()
    bank = ShapeBank.from_images(backgrounds, 2)
    cp = synthesize_samples(backgrounds, bank, SynthConfig(count=8, method="copy-paste", seed=5, crop=32), CLASSES)
    cfg = SynthConfig(count=8, method="gan-blend", seed=5, crop=32, blend_band=2)
    blend = synthesize_samples(backgrounds, bank, cfg, CLASSES, _generator())
    cores = 0
    for a, b in zip(cp, blend):
        assert np.array_equal(a.labels, b.labels)  # the same masks and placements as copy-paste
        n, comp = cv2.connectedComponents(b.new_mask.astype(np.uint8), connectivity=8)
        for c in range(1, n):
            core = erode(comp == c, cfg.blend_band)
            if core.sum() < 3:
                continue
            cores += 1
            # Inside the core the pixels are copy-paste's, moved by one brightness offset.
            diff = b.image[core].astype(int) - a.image[core].astype(int)
            assert diff.max() - diff.min() <= 1, diff
    assert cores > 0


def test_paste_matched_moves_the_defect_by_the_background_difference():
    patch = np.full((5, 5), 100, np.uint8)
    patch[2, 2] = 40  # a dark pit on a background of 100
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    region = np.full((5, 5), 130, np.uint8)  # the new place is 30 grey levels brighter
    out = paste_matched(region, patch, mask)
    assert out[2, 2] == 70 and out[0, 0] == 130
