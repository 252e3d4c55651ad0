"""Per-class threshold and minimum component area, searched on validation.

The competition Dice is a mean over (image, class) pairs, so each class can be
tuned on its own: for every class pick the (threshold, min_area) pair with the
best score over the validation images. Objectives:
- "competition": mean pair Dice over all images (an absent class predicted empty
  scores 1), Severstal's metric. It rewards silence: a large minimum area that
  deletes every small true crack can still win, by removing false ones.
- "balanced": the mean of that and Dice on the images where the class is present,
  so finding defects counts as much as staying quiet on clean steel.
- "iou": the class's IoU over every pixel of the split, the per-class term of the
  mIoU that NEU-Seg papers publish (background's IoU moves with every class's
  choice, so it is not searched jointly).

Masks are made with the edge's own `inspect_edge.postprocess.masks_from_logits`,
so the service sees exactly what was calibrated. Streaming: logits are never all
held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from inspect_edge.postprocess import masks_from_logits
from inspect_edge.scoring import dice_pair

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Minimum areas as fractions of the frame: 256x1600 gives 0, 205, 410, 1024, 2048, 4096 px,
# the range Severstal's winners searched; a 200x200 frame scales down with it.
AREA_FRACTIONS = (0.0, 0.0005, 0.001, 0.0025, 0.005, 0.01)
OBJECTIVES = ("competition", "balanced", "iou")


def area_grid(frame_hw: tuple[int, int]) -> tuple[int, ...]:
    area = frame_hw[0] * frame_hw[1]
    return tuple(sorted({int(round(f * area)) for f in AREA_FRACTIONS}))


@dataclass
class CalibrationSearch:
    num_classes: int
    thresholds: tuple[float, ...]
    min_areas: tuple[int, ...]
    objective: str = "competition"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"calibration objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        shape = (self.num_classes, len(self.thresholds), len(self.min_areas))
        self.sums = np.zeros(shape, np.float64)
        self.present_sums = np.zeros(shape, np.float64)   # the same, over images where the class is present
        self.images_present = np.zeros(self.num_classes, np.int64)
        self.inter = np.zeros(shape, np.int64)   # pixels, pooled over the split ("iou" only)
        self.union = np.zeros(shape, np.int64)
        self.n = 0

    def update(self, logits: np.ndarray, true: np.ndarray) -> None:
        """One image: logits float (K, H, W), true bool (K, H, W)."""
        k = self.num_classes
        dice = np.empty(self.sums.shape)
        for ti, t in enumerate(self.thresholds):
            for ai, a in enumerate(self.min_areas):
                pred = masks_from_logits(logits, (t,) * k, (a,) * k)
                dice[:, ti, ai] = [dice_pair(pred[c], true[c]) for c in range(k)]
                if self.objective == "iou":
                    self.inter[:, ti, ai] += (pred & true).reshape(k, -1).sum(axis=1)
                    self.union[:, ti, ai] += (pred | true).reshape(k, -1).sum(axis=1)
        has = true.reshape(k, -1).any(axis=1)
        self.sums += dice
        self.present_sums[has] += dice[has]
        self.images_present += has
        self.n += 1

    def result(self, classes: tuple[str, ...]) -> dict:
        if self.n == 0:
            raise ValueError("calibration needs at least one validation image")
        mean = self.sums / self.n
        # A class present in no validation image has no present-image Dice: it is judged on pairs alone.
        seen = self.images_present[:, None, None]
        present = np.where(seen > 0, self.present_sums / np.maximum(seen, 1), mean)
        iou = np.where(self.union > 0, self.inter / np.maximum(self.union, 1), 1.0)  # nothing anywhere: perfect
        score = {"competition": mean, "balanced": (mean + present) / 2, "iou": iou}[self.objective]
        best_t, best_a, per_class = [], [], {}
        default = (self.thresholds.index(0.5) if 0.5 in self.thresholds else 0, 0)
        for c, name in enumerate(classes):
            flat = int(np.argmax(score[c]))  # first maximum: lowest threshold/area among ties
            ti, ai = np.unravel_index(flat, mean[c].shape)
            best_t.append(float(self.thresholds[ti]))
            best_a.append(int(self.min_areas[ai]))
            per_class[name] = {
                "threshold": best_t[-1],
                "min_area": best_a[-1],
                "dice": float(mean[c, ti, ai]),
                "dice_present": float(present[c, ti, ai]) if self.images_present[c] else None,
                "images_present": int(self.images_present[c]),
                "score": float(score[c, ti, ai]),
                "dice_at_default": float(mean[c][default]),
            }
            if self.objective == "iou":
                per_class[name]["iou"] = float(iou[c, ti, ai])
        return {
            "objective": self.objective,
            "score": float(np.mean([per_class[n]["score"] for n in classes])),
            "n_images": self.n,
            "thresholds_searched": list(self.thresholds),
            "min_areas_searched": list(self.min_areas),
            "thresholds": best_t,
            "min_areas": best_a,
            "per_class": per_class,
            "competition_dice": float(np.mean([per_class[n]["dice"] for n in classes])),
            "competition_dice_at_default": float(np.mean([per_class[n]["dice_at_default"] for n in classes])),
        }


def calibrate(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    classes: tuple[str, ...],
    frame_hw: tuple[int, int],
    thresholds: tuple[float, ...] = THRESHOLDS,
    objective: str = "competition",
) -> dict:
    search = CalibrationSearch(len(classes), tuple(thresholds), area_grid(frame_hw), objective)
    for logits, true in pairs:
        search.update(logits, true)
    return search.result(classes)
