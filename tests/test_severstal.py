import logging

import cv2
import numpy as np
import pytest

from inspect_edge.data import DataError, Sample, open_dataset, write_severstal

H, W = 16, 24


def _masks(rng, k=4):
    m = np.zeros((k, H, W), bool)
    m[0, 2:5, 3:9] = True
    m[2, 8:10, 1:20] = rng.random((2, 19)) < 0.7
    return m


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        img = rng.integers(0, 256, (H, W), dtype=np.uint8)
        masks = _masks(rng) if i % 2 == 0 else np.zeros((4, H, W), bool)
        out.append(Sample(f"img{i}.jpg", img, masks))
    return out


def test_write_then_read_final_form(tmp_path, samples):
    n = write_severstal(tmp_path, samples, ["pits", "cracks", "scratches", "patches"])
    assert n == 4
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0] == "ImageId,ClassId,EncodedPixels"
    # One row per defect present: two defect images x two classes each.
    assert len(lines) == 1 + 4
    ds = open_dataset(tmp_path)
    assert ds.format == "severstal" and ds.split_names == ("train",)
    assert ds.classes == ("pits", "cracks", "scratches", "patches")
    assert ds.ids == ["img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg"]
    assert [ds.has_defect(i) for i in range(4)] == [True, False, True, False]
    assert ds.class_presence()[0].tolist() == [True, False, True, False]
    for i, s in enumerate(samples):
        got = ds[i]
        assert got.image.shape == (H, W) and got.image.dtype == np.uint8
        assert got.masks.dtype == bool and (got.masks == s.masks).all()
        # JPEG is lossy but close.
        assert np.abs(got.image.astype(int) - s.image).mean() < 20
    assert ds.problems == []


def _write_images(root, names, shape=(H, W)):
    (root / "train_images").mkdir(parents=True)
    for n in names:
        cv2.imwrite(str(root / "train_images" / n), np.full(shape, 128, np.uint8))


