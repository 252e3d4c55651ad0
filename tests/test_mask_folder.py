from pathlib import Path

import cv2
import numpy as np
import pytest

from inspect_edge.data import DataError, Sample, open_dataset, write_mask_folder

NEU = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "neu-seg"


def _sample(i, split, rng, h=20, w=30):
    img = rng.integers(0, 256, (h, w), dtype=np.uint8)
    masks = np.zeros((3, h, w), bool)
    masks[i % 3, 2 : 5 + i, 4:10] = True
    if i % 2:
        masks[(i + 1) % 3, 12:15, 20:28] = True
    return Sample(f"s{i:03d}", img, masks, split)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(3)
    samples = [_sample(i, "train" if i < 4 else "val", rng) for i in range(6)]
    write_mask_folder(tmp_path, samples, ["inclusion", "patches", "scratches"])
    return tmp_path, samples


def test_round_trip_is_exact_with_png(folder):
    root, samples = folder
    assert (root / "classes.txt").read_text().splitlines() == ["background", "inclusion", "patches", "scratches"]
    ds = open_dataset(root)
    assert ds.format == "mask-folder" and ds.split_names == ("train", "val")
    assert ds.classes == ("inclusion", "patches", "scratches")
    assert len(ds) == 6 and ds.problems == []
    for s in samples:
        got = ds[ds.ids.index(s.image_id)]
        assert got.split == s.split
        assert (got.image == s.image).all() and (got.masks == s.masks).all()
    val = ds.split("val")
    assert val.ids == ["s004", "s005"]
    assert open_dataset(root, split="val").ids == ["s004", "s005"]
    presence = ds.class_presence()
    assert presence.shape == (6, 3) and presence.sum() == 9


def test_index_mask_values_map_to_classes(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("background\na\nb\n")
    cv2.imwrite(str(tmp_path / "images" / "train" / "x.jpg"), np.full((8, 8, 3), 90, np.uint8))
    m = np.zeros((8, 8), np.uint8)
    m[0, :] = 1
    m[5:, 5:] = 2
    cv2.imwrite(str(tmp_path / "masks" / "train" / "x.png"), m)
    s = open_dataset(tmp_path)[0]
    assert s.image.shape == (8, 8)  # 3-channel gray JPEG read as one channel
    assert s.masks[0].sum() == 8 and s.masks[1].sum() == 9


def test_problems_are_named_skipped_and_strict_raises(folder):
    root, _ = folder
    (root / "images" / "train" / "s000.png").unlink()  # mask without image
    (root / "masks" / "train" / "s001.png").unlink()  # image without mask
    cv2.imwrite(str(root / "masks" / "train" / "s002.png"), np.zeros((10, 10), np.uint8))  # size mismatch
    bad = np.zeros((20, 30), np.uint8)
    bad[0, 0] = 7
    cv2.imwrite(str(root / "masks" / "train" / "s003.png"), bad)  # unknown class value
    (root / "images" / "val" / "s004.png").write_bytes(b"not an image")
    ds = open_dataset(root)
    assert ds.ids == ["s005"]
    msgs = [str(p) for p in ds.problems]
    assert len(msgs) == 5
    expect = [
        ("s000.png", "mask without an image"),
        ("s001.png", "no mask"),
        ("s002.png", "mask size 10x10 != image size 30x20"),
        ("s003.png", "mask values [7] not in classes.txt"),
        ("s004.png", "unreadable image"),
    ]
    for name, fragment in expect:
        assert any(name in m and fragment in m for m in msgs), (name, msgs)
    assert ds.summary()["problems"] == 5
    with pytest.raises(DataError, match="5 problem"):
        open_dataset(root, strict=True)


def test_missing_split_and_bad_classes_txt(folder):
    root, _ = folder
    with pytest.raises(DataError, match="available: train, val"):
        open_dataset(root, split="test")
    (root / "classes.txt").write_text("background\n")
    with pytest.raises(DataError, match="classes.txt"):
        open_dataset(root)


def test_writer_refuses_overlapping_classes(tmp_path):
    m = np.zeros((2, 4, 4), bool)
    m[:, 1, 1] = True
    with pytest.raises(ValueError, match="overlap"):
        write_mask_folder(tmp_path, [Sample("x", np.zeros((4, 4), np.uint8), m, "train")], ["a", "b"])


@pytest.mark.skipif(not NEU.is_dir(), reason=f"real data set not present at {NEU}")
def test_reads_real_neu_seg_val_split_as_it_is():
    ds = open_dataset(NEU, split="val")
    assert ds.classes == ("inclusion", "patches", "scratches")
    assert len(ds) > 0 and ds.problems == []
    assert ds.class_presence().any(axis=1).all()  # NEU-Seg: every image holds a defect
    s = ds[0]
    assert s.image.shape == (200, 200) and s.masks.shape == (3, 200, 200)
    assert s.masks.any() and not (s.masks.sum(axis=0) > 1).any()
