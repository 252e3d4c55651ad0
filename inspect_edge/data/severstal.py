"""Severstal steel defect format: `train.csv` + `train_images/`.

Two published CSV forms are read:
- final:    `ImageId,ClassId,EncodedPixels`, one row per defect present; images in
            train_images/ without a row are defect-free;
- original: `ImageId_ClassId,EncodedPixels`, four rows per image, empty when no defect.
The final form is written. ClassId k (1-based) is channel k-1 of `Sample.masks`.

Any bad label (malformed RLE, unknown ClassId, a malformed row) makes its image
untrustworthy, so the whole image is skipped and the problem recorded, never guessed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from inspect_edge.data.dataset import (
    IMAGE_EXTENSIONS,
    DataError,
    Item,
    ProblemLog,
    Sample,
    SteelDataset,
    read_classes_txt,
    image_size_or_report,
    write_classes_txt,
)
from inspect_edge.data.rle import RLEError, parse_rle, rle_decode, rle_encode

DEFAULT_CLASSES = ("class_1", "class_2", "class_3", "class_4")
FINAL_HEADER = ["ImageId", "ClassId", "EncodedPixels"]
ORIGINAL_HEADER = ["ImageId_ClassId", "EncodedPixels"]


def _decode_masks(item: Item, k: int) -> np.ndarray:
    masks = np.zeros((k, *item.shape), dtype=bool)
    for c, rle in enumerate(item.label):
        if rle:
            masks[c] = rle_decode(rle, item.shape)
    return masks


def _read_rows(csv_path: Path, n_classes: int, log: ProblemLog):
    """-> (labels {image_id: {class_index: (rle, line)}}, bad image ids, form)."""
    labels: dict[str, dict[int, tuple[str, int]]] = {}
    bad: set[str] = set()
    try:
        raw = csv_path.read_bytes()
    except OSError as e:
        raise DataError(f"{csv_path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # Decoded whole, so the error names the line it is on (a streamed decode fails at the header).
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{csv_path}:{line}: byte 0x{raw[e.start]:02x} at column {column} is not UTF-8; "
                        "save the file as UTF-8") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{csv_path}:1: cannot parse header ({e})") from None
        if header == FINAL_HEADER:
            form = "final"
        elif header == ORIGINAL_HEADER:
            form = "original"
        else:
            raise DataError(
                f"{csv_path}:1: unknown header {header}; expected {','.join(FINAL_HEADER)} "
                f"or {','.join(ORIGINAL_HEADER)}"
            )
        width = len(header)
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != width:
                    log.add(csv_path, line, f"expected {width} fields, got {len(row)}; row skipped")
                    if row[0].strip():
                        bad.add(row[0].strip().rsplit("_", 1)[0] if form == "original" else row[0].strip())
                    continue
                if form == "final":
                    image_id, class_text, rle = (c.strip() for c in row)
                else:
                    key, rle = (c.strip() for c in row)
                    image_id, _, class_text = key.rpartition("_")
                    if not image_id:
                        log.add(csv_path, line, f"ImageId_ClassId {key!r} has no '_<ClassId>' suffix; row skipped")
                        continue
                if not image_id:
                    log.add(csv_path, line, "empty ImageId; row skipped")
                    continue
                labels.setdefault(image_id, {})
                if not class_text.isascii() or not class_text.isdigit() or not 1 <= int(class_text) <= n_classes:
                    log.add(
                        csv_path, line,
                        f"ImageId {image_id}: unknown ClassId {class_text!r} (valid: 1..{n_classes}); image skipped",
                    )
                    bad.add(image_id)
                    continue
                c = int(class_text) - 1
                if c in labels[image_id]:
                    first = labels[image_id][c][1]
                    log.add(
                        csv_path, line,
                        f"ImageId {image_id} ClassId {c + 1}: duplicate of line {first}; image skipped",
                    )
                    bad.add(image_id)
                    continue
                labels[image_id][c] = (rle, line)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{csv_path}:{reader.line_num}: cannot parse CSV ({e})") from None
    return labels, bad, form


def read_severstal(root: Path, *, strict: bool = False) -> SteelDataset:
    root = Path(root)
    csv_path, image_dir = root / "train.csv", root / "train_images"
    classes = read_classes_txt(root / "classes.txt") if (root / "classes.txt").is_file() else DEFAULT_CLASSES
    k = len(classes)
    log = ProblemLog()
    labels, bad, form = _read_rows(csv_path, k, log)

    on_disk = {p.name: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}
    for image_id in sorted(set(labels) - set(on_disk)):
        line = min((ln for _, ln in labels[image_id].values()), default=None)
        log.add(csv_path, line, f"ImageId {image_id}: no such file in train_images/; skipped")

    items: list[Item] = []
    for image_id in sorted(on_disk):
        path = on_disk[image_id]
        rows = labels.get(image_id)
        if rows is None and form == "original" and image_id not in bad:
            # The original form lists every image with 4 rows; a missing image is unlabelled.
            log.add(path, None, "image has no rows in train.csv (original form lists every image); skipped")
            continue
        shape = image_size_or_report(path, log)
        if shape is None:
            continue
        rles: list[str] = [""] * k
        pixels = np.zeros(k, np.int64)
        ok = image_id not in bad
        # Every row is checked, also once the image is known bad, so one pass names every problem.
        for c, (rle, line) in sorted((rows or {}).items()):
            try:
                pixels[c] = parse_rle(rle, shape)[1].sum()
            except RLEError as e:
                log.add(csv_path, line, f"ImageId {image_id} ClassId {c + 1}: bad EncodedPixels: {e}; image skipped")
                ok = False
                continue
            rles[c] = rle
        if ok:
            items.append(Item(image_id, path, "train", shape, pixels, tuple(rles)))
    log.finish(root, len(items), strict)
    return SteelDataset(root, "severstal", classes, items, log.problems, _decode_masks, ("train",))


class SeverstalWriter:
    """Streams samples into a Severstal folder (final CSV form); use as a context manager."""

    def __init__(self, out_dir: str | Path, classes: Sequence[str], jpeg_quality: int = 95):
        self.out = Path(out_dir)
        self.classes = tuple(classes)
        self.quality = int(jpeg_quality)
        (self.out / "train_images").mkdir(parents=True, exist_ok=True)
        write_classes_txt(self.out / "classes.txt", self.classes)
        self._f = open(self.out / "train.csv", "w", newline="")
        self._csv = csv.writer(self._f, lineterminator="\n")
        self._csv.writerow(FINAL_HEADER)
        self.count = 0

    def add(self, sample: Sample) -> str:
        name = sample.image_id
        if Path(name).suffix.lower() not in (".jpg", ".jpeg"):
            name += ".jpg"
        if sample.masks.shape != (len(self.classes), *sample.image.shape[:2]):
            raise ValueError(
                f"{name}: masks {sample.masks.shape} do not match {len(self.classes)} classes "
                f"and image {sample.image.shape}"
            )
        if not cv2.imwrite(str(self.out / "train_images" / name), sample.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality]):
            raise OSError(f"{self.out / 'train_images' / name}: cannot write image")
        for c in range(len(self.classes)):
            rle = rle_encode(sample.masks[c])
            if rle:
                self._csv.writerow([name, c + 1, rle])
        self.count += 1
        return name

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_severstal(out_dir: str | Path, samples: Iterable[Sample], classes: Sequence[str], jpeg_quality: int = 95) -> int:
    """Write samples as a Severstal folder (final CSV form + JPEGs + classes.txt); returns the count."""
    with SeverstalWriter(out_dir, classes, jpeg_quality) as w:
        for s in samples:
            w.add(s)
        return w.count
