"""CVAT "Segmentation mask 1.1": written, read back unchanged; bad colours and missing files reported."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspect_edge.data import DataError, Sample, open_dataset, write_cvat_mask

CLASSES = ("pits", "cracks", "scratches")


def samples(n=6, h=40, w=64):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        masks = np.zeros((3, h, w), bool)
        masks[i % 3, 5:15, 10 + i:30 + i] = True
        if i % 2:
            masks[(i + 1) % 3, 25:35, 40:50] = True
        out.append(Sample(f"f{i:02d}", rng.integers(0, 256, (h, w), dtype=np.uint8), masks,
                          split="train" if i < 4 else "val"))
    return out


def test_round_trip_keeps_every_mask_and_the_subsets(tmp_path):
    written = samples()
    assert write_cvat_mask(tmp_path / "task", written, CLASSES) == 6
    ds = open_dataset(tmp_path / "task")
    assert ds.format == "cvat-mask" and ds.classes == CLASSES and ds.problems == []
    assert sorted(ds.split_names) == ["train", "val"] and len(ds.split("val")) == 2
    for s in written:
        got = ds[ds.ids.index(s.image_id)]
        assert np.array_equal(got.masks, s.masks) and np.array_equal(got.image, s.image)


def test_colours_not_in_the_labelmap_and_missing_images_are_reported_and_skipped(tmp_path):
    root = tmp_path / "task"
    write_cvat_mask(root, samples(), CLASSES)
    m = cv2.imread(str(root / "SegmentationClass" / "f01.png"))
    m[0:3, 0:3] = (7, 200, 9)  # a colour nobody defined
    cv2.imwrite(str(root / "SegmentationClass" / "f01.png"), m)
    (root / "JPEGImages" / "f02.png").unlink()
    ds = open_dataset(root)
    assert "f01" not in ds.ids and "f02" not in ds.ids and len(ds) == 4
    msgs = sorted(str(p) for p in ds.problems)
    assert any("f01.png" in x and "(9, 200, 7)" in x and "labelmap.txt" in x for x in msgs), msgs
    assert any("f02" in x and "no image" in x for x in msgs), msgs
    with pytest.raises(DataError, match="2 problem"):
        open_dataset(root, strict=True)


def test_a_broken_labelmap_line_is_named(tmp_path):
    root = tmp_path / "task"
    write_cvat_mask(root, samples(2), CLASSES)
    (root / "labelmap.txt").write_text("background:0,0,0::\npits:128,0::\n")
    with pytest.raises(DataError, match=r"labelmap.txt:2: expected 'name:r,g,b"):
        open_dataset(root)
