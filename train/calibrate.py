"""Per-class threshold and minimum component area, searched on validation.

The competition Dice is a mean over (image, class) pairs, so each class can be
tuned on its own: for every class pick the (threshold, min_area) pair with the
best mean pair Dice over the validation images. Masks are made with the edge's
own `inspect_edge.postprocess.masks_from_logits`, so the service sees exactly
what was calibrated. Streaming: logits are never all held in memory.
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


def area_grid(frame_hw: tuple[int, int]) -> tuple[int, ...]:
    area = frame_hw[0] * frame_hw[1]
    return tuple(sorted({int(round(f * area)) for f in AREA_FRACTIONS}))


@dataclass
class CalibrationSearch:
    num_classes: int
    thresholds: tuple[float, ...]
    min_areas: tuple[int, ...]

    def __post_init__(self) -> None:
        self.sums = np.zeros((self.num_classes, len(self.thresholds), len(self.min_areas)), np.float64)
        self.n = 0

    def update(self, logits: np.ndarray, true: np.ndarray) -> None:
        """One image: logits float (K, H, W), true bool (K, H, W)."""
        k = self.num_classes
        for ti, t in enumerate(self.thresholds):
            for ai, a in enumerate(self.min_areas):
                pred = masks_from_logits(logits, (t,) * k, (a,) * k)
                for c in range(k):
                    self.sums[c, ti, ai] += dice_pair(pred[c], true[c])
        self.n += 1

    def result(self, classes: tuple[str, ...]) -> dict:
        if self.n == 0:
            raise ValueError("calibration needs at least one validation image")
        mean = self.sums / self.n
        best_t, best_a, per_class = [], [], {}
        default = (self.thresholds.index(0.5) if 0.5 in self.thresholds else 0, 0)
        for c, name in enumerate(classes):
            flat = int(np.argmax(mean[c]))  # first maximum: lowest threshold/area among ties
            ti, ai = np.unravel_index(flat, mean[c].shape)
            best_t.append(float(self.thresholds[ti]))
            best_a.append(int(self.min_areas[ai]))
            per_class[name] = {
                "threshold": best_t[-1],
                "min_area": best_a[-1],
                "dice": float(mean[c, ti, ai]),
                "dice_at_default": float(mean[c][default]),
            }
        return {
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
) -> dict:
    search = CalibrationSearch(len(classes), tuple(thresholds), area_grid(frame_hw))
    for logits, true in pairs:
        search.update(logits, true)
    return search.result(classes)
