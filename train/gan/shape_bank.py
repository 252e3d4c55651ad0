"""A bank of real defect shapes (connected components per class) and how new masks are made.

Each shape keeps its mask and the real pixels under its bounding box, so the same
shape serves the GAN (mask only: the generator paints it) and the copy-paste baseline
(mask and pixels). Both methods draw shapes, transforms and placements from the same
seeded sequence, so an ablation compares painters, not mask distributions.

Transforms respect the rolling direction: flips (a defect and its mirror image are
equally plausible) and scaling are free, rotation is limited to a few degrees, because
scratches and rolled-in streaks run along the strip and a 90-degree turn would make
shapes the mill never produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class LabelledImage:
    """One labelled image in memory: labels 0 = clean steel, k+1 = defect class k."""

    image_id: str
    image: np.ndarray  # uint8 (H, W)
    labels: np.ndarray  # uint8 (H, W)


def labels_from_masks(masks: np.ndarray) -> np.ndarray:
    """bool (K, H, W) -> uint8 (H, W); where classes overlap (Severstal allows it) the lower class wins."""
    labels = np.zeros(masks.shape[1:], np.uint8)
    for k in range(masks.shape[0] - 1, -1, -1):
        labels[masks[k]] = k + 1
    return labels


def masks_from_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return labels[None] == np.arange(1, num_classes + 1, dtype=labels.dtype)[:, None, None]


def load_labelled(ds, indices=None) -> list[LabelledImage]:
    """Read images + labels of a SteelDataset (all, or the given indices) into memory."""
    idx = range(len(ds)) if indices is None else indices
    out = []
    for i in idx:
        s = ds[int(i)]
        out.append(LabelledImage(s.image_id, s.image, labels_from_masks(s.masks)))
    return out


@dataclass
class Shape:
    cls: int  # defect class index (0-based, data set order)
    mask: np.ndarray  # bool (h, w), tight bounding box
    patch: np.ndarray  # uint8 (h, w), the real pixels under the box
    source_id: str
    component: int  # component number within its source image and class


@dataclass(frozen=True)
class TransformConfig:
    scale_range: tuple[float, float] = (0.75, 1.25)
    max_rotation_deg: float = 10.0
    flip: bool = True
    max_extent: int = 112  # longest side after transform (the generator paints inside one crop)


class ShapeBank:
    def __init__(self, shapes: list[Shape], num_classes: int) -> None:
        self.shapes = shapes
        self.num_classes = num_classes
        self.by_class = {k: [i for i, s in enumerate(shapes) if s.cls == k] for k in range(num_classes)}

    @classmethod
    def from_images(cls, images: list[LabelledImage], num_classes: int, min_area: int = 16) -> ShapeBank:
        shapes = []
        for li in images:
            for k in range(num_classes):
                m = (li.labels == k + 1).astype(np.uint8)
                if not m.any():
                    continue
                n, comp, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
                for c in range(1, n):
                    x, y, w, h, area = stats[c]
                    if area < min_area:
                        continue
                    box = (slice(y, y + h), slice(x, x + w))
                    shapes.append(Shape(k, comp[box] == c, li.image[box].copy(), li.image_id, c))
        return cls(shapes, num_classes)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def classes_present(self) -> list[int]:
        return [k for k, ids in self.by_class.items() if ids]

    def pick(self, rng: np.random.Generator, cls: int | None = None) -> Shape:
        pool = self.by_class[cls] if cls is not None else range(len(self.shapes))
        if not pool:
            raise ValueError(f"shape bank has no shapes of class {cls}")
        return self.shapes[pool[int(rng.integers(len(pool)))]]

    def summary(self) -> dict:
        return {"shapes": len(self.shapes), "per_class": {k: len(v) for k, v in self.by_class.items()}}


def transform_shape(shape: Shape, rng: np.random.Generator, cfg: TransformConfig) -> tuple[np.ndarray, np.ndarray]:
    """Randomly flipped, scaled and slightly rotated (mask bool, patch uint8), tight box."""
    mask, patch = shape.mask.astype(np.uint8), shape.patch
    if cfg.flip:
        if rng.random() < 0.5:
            mask, patch = mask[:, ::-1], patch[:, ::-1]
        if rng.random() < 0.5:
            mask, patch = mask[::-1], patch[::-1]
    h, w = mask.shape
    scale = rng.uniform(*cfg.scale_range)
    scale = min(scale, cfg.max_extent / max(h, w))
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    # Rotate about the centre into a canvas large enough for the rotated box.
    rad = np.deg2rad(angle)
    cos, sin = abs(np.cos(rad)), abs(np.sin(rad))
    nw = int(np.ceil((w * cos + h * sin) * scale)) + 2
    nh = int(np.ceil((w * sin + h * cos) * scale)) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    mask_t = cv2.warpAffine(mask * 255, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=0) >= 128
    patch_t = cv2.warpAffine(np.ascontiguousarray(patch), m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ys, xs = np.nonzero(mask_t)
    if ys.size == 0:  # scaled below one pixel: keep the untransformed shape
        return shape.mask.copy(), shape.patch.copy()
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    mask_t, patch_t = mask_t[box], patch_t[box]
    if max(mask_t.shape) > cfg.max_extent:  # rotation grew the box: crop to the limit
        mask_t, patch_t = mask_t[: cfg.max_extent, : cfg.max_extent], patch_t[: cfg.max_extent, : cfg.max_extent]
    return mask_t, patch_t


def place_shape(
    labels: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_overlap: float = 0.1, tries: int = 30
) -> tuple[int, int, np.ndarray] | None:
    """Find (y, x) for `mask` on an image with existing `labels` where it overlaps existing
    defects by at most `max_overlap` of its area. Returns (y, x, full-size new mask with the
    overlapping pixels removed, so classes never overlap) or None when nothing fits."""
    H, W = labels.shape
    h, w = mask.shape
    if h > H or w > W:
        return None
    area = int(mask.sum())
    for _ in range(tries):
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        occupied = labels[y : y + h, x : x + w] > 0
        if (mask & occupied).sum() <= max_overlap * area:
            full = np.zeros((H, W), bool)
            full[y : y + h, x : x + w] = mask & ~occupied
            if full.any():
                return y, x, full
    return None
