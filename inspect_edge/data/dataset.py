"""One `SteelDataset` API over every steel data format the project reads.

Opening a data set reads only what is cheap: the label file(s) and the image headers.
Every label is validated up front (RLE runs, class ids, mask values, image/mask sizes),
so a bad item is reported and skipped at open time instead of blowing up an epoch later.
Images themselves are decoded lazily by `ds[i]`.
"""

from __future__ import annotations

import dataclasses

import logging
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

log = logging.getLogger("inspect_edge.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class Sample:
    image_id: str
    image: np.ndarray  # uint8 (H, W) grayscale
    masks: np.ndarray  # bool (K, H, W), channel k <-> classes[k]
    split: str = "train"


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"{where}: {self.message}"


class DataError(ValueError):
    """A data set cannot be used as asked (strict mode, unreadable layout, missing split)."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.problems = list(problems)


class ProblemLog:
    """Collects problems while a data set is opened; logs each one as it is found."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, file: str | Path, row: int | None, message: str) -> None:
        p = Problem(str(file), row, message)
        self.problems.append(p)
        log.warning("%s", p)

    def finish(self, root: Path, n_loaded: int, strict: bool) -> None:
        n = len(self.problems)
        if strict and n:
            shown = "\n".join(f"  {p}" for p in self.problems[:10])
            more = f"\n  ... and {n - 10} more" if n > 10 else ""
            raise DataError(f"{root}: {n} problem(s) found (strict mode):\n{shown}{more}", self.problems)
        if n:
            log.warning("%s: loaded %d images, skipped or flagged %d problem(s)", root, n_loaded, n)
        else:
            log.info("%s: loaded %d images, no problems", root, n_loaded)


@dataclass
class Item:
    """What the reader learnt about one image at open time (labels validated)."""

    image_id: str
    image_path: Path
    split: str
    shape: tuple[int, int]
    pixels: np.ndarray  # int64 (K,) labelled pixels per class
    label: object  # format-specific: tuple of RLE strings, or the mask path


def read_image_size(path: Path) -> tuple[int, int]:
    """(H, W) from a JPEG or PNG header without decoding; other formats are decoded.

    Raises ValueError with the reason when the file is not a readable image, including
    a JPEG without its end-of-image marker (cut off in a copy or a full disk).
    """
    with open(path, "rb") as f:
        head = f.read(65536)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise ValueError("truncated PNG header")
            w, h = struct.unpack(">II", head[16:24])
            return int(h), int(w)
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            size = _jpeg_size(f)
            # OpenCV decodes a cut-off JPEG without an error, filling the rest with grey, and
            # training would learn from that grey: a JPEG must end with its end-of-image marker.
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64))
            if b"\xff\xd9" not in f.read().rstrip(b"\x00"):
                raise ValueError("truncated JPEG: no end-of-image marker (the file was cut off)")
            return size
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("not a readable image (empty, truncated or unknown format)")
    return int(img.shape[0]), int(img.shape[1])


def image_size_or_report(path: Path, log: ProblemLog) -> tuple[int, int] | None:
    """`read_image_size`, or None after recording why the image is skipped."""
    try:
        return read_image_size(path)
    except (OSError, ValueError) as e:
        log.add(path, None, f"unreadable image: {e}; skipped")
        return None


def _jpeg_size(f) -> tuple[int, int]:
    # Walk the marker segments until a start-of-frame (SOF0..SOF15 minus DHT/JPG/DAC).
    while True:
        b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            raise ValueError("truncated JPEG: no frame header")
        marker = b[0]
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        raw = f.read(2)
        if len(raw) < 2:
            raise ValueError("truncated JPEG header")
        (length,) = struct.unpack(">H", raw)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            seg = f.read(5)
            if len(seg) < 5:
                raise ValueError("truncated JPEG frame header")
            h, w = struct.unpack(">HH", seg[1:5])
            if h == 0 or w == 0:
                raise ValueError(f"JPEG frame header gives size {w}x{h}")
            return int(h), int(w)
        if marker == 0xDA:
            raise ValueError("JPEG has no frame header before the scan")
        f.seek(length - 2, 1)


def read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DataError(f"{path}: cannot decode image")
    return img


