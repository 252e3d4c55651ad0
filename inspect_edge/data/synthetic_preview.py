"""A picture of strips with their masks: each strip plain, then with masks overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

# BGR, one per class; chosen to stay distinct on gray steel.
CLASS_COLOURS = ((60, 60, 255), (0, 200, 255), (255, 160, 0), (200, 0, 220), (0, 220, 0), (255, 255, 255))


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Gray uint8 (H, W) + bool (K, H, W) -> BGR uint8 with tinted masks and outlines."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR).astype(np.float32)
    outlines = []
    for k, m in enumerate(masks):
        if not m.any():
            continue
        colour = np.array(CLASS_COLOURS[k % len(CLASS_COLOURS)], np.float32)
        out[m] = out[m] * (1 - alpha) + colour * alpha
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outlines.append((contours, tuple(int(c) for c in colour)))
    out = out.astype(np.uint8)
    for contours, colour in outlines:
        cv2.drawContours(out, contours, -1, colour, 1)
    return out


def render_preview(
    path: str | Path, strips: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[str], title: str = ""
) -> Path:
    """Write a PNG: per strip, the plain image above the same image with masks overlaid."""
    if not strips:
        raise ValueError("render_preview: no strips")
    w = strips[0][0].shape[1]
    gap = np.full((6, w, 3), 255, np.uint8)
    rows = []
    for image, masks in strips:
        present = [classes[k] for k in range(len(classes)) if masks[k].any()]
        label = ", ".join(present) if present else "defect-free"
        plain = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        over = overlay(image, masks)
        cv2.putText(over, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 3, cv2.LINE_AA)
        cv2.putText(over, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (20, 20, 20), 1, cv2.LINE_AA)
        rows += [plain, over, gap]
    legend = np.full((40, w, 3), 255, np.uint8)
    x = 10
    for k, name in enumerate(classes):
        cv2.rectangle(legend, (x, 12), (x + 18, 30), CLASS_COLOURS[k % len(CLASS_COLOURS)], -1)
        cv2.putText(legend, name, (x + 26, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        x += 40 + 12 * len(name)
    if title:
        cv2.putText(legend, title, (x + 20, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (80, 80, 80), 1, cv2.LINE_AA)
    sheet = np.concatenate([legend, *rows[:-1]], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"{path}: cannot write preview PNG")
    return path