def test_original_form_four_rows_per_image(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    rows = ["ImageId_ClassId,EncodedPixels"]
    for img in ("a.jpg", "b.jpg"):
        for c in range(1, 5):
            rle = "3 4 20 2" if (img, c) == ("a.jpg", 3) else ""
            rows.append(f"{img}_{c},{rle}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(tmp_path)
    assert ds.classes == ("class_1", "class_2", "class_3", "class_4")
    assert len(ds) == 2 and ds.problems == []
    m = ds[0].masks
    assert m[2].sum() == 6 and m[[0, 1, 3]].sum() == 0
    assert m[2, 2:6, 0].all() and m[2, 3:5, 1].all()
    assert not ds.has_defect(1)


def test_images_without_rows_are_defect_free_in_final_form(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nb.jpg,2,1 5\n")
    ds = open_dataset(tmp_path)
    assert ds.ids == ["a.jpg", "b.jpg", "c.jpg"]
    assert ds.class_presence().sum(axis=0).tolist() == [0, 1, 0, 0]
    s = ds.summary()
    assert s["images"] == 3 and s["defect_free"] == 2
    assert s["classes"]["class_2"]["pixels"] == 5


BAD_ROWS = [
    ("b.jpg,1,1 2 3", 2, "odd number"),
    ("b.jpg,1,1 9999", 2, "outside"),
    ("b.jpg,1,1 5 3 5", 2, "overlap"),
    ("b.jpg,1,one 5", 2, "non-negative integer"),
    ("b.jpg,7,1 5", 2, "unknown ClassId '7'"),
    ("b.jpg,x,1 5", 2, "unknown ClassId 'x'"),
    ("b.jpg,1", 2, "expected 3 fields"),
    ("zzz.jpg,1,1 5", 2, "no such file"),
]


@pytest.mark.parametrize("row, line, fragment", BAD_ROWS)
def test_bad_rows_are_skipped_counted_and_named(tmp_path, row, line, fragment, caplog):
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\n{row}\na.jpg,4,10 3\n")
    with caplog.at_level(logging.WARNING, logger="inspect_edge.data"):
        ds = open_dataset(tmp_path)
    assert len(ds.problems) == 1
    p = ds.problems[0]
    assert p.row == line and fragment in p.message
    assert p.file.endswith("train.csv")
    assert "a.jpg" in ds.ids and "zzz.jpg" not in ds.ids
    if "zzz" not in row:
        assert "b.jpg" not in ds.ids  # the image with a bad label is skipped, not half-labelled
    assert ds[ds.ids.index("a.jpg")].masks[3].sum() == 3
    # The load ends with a summary line and each problem is logged.
    assert any("problem" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=fragment):
        open_dataset(tmp_path, strict=True)


def test_duplicate_rows_and_undecodable_images(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "train_images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    (tmp_path / "train_images" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpg,1,1 2\na.jpg,1,5 2\n")
    ds = open_dataset(tmp_path)
    msgs = sorted(str(p) for p in ds.problems)
    assert len(msgs) == 3
    assert any("duplicate of line 2" in m and "train.csv:3" in m for m in msgs)
    assert any("broken.jpg" in m and "unreadable image" in m for m in msgs)
    assert any("empty.jpg" in m for m in msgs)
    assert ds.ids == ["b.jpg"]


def test_unknown_header_and_unknown_layout(tmp_path):
    _write_images(tmp_path, ["a.jpg"])
    (tmp_path / "train.csv").write_text("id,label\n")
    with pytest.raises(DataError, match="unknown header"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="unknown data layout"):
        open_dataset(tmp_path / "train_images")


def test_classes_txt_sets_names_and_class_count(tmp_path):
    _write_images(tmp_path, ["a.jpg"])
    (tmp_path / "classes.txt").write_text("background\nrust\ndent\n")
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\na.jpg,3,1 2\n")
    ds = open_dataset(tmp_path)
    assert ds.classes == ("rust", "dent")
    assert "valid: 1..2" in ds.problems[0].message


def test_views_split_and_subset(tmp_path, samples):
    write_severstal(tmp_path, samples, ["a", "b", "c", "d"])
    ds = open_dataset(tmp_path)
    sub = ds.subset([2, 0])
    assert sub.ids == ["img2.jpg", "img0.jpg"] and len(sub) == 2
    assert (sub[1].masks == samples[0].masks).all()
    assert len(ds.split("train")) == 4
    with pytest.raises(KeyError, match="available: train"):
        ds.split("val")
    with pytest.raises(DataError, match="available: train"):
        open_dataset(tmp_path, split="val")


def test_every_bad_row_of_an_image_is_reported_in_one_pass(tmp_path):
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "train.csv").write_text(
        "ImageId,ClassId,EncodedPixels\nb.jpg,9,1 5\nb.jpg,2,1 2 3\nb.jpg,3,1 99999\na.jpg,1,1 5\n")
    ds = open_dataset(tmp_path)
    assert sorted(p.row for p in ds.problems) == [2, 3, 4]  # the unknown class did not hide the two bad RLEs
    assert ds.ids == ["a.jpg"]
    with pytest.raises(DataError, match=r"3 problem\(s\)"):
        open_dataset(tmp_path, strict=True)


def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path):
    _write_images(tmp_path, ["a.jpg"])
    (tmp_path / "train.csv").write_bytes(b"ImageId,ClassId,EncodedPixels\na.jpg,1,1 5\na.jpg,2,1 5 \xe9\n")
    with pytest.raises(DataError, match=r"train.csv:3: byte 0xe9 at column 13 is not UTF-8"):
        open_dataset(tmp_path)


def test_a_cut_off_jpeg_is_skipped_not_filled_with_grey(tmp_path):
    _write_images(tmp_path, ["a.jpg"], shape=(64, 64))
    texture = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    whole = cv2.imencode(".jpg", texture)[1].tobytes()
    (tmp_path / "train_images" / "b.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    assert cv2.imread(str(tmp_path / "train_images" / "b.jpg")) is not None  # OpenCV alone would accept it
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    ds = open_dataset(tmp_path)
    assert ds.ids == ["a.jpg"] and len(ds.problems) == 1
    assert "b.jpg" in ds.problems[0].file and "end-of-image" in ds.problems[0].message