class SteelDataset:
    def __init__(
        self,
        root: Path,
        format: str,
        classes: Sequence[str],
        items: list[Item],
        problems: list[Problem],
        decode_masks: Callable[[Item, int], np.ndarray],
        split_names: Sequence[str] | None = None,
    ):
        self.root = Path(root)
        self.format = format
        self.classes = tuple(classes)
        self.problems = problems
        self._items = items
        self._decode_masks = decode_masks
        self.split_names = tuple(split_names) if split_names is not None else tuple(
            dict.fromkeys(it.split for it in items)
        )

    # ---- access --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Sample:
        it = self._items[i]
        image = read_gray(it.image_path)
        if image.shape != it.shape:
            raise DataError(f"{it.image_path}: image is {image.shape}, its header said {it.shape}")
        masks = self._decode_masks(it, len(self.classes))
        return Sample(it.image_id, image, masks, it.split)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @property
    def ids(self) -> list[str]:
        return [it.image_id for it in self._items]

    def image_path(self, i: int) -> Path:
        return self._items[i].image_path

    def image_shape(self, i: int) -> tuple[int, int]:
        return self._items[i].shape

    def __repr__(self) -> str:
        return (
            f"SteelDataset({str(self.root)!r}, format={self.format!r}, n={len(self)}, "
            f"classes={self.classes}, splits={self.split_names}, problems={len(self.problems)})"
        )

    # ---- views ---------------------------------------------------------------
    def _view(self, items: list[Item], split_names=None) -> SteelDataset:
        return SteelDataset(
            self.root, self.format, self.classes, items, self.problems, self._decode_masks, split_names
        )

    def split(self, name: str) -> SteelDataset:
        if name not in self.split_names:
            raise KeyError(f"no split {name!r} in {self.root}; available: {', '.join(self.split_names)}")
        return self._view([it for it in self._items if it.split == name], (name,))

    def subset(self, indices) -> SteelDataset:
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._view([self._items[int(i)] for i in idx])

    # ---- labels, cheap -------------------------------------------------------
    def pixel_counts(self) -> np.ndarray:
        """int64 (N, K): labelled pixels per image and class."""
        k = len(self.classes)
        if not self._items:
            return np.zeros((0, k), np.int64)
        return np.stack([it.pixels for it in self._items])

    def class_presence(self) -> np.ndarray:
        return self.pixel_counts() > 0

    def has_defect(self, i: int) -> bool:
        return bool(self._items[i].pixels.any())

    def summary(self) -> dict:
        counts = self.pixel_counts()
        n = len(self)
        areas = np.array([it.shape[0] * it.shape[1] for it in self._items], np.int64)
        total_px = int(areas.sum())
        presence = counts > 0
        defect_free = int((~presence.any(axis=1)).sum()) if n else 0
        sizes = Counter(f"{it.shape[1]}x{it.shape[0]}" for it in self._items)
        per_class = {}
        for k, name in enumerate(self.classes):
            px = int(counts[:, k].sum()) if n else 0
            per_class[name] = {
                "images": int(presence[:, k].sum()) if n else 0,
                "pixels": px,
                "pixel_share": px / total_px if total_px else 0.0,
            }
        return {
            "root": str(self.root),
            "format": self.format,
            "images": n,
            "splits": {s: sum(it.split == s for it in self._items) for s in self.split_names},
            "defect_free": defect_free,
            "defect_free_share": defect_free / n if n else 0.0,
            "multi_class_images": int((presence.sum(axis=1) > 1).sum()) if n else 0,
            "classes": per_class,
            "image_sizes": dict(sizes.most_common()),
            "problems": len(self.problems),
            "problem_list": [str(p) for p in self.problems],
        }


def open_dataset(path: str | Path, *, strict: bool = False, split: str | None = None) -> SteelDataset:
    """Open a Severstal folder, a mask folder or a CVAT mask export, whichever `path` holds.

    Problems are collected in `ds.problems` (bad items skipped); `strict=True` raises
    DataError listing them instead. A layout that is neither format raises DataError.
    """
    from inspect_edge.data import cvat_mask, mask_folder, severstal

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    if (root / "train.csv").is_file() and (root / "train_images").is_dir():
        ds = severstal.read_severstal(root, strict=strict)
    elif (root / "images").is_dir() and (root / "masks").is_dir() and (root / "classes.txt").is_file():
        ds = mask_folder.read_mask_folder(root, strict=strict, split=split)
    elif (root / "labelmap.txt").is_file() and (root / "SegmentationClass").is_dir():
        ds = cvat_mask.read_cvat_mask(root, strict=strict)
    else:
        raise DataError(
            f"{root}: unknown data layout; expected train.csv + train_images/ (Severstal), "
            "images/ + masks/ + classes.txt (mask folder) or labelmap.txt + SegmentationClass/ "
            "(CVAT Segmentation mask 1.1)"
        )
    return _take_split(ds, split)


def _take_split(ds: SteelDataset, split: str | None) -> SteelDataset:
    if split is None:
        return ds
    try:
        return ds.split(split)
    except KeyError as e:
        raise DataError(e.args[0]) from None


def open_datasets(paths, *, strict: bool = False, split: str | None = None) -> SteelDataset:
    """One folder (`open_dataset`), or several merged into one data set.

    The folders may be of different formats but must name the same classes in the
    same order; image ids become `<folder name>/<id>` so two folders' ids never collide.
    """
    if isinstance(paths, (str, Path)):
        return open_dataset(paths, strict=strict, split=split)
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return open_dataset(paths[0], strict=strict, split=split)
    parts = [open_dataset(p, strict=strict) for p in paths]
    first = parts[0]
    for ds in parts[1:]:
        if ds.classes != first.classes:
            raise DataError(f"cannot merge data sets with different classes: {first.root} has {list(first.classes)}, "
                            f"{ds.root} has {list(ds.classes)}")
    names = [p.name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    items, decoders = [], {}
    for name, ds in zip(names, parts):
        for it in ds._items:
            items.append(dataclasses.replace(it, image_id=f"{name}/{it.image_id}", label=(name, it.label)))
        decoders[name] = ds._decode_masks

    def decode(item: Item, k: int) -> np.ndarray:
        name, label = item.label
        return decoders[name](dataclasses.replace(item, label=label), k)

    problems = [p for ds in parts for p in ds.problems]
    splits = tuple(dict.fromkeys(s for ds in parts for s in ds.split_names))
    merged = SteelDataset(paths[0], "+".join(dict.fromkeys(ds.format for ds in parts)), first.classes, items,
                          problems, decode, splits)
    return _take_split(merged, split)


def read_classes_txt(path: Path) -> tuple[str, ...]:
    """Defect class names from a classes.txt (line 0 is background and is dropped)."""
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 2:
        raise DataError(f"{path}: needs a background line and at least one class, got {len(lines)} line(s)")
    names = lines[1:]
    for i, name in enumerate(names, start=2):
        if not name:
            raise DataError(f"{path}:{i}: empty class name")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names must be unique, got {names}")
    return tuple(names)


def write_classes_txt(path: Path, classes: Sequence[str]) -> None:
    path.write_text("\n".join(["background", *classes]) + "\n")
