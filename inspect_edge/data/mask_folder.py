"""Mask folders: `images/<split>/<id>.<ext>`, `masks/<split>/<id>.png`, `classes.txt`.

Masks are index masks: pixel value N means class N of classes.txt (0 is background),
so classes cannot overlap in this format. Opening reads every mask once (they are
small PNGs) to validate values and sizes and to count pixels per class.
"""

from __future__ import annotations

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


def _read_index_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise ValueError("cannot decode mask PNG")
    if m.ndim == 3:
        # Some tools save index masks as RGB with equal channels; anything else is a colour mask.
        if not (m == m[..., :1]).all():
            raise ValueError("mask has colour channels; expected a single-channel index mask")
        m = m[..., 0]
    return m


def _decode_masks(item: Item, k: int) -> np.ndarray:
    m = _read_index_mask(item.label)
    if m.shape != item.shape:
        raise DataError(f"{item.label}: mask is {m.shape}, image is {item.shape}")
    return m[None, :, :] == np.arange(1, k + 1, dtype=m.dtype)[:, None, None]


def read_mask_folder(root: Path, *, strict: bool = False, split: str | None = None) -> SteelDataset:
    """Open a mask folder; with `split`, only that split's files are read."""
    root = Path(root)
    classes = read_classes_txt(root / "classes.txt")
    k = len(classes)
    log = ProblemLog()
    splits = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    if not splits:
        raise DataError(f"{root / 'images'}: no split folders (expected images/<split>/<id>.<ext>)")
    if split is not None:
        if split not in splits:
            raise DataError(f"no split {split!r} in {root}; available: {', '.join(splits)}")
        splits = [split]
    items: list[Item] = []
    for split in splits:
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        images: dict[str, Path] = {}
        for p in sorted(image_dir.iterdir()):
            if not (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
                continue
            if p.stem in images:
                log.add(p, None, f"two images with id {p.stem!r} ({images[p.stem].name}, {p.name}); both skipped")
                images[p.stem] = None
                continue
            images[p.stem] = p
        masks = {p.stem: p for p in mask_dir.glob("*.png")} if mask_dir.is_dir() else {}
        for stem in sorted(set(masks) - set(images)):
            log.add(masks[stem], None, f"mask without an image in {image_dir}; skipped")
        for stem, image_path in images.items():
            if image_path is None:
                continue
            mask_path = masks.get(stem)
            if mask_path is None:
                log.add(image_path, None, f"no mask {mask_dir / (stem + '.png')}; skipped")
                continue
            shape = image_size_or_report(image_path, log)
            if shape is None:
                continue
            try:
                m = _read_index_mask(mask_path)
            except ValueError as e:
                log.add(mask_path, None, f"{e}; skipped")
                continue
            if m.shape != shape:
                log.add(
                    mask_path, None,
                    f"mask size {m.shape[1]}x{m.shape[0]} != image size {shape[1]}x{shape[0]} "
                    f"({image_path.name}); skipped",
                )
                continue
            counts = np.bincount(m.ravel(), minlength=k + 1)
            if counts.size > k + 1 and counts[k + 1:].any():
                bad = sorted(int(v) for v in np.flatnonzero(counts[k + 1:]) + k + 1)
                log.add(mask_path, None, f"mask values {bad} not in classes.txt (1..{k}); skipped")
                continue
            items.append(Item(stem, image_path, split, shape, counts[1:k + 1].astype(np.int64), mask_path))
    log.finish(root, len(items), strict)
    return SteelDataset(root, "mask-folder", classes, items, log.problems, _decode_masks, tuple(splits))


def write_mask_folder(
    out_dir: str | Path, samples: Iterable[Sample], classes: Sequence[str], image_ext: str = ".png"
) -> int:
    """Write samples as a mask folder (split from each sample); returns the count.

    Index masks hold one class per pixel, so overlapping class masks raise ValueError.
    """
    out = Path(out_dir)
    k = len(classes)
    if k > 255:
        raise ValueError("an 8-bit index mask holds at most 255 classes")
    out.mkdir(parents=True, exist_ok=True)
    write_classes_txt(out / "classes.txt", classes)
    n = 0
    for s in samples:
        if s.masks.shape != (k, *s.image.shape[:2]):
            raise ValueError(f"{s.image_id}: masks {s.masks.shape} do not match {k} classes and image {s.image.shape}")
        if (s.masks.sum(axis=0) > 1).any():
            raise ValueError(f"{s.image_id}: class masks overlap; an index mask cannot hold that")
        index = np.zeros(s.image.shape[:2], np.uint8)
        for c in range(k):
            index[s.masks[c]] = c + 1
        (out / "images" / s.split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / s.split).mkdir(parents=True, exist_ok=True)
        stem = Path(s.image_id).stem if Path(s.image_id).suffix.lower() in IMAGE_EXTENSIONS else s.image_id
        if not cv2.imwrite(str(out / "images" / s.split / f"{stem}{image_ext}"), s.image):
            raise OSError(f"{out / 'images' / s.split / (stem + image_ext)}: cannot write image")
        if not cv2.imwrite(str(out / "masks" / s.split / f"{stem}.png"), index):
            raise OSError(f"{out / 'masks' / s.split / (stem + '.png')}: cannot write mask")
        n += 1
    return n
