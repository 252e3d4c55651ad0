"""CVAT's "Segmentation mask 1.1" export (Pascal VOC layout), read and written.

    labelmap.txt                       `name:r,g,b:parts:actions`, one label a line
    ImageSets/Segmentation/<set>.txt   image ids of each subset (each subset is a split)
    SegmentationClass/<id>.png         colour masks: a pixel's RGB is its label's colour
    JPEGImages/<id>.<ext>              the images (exported with "save images")

The label named `background` (or coloured 0,0,0) is background; the others are
the defect classes, in labelmap order. A mask colour that labelmap.txt does not
list makes its image untrustworthy: skipped and reported, like a bad RLE row.
Writing the same layout gives the round trip to an annotation task.
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
    image_size_or_report,
)

# Pascal VOC's first colours: what CVAT assigns when labels have none.
VOC_COLOURS = [(128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128), (128, 128, 128),
               (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128), (64, 128, 128)]


def read_labelmap(path: Path) -> tuple[tuple[str, ...], list[tuple[int, int, int]]]:
    """(defect class names, their RGB colours) from labelmap.txt; background left out."""
    names, colours = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(":")
        try:
            rgb = tuple(int(v) for v in parts[1].split(","))
            if len(parts) < 2 or len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (ValueError, IndexError):
            raise DataError(f"{path}:{n}: expected 'name:r,g,b:parts:actions', got {line!r}") from None
        name = parts[0].strip()
        if name.lower() == "background" or rgb == (0, 0, 0):
            continue
        if rgb in colours:
            raise DataError(f"{path}:{n}: colour {rgb} is already {names[colours.index(rgb)]!r}")
        names.append(name)
        colours.append(rgb)
    if not names:
        raise DataError(f"{path}: no defect labels (only background)")
    return tuple(names), colours


def _colour_index(mask_bgr: np.ndarray, colours: list[tuple[int, int, int]]) -> tuple[np.ndarray, set]:
    """(index mask: 0 background, k+1 for colour k; colours found that are not listed)."""
    if mask_bgr.ndim == 2:
        mask_bgr = cv2.cvtColor(mask_bgr, cv2.COLOR_GRAY2BGR)
    rgb = mask_bgr[..., :3][..., ::-1].astype(np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    index = np.zeros(packed.shape, np.uint8)
    known = {0}
    for k, (r, g, b) in enumerate(colours):
        code = (r << 16) | (g << 8) | b
        index[packed == code] = k + 1
        known.add(code)
    unknown = {(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255) for c in np.unique(packed) if int(c) not in known}
    return index, unknown


def read_cvat_mask(root: Path, *, strict: bool = False) -> SteelDataset:
    root = Path(root)
    classes, colours = read_labelmap(root / "labelmap.txt")
    k = len(classes)
    log = ProblemLog()
    mask_dir, image_dir = root / "SegmentationClass", root / "JPEGImages"
    sets_dir = root / "ImageSets" / "Segmentation"
    subsets = {p.stem: p for p in sorted(sets_dir.glob("*.txt"))} if sets_dir.is_dir() else {}
    members = {name: [s.strip() for s in p.read_text().splitlines() if s.strip()] for name, p in subsets.items()}
    if not members:
        members = {"default": sorted(p.stem for p in mask_dir.glob("*.png"))}
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS} if image_dir.is_dir() else {}
    items: list[Item] = []
    for split, ids in members.items():
        for image_id in ids:
            mask_path, image_path = mask_dir / f"{image_id}.png", images.get(image_id)
            if image_path is None:
                log.add(image_dir / image_id, None, f"no image for {image_id} (export with 'save images'); skipped")
                continue
            if not mask_path.is_file():
                log.add(mask_path, None, "no mask for this image; skipped")
                continue
            shape = image_size_or_report(image_path, log)
            if shape is None:
                continue
            raw = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                log.add(mask_path, None, "cannot decode mask PNG; skipped")
                continue
            index, unknown = _colour_index(raw, colours)
            if unknown:
                log.add(mask_path, None, f"colours {sorted(unknown)} are not in labelmap.txt; skipped")
                continue
            if index.shape != shape:
                log.add(mask_path, None, f"mask is {index.shape[1]}x{index.shape[0]}, image {shape[1]}x{shape[0]}; skipped")
                continue
            counts = np.bincount(index.ravel(), minlength=k + 1)[1:k + 1].astype(np.int64)
            items.append(Item(image_id, image_path, split, shape, counts, mask_path))
    log.finish(root, len(items), strict)

    def decode(item: Item, n_classes: int) -> np.ndarray:
        index, _ = _colour_index(cv2.imread(str(item.label), cv2.IMREAD_UNCHANGED), colours)
        return index[None] == np.arange(1, n_classes + 1, dtype=np.uint8)[:, None, None]

    return SteelDataset(root, "cvat-mask", classes, items, log.problems, decode, tuple(members))


def write_cvat_mask(out_dir: str | Path, samples: Iterable[Sample], classes: Sequence[str]) -> int:
    """A CVAT "Segmentation mask 1.1" task folder of `samples` (subset = each sample's split)."""
    out = Path(out_dir)
    if len(classes) > len(VOC_COLOURS):
        raise ValueError(f"at most {len(VOC_COLOURS)} classes get distinct colours here, got {len(classes)}")
    for d in ("SegmentationClass", "JPEGImages", "ImageSets/Segmentation"):
        (out / d).mkdir(parents=True, exist_ok=True)
    colours = VOC_COLOURS[: len(classes)]
    (out / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                      + "".join(f"{c}:{r},{g},{b}::\n" for c, (r, g, b) in zip(classes, colours)))
    subsets: dict[str, list[str]] = {}
    for s in samples:
        stem = Path(s.image_id).stem if Path(s.image_id).suffix.lower() in IMAGE_EXTENSIONS else s.image_id
        if (s.masks.sum(axis=0) > 1).any():
            raise ValueError(f"{s.image_id}: class masks overlap; a colour mask cannot hold that")
        mask = np.zeros((*s.image.shape[:2], 3), np.uint8)
        for c, (r, g, b) in enumerate(colours):
            mask[s.masks[c]] = (b, g, r)
        if not (cv2.imwrite(str(out / "SegmentationClass" / f"{stem}.png"), mask)
                and cv2.imwrite(str(out / "JPEGImages" / f"{stem}.png"), s.image)):
            raise OSError(f"{out}: cannot write {stem}")
        subsets.setdefault(s.split or "default", []).append(stem)
    for name, ids in subsets.items():
        (out / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return sum(len(v) for v in subsets.values())
