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


# Flagged columns closer than this share one labelling window: fewer OpenCV calls
# for speckle, while windows stay far smaller than one box around everything.
BAND_GAP = 16


@dataclass(frozen=True)
class _Window:
    """Components labelled inside one window of the frame (labels/stats relative to it)."""

    y0: int
    x0: int
    roi: np.ndarray      # bool, the flagged pixels of the window
    labels: np.ndarray
    stats: np.ndarray
    keep: np.ndarray     # keep[j]: component j survives the minimum area (keep[0], background, is False)

    @property
    def box(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.roi.shape[0]), slice(self.x0, self.x0 + self.roi.shape[1])

    def kept_mask(self) -> np.ndarray:
        # Most windows keep every component: their mask is the flagged pixels themselves.
        return self.roi if self.keep[1:].all() else self.keep[self.labels]


def _kept_components(binary: np.ndarray, min_area: int) -> list[_Window]:
    """Components of `binary` with at least `min_area` pixels, window by window.

    An 8-connected component cannot cross an empty column, so the flagged columns
    split the frame into bands labelled on their own, each cropped to its flagged
    rows. On a real frame defects cover a small part of it, and labelling the whole
    frame (or one box around sparse speckle) per class dominated post-processing.
    Only windows with a surviving component are returned.
    """
    cols = np.flatnonzero(binary.any(axis=0))
    if cols.size == 0:
        return []
    splits = np.flatnonzero(np.diff(cols) > BAND_GAP) + 1
    area = max(int(min_area), 1)
    out = []
    for band in np.split(cols, splits):
        x0, x1 = int(band[0]), int(band[-1]) + 1
        strip = binary[:, x0:x1]
        rows = np.flatnonzero(strip.any(axis=1))
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        roi = np.ascontiguousarray(strip[y0:y1])
        if int(np.count_nonzero(roi)) < area:
            continue
        _, labels, stats, _ = cv2.connectedComponentsWithStats(roi.view(np.uint8), connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= area
        keep[0] = False  # label 0 is the background
        if keep.any():
            out.append(_Window(y0, x0, roi, labels, stats, keep))
    return out


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components with fewer than `min_area` pixels."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    for win in _kept_components(mask, min_area):
        out[win.box] = win.kept_mask()
    return out


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
    return analyse_logits(logits, info, frame_time)[1]


def analyse_logits(logits: np.ndarray, info: ModelInfo, frame_time: float = 0.0) -> tuple[np.ndarray, list[Defect]]:
    """Masks and defects of one frame from a single components pass per class."""
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[0] != info.num_classes:
        raise ValueError(f"logits: expected ({info.num_classes}, H, W), got shape {logits.shape}")
    masks = np.zeros(logits.shape, dtype=bool)
    defects: list[Defect] = []
    for c in range(info.num_classes):
        for win in _kept_components(logits[c] >= prob_to_logit(info.thresholds[c]), info.min_areas[c]):
            masks[c][win.box] = win.kept_mask()
            class_logits = logits[c][win.box]
            for j in np.flatnonzero(win.keep):
                x, y, w, h = (int(v) for v in win.stats[j, :4])
                # Peak over the component's own pixels, searched in its bounding box only.
                member = (win.labels[y : y + h, x : x + w] == j).view(np.uint8)
                _, peak, _, _ = cv2.minMaxLoc(np.ascontiguousarray(class_logits[y : y + h, x : x + w], np.float32), member)
                defects.append(
                    Defect(
                        class_index=c,
                        class_name=info.classes[c],
                        area_px=int(win.stats[j, cv2.CC_STAT_AREA]),
                        bbox=(x + win.x0, y + win.y0, w, h),
                        peak_prob=float(sigmoid(peak)),
                        frame_time=float(frame_time),
                    )
                )
    return masks, defects


def mask_dice_between(ref_logits: np.ndarray, cand_logits: np.ndarray, info: ModelInfo) -> tuple[dict, dict]:
    """How far two runtimes agree once their (N, K, H, W) logits become masks.

    Returns per-class Dice between the two mask sets (1.0 when both are empty) and
    per-class positive pixel counts [reference, candidate], so a caller can say when
    a Dice of 1 is trivial rather than evidence.
    """
    k = info.num_classes
    inter, size_ref, size_cand = np.zeros(k), np.zeros(k, np.int64), np.zeros(k, np.int64)
    for a, b in zip(ref_logits, cand_logits):
        ma = masks_from_logits(a, info.thresholds, info.min_areas)
        mb = masks_from_logits(b, info.thresholds, info.min_areas)
        inter += (ma & mb).sum(axis=(1, 2))
        size_ref += ma.sum(axis=(1, 2))
        size_cand += mb.sum(axis=(1, 2))
    dice, positive = {}, {}
    for c, name in enumerate(info.classes):
        total = size_ref[c] + size_cand[c]
        dice[name] = 1.0 if total == 0 else float(2 * inter[c] / total)
        positive[name] = [int(size_ref[c]), int(size_cand[c])]
    return dice, positive
