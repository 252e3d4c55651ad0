"""Segmentation scores for steel defects (numpy only).

- Competition Dice (Severstal): the mean of Dice over every (image, class) pair, where a
  pair with both masks empty scores 1. Defect-free images therefore count, and a model
  that paints false positives on them is punished exactly as the leaderboard did.
- Per-class Dice over pairs (same rule, one class at a time) and per-class Dice only on
  images where the class is present in truth (how well defects are outlined, without the
  easy empty pairs).
- IoU per class is data-set level: total intersection / total union over all images
  (None when the class appears in neither truth nor prediction). `mean_iou` averages the
  defect classes; `miou_incl_background` adds background (pixels of no class) as one
  more class, the figure NEU-Seg papers publish.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def dice_pair(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and true {t.shape} differ in shape")
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


class DiceAccumulator:
    """Adds images one at a time (or in batches) so big sets never sit in memory at once."""

    def __init__(self, num_classes: int):
        self.k = int(num_classes)
        self._dice: list[np.ndarray] = []  # (K,) per image
        self._present: list[np.ndarray] = []  # (K,) bool per image
        self.inter = np.zeros(self.k, np.int64)
        self.union = np.zeros(self.k, np.int64)
        self.bg_inter = self.bg_union = 0  # background: pixels with no class, in truth / prediction

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        """pred/true bool (K, H, W) for one image, or (N, K, H, W) for a batch."""
        p, t = np.asarray(pred, bool), np.asarray(true, bool)
        if p.shape != t.shape:
            raise ValueError(f"pred {p.shape} and true {t.shape} differ in shape")
        if p.ndim == 3:
            p, t = p[None], t[None]
        if p.ndim != 4 or p.shape[1] != self.k:
            raise ValueError(f"expected (K, H, W) or (N, K, H, W) with K={self.k}, got {p.shape}")
        inter = np.logical_and(p, t).sum(axis=(2, 3), dtype=np.int64)
        ps, ts = p.sum(axis=(2, 3), dtype=np.int64), t.sum(axis=(2, 3), dtype=np.int64)
        denom = ps + ts
        dice = np.where(denom == 0, 1.0, 2.0 * inter / np.maximum(denom, 1))
        self._dice.extend(dice)
        self._present.extend(ts > 0)
        self.inter += inter.sum(axis=0)
        self.union += (denom - inter).sum(axis=0)
        p_bg, t_bg = ~p.any(axis=1), ~t.any(axis=1)
        self.bg_inter += int(np.logical_and(p_bg, t_bg).sum())
        self.bg_union += int(np.logical_or(p_bg, t_bg).sum())

    @property
    def n_images(self) -> int:
        return len(self._dice)

    def result(self, classes: Sequence[str] | None = None) -> dict:
        names = list(classes) if classes is not None else [f"class_{i + 1}" for i in range(self.k)]
        if len(names) != self.k:
            raise ValueError(f"{len(names)} class names for {self.k} classes")
        n = self.n_images
        dice = np.array(self._dice).reshape(n, self.k)
        present = np.array(self._present, bool).reshape(n, self.k)
        per_class = dice.mean(axis=0) if n else np.full(self.k, np.nan)
        iou = [float(i / u) if u else None for i, u in zip(self.inter, self.union)]
        defined = [v for v in iou if v is not None]
        bg_iou = float(self.bg_inter / self.bg_union) if self.bg_union else None
        return {
            "competition_dice": float(dice.mean()) if n else None,
            "per_class_dice": {c: float(v) if n else None for c, v in zip(names, per_class)},
            "per_class_dice_present": {
                c: float(dice[present[:, j], j].mean()) if present[:, j].any() else None
                for j, c in enumerate(names)
            },
            "per_class_iou": dict(zip(names, iou)),
            "mean_iou": float(np.mean(defined)) if defined else None,  # defect classes only
            "background_iou": bg_iou,
            # What NEU-Seg papers publish as mIoU: background counted as one more class.
            "miou_incl_background": float(np.mean(defined + [bg_iou])) if bg_iou is not None else None,
            "n_images": n,
        }


def score_masks(
    pred: np.ndarray | Iterable[np.ndarray], true: np.ndarray | Iterable[np.ndarray], classes: Sequence[str]
) -> dict:
    """Score predictions against truth: bool (N, K, H, W) arrays or iterables of (K, H, W)."""
    acc = DiceAccumulator(len(classes))
    if isinstance(pred, np.ndarray) and isinstance(true, np.ndarray):
        if pred.shape != true.shape:
            raise ValueError(f"pred {pred.shape} and true {true.shape} differ in shape")
        acc.update(pred, true)
    else:
        for i, (p, t) in enumerate(zip(pred, true, strict=True)):
            try:
                acc.update(p, t)
            except ValueError as e:
                raise ValueError(f"image {i}: {e}") from None
    return acc.result(classes)
