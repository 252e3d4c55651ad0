"""From logits to defects: per-class thresholds, minimum areas, components.

Training calibration (`train/calibrate.py`) and the edge service both call these
functions, so the edge sees exactly the post-processing that was calibrated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from inspect_edge.model_info import ModelInfo


def prob_to_logit(p: float) -> float:
    # Thresholding on the logit scale is equivalent (sigmoid is monotonic) and
    # saves a full-frame exp per class on every frame.
    p = min(max(float(p), 1e-7), 1.0 - 1e-7)
    return math.log(p / (1.0 - p))


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components with fewer than `min_area` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if min_area <= 1 or not mask.any():
        return mask.copy()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    return keep[labels]


def masks_from_logits(logits: np.ndarray, thresholds, min_areas) -> np.ndarray:
    """(K, H, W) logits -> (K, H, W) bool masks after threshold and minimum area."""
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits: expected (K, H, W), got shape {logits.shape}")
    k = logits.shape[0]
    if len(thresholds) != k or len(min_areas) != k:
        raise ValueError(f"need {k} thresholds and min_areas, got {len(thresholds)} and {len(min_areas)}")
    out = np.empty(logits.shape, dtype=bool)
    for c in range(k):
        out[c] = remove_small_components(logits[c] >= prob_to_logit(thresholds[c]), int(min_areas[c]))
    return out


@dataclass(frozen=True)
class Defect:
    class_index: int
    class_name: str
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, width, height in frame pixels
    peak_prob: float
    frame_time: float  # capture time, seconds since the epoch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        return d


def find_defects(logits: np.ndarray, info: ModelInfo, frame_time: float = 0.0) -> list[Defect]:
    """Connected components that survive the model's thresholds and minimum areas."""
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] != info.num_classes:
        raise ValueError(f"logits: expected ({info.num_classes}, H, W), got shape {logits.shape}")
    defects: list[Defect] = []
    for c in range(info.num_classes):
        binary = logits[c] >= prob_to_logit(info.thresholds[c])
        if not binary.any():
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.view(np.uint8), connectivity=8)
        for j in range(1, n):
            area = int(stats[j, cv2.CC_STAT_AREA])
            if area < max(info.min_areas[c], 1):
                continue
            x, y, w, h = (int(v) for v in stats[j, :4])
            # Peak over the component only: a crop keeps this cheap on big frames.
            window = logits[c, y : y + h, x : x + w][labels[y : y + h, x : x + w] == j]
            defects.append(
                Defect(
                    class_index=c,
                    class_name=info.classes[c],
                    area_px=area,
                    bbox=(x, y, w, h),
                    peak_prob=float(sigmoid(window.max())),
                    frame_time=float(frame_time),
                )
            )
    return defects
