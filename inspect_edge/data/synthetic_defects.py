"""Defect painters for synthetic steel strips, one per class (Severstal ClassId order).

Each painter returns a local stamp: `(y0, x0, mask, delta)` where `mask` is bool (h, w)
and `delta` float32 (h, w) is the intensity change, non-zero only inside the mask. The
caller adds delta through the mask, so the mask is exactly the painted defect.
The rolling direction is x (image width); scratches run along it.
"""

from __future__ import annotations

import cv2
import numpy as np

Stamp = tuple[int, int, np.ndarray, np.ndarray]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in about [-1, 1] with features ~`cell` px, float32 (h, w)."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    small = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * 0.6


def _place(rng: np.random.Generator, size: int, extent: int) -> int:
    """Offset for a stamp of `size` so that at least a third of it lands inside `extent`."""
    lo = -size // 3
    return int(rng.integers(lo, max(lo + 1, extent - 2 * size // 3)))


def _contrast(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _as_annotated(painted: np.ndarray, margin: int) -> np.ndarray:
    """The label a person would draw around thin marks: the painted pixels grown by `margin`.

    Severstal's annotators outline defects loosely; a label exactly on 1-3 px marks
    is one no small model learns (the built-in model scored Dice 0 on pits and cracks
    with pixel-exact labels) and one no camera resolves that finely.
    """
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    return cv2.dilate(painted.view(np.uint8), k).astype(bool)


def paint_pits(rng: np.random.Generator, h: int, w: int) -> Stamp:
    """Class 1: small pits and spots in a cluster (dark, sometimes with a bright rim)."""
    rx, ry = rng.uniform(8, 70) * min(1.0, w / 400), rng.uniform(6, 35) * min(1.0, h / 128)
    bw, bh = int(2 * rx + 12), int(2 * ry + 12)
    delta = np.zeros((bh, bw), np.float32)
    base = _contrast(rng, 35, 85)
    n = int(rng.integers(3, 30))
    for _ in range(n):
        # Spots crowd towards the cluster centre.
        px = bw / 2 + rng.normal(0, rx / 2)
        py = bh / 2 + rng.normal(0, ry / 2)
        ax = float(rng.uniform(0.8, 4.5))
        ay = float(np.clip(ax * rng.uniform(0.5, 1.3), 0.8, 5))
        depth = -base * rng.uniform(0.6, 1.2)
        center = (int(np.clip(px, 6, bw - 7)), int(np.clip(py, 6, bh - 7)))
        cv2.ellipse(delta, center, (max(1, round(ax)), max(1, round(ay))), float(rng.uniform(0, 180)), 0, 360,
                    float(depth), -1)
        if ax > 2.5 and rng.random() < 0.3:  # a darker core
            cv2.circle(delta, center, max(1, round(ax / 2)), float(depth * 1.5), -1)
    y0, x0 = _place(rng, bh, h), _place(rng, bw, w)
    return y0, x0, _as_annotated(delta != 0, 2), delta


def paint_crack(rng: np.random.Generator, h: int, w: int) -> Stamp:
    """Class 2: a thin jagged crack, mostly across the rolling direction, sometimes branched."""
    length = rng.uniform(30, 200) * min(1.0, h / 256)
    bw = bh = int(2 * length + 10)
    delta = np.zeros((bh, bw), np.float32)
    heading = rng.normal(np.pi / 2, 0.6) * (1 if rng.random() < 0.5 else -1)
    contrast = -_contrast(rng, 40, 90)

    def walk(x: float, y: float, theta: float, n_len: float) -> None:
        pts = [(x, y)]
        travelled = 0.0
        while travelled < n_len:
            theta += rng.normal(0, 0.35)
            step = rng.uniform(2, 6)
            x, y = x + step * np.cos(theta), y + step * np.sin(theta)
            pts.append((x, y))
            travelled += step
            if rng.random() < 0.04 and n_len > 20:
                walk(x, y, theta + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2), n_len * rng.uniform(0.2, 0.5))
        arr = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(delta, [arr], False, float(contrast * rng.uniform(0.8, 1.1)), int(rng.choice([1, 2, 2, 3])))

    walk(bw / 2, bh / 2, heading, length)
    y0, x0 = _place(rng, bh, h), _place(rng, bw, w)
    return y0, x0, _as_annotated(delta != 0, 2), delta


def paint_scratches(rng: np.random.Generator, h: int, w: int) -> Stamp:
    """Class 3: long scratches along the rolling direction, alone or in bundles."""
    length = int(rng.uniform(0.1, 0.8) * w) + 40
    lines = 1 if rng.random() < 0.4 else int(rng.integers(2, 9))
    spread = 0 if lines == 1 else int(rng.uniform(4, 14) * lines)
    slope = rng.normal(0, 0.03)
    bw = length + 20
    bh = int(abs(slope) * length + spread + 24)
    delta = np.zeros((bh, bw), np.float32)
    sign = 1.0 if rng.random() < 0.55 else -1.0  # bright (polished) or dark (gouged)
    contrast = _contrast(rng, 25, 70)
    y_start = 10 + (abs(slope) * length if slope < 0 else 0)
    for _ in range(lines):
        ly = y_start + rng.uniform(0, spread)
        lx0 = int(rng.uniform(0, 0.3) * length) if lines > 1 else 0
        lx1 = length - (int(rng.uniform(0, 0.3) * length) if lines > 1 else 0)
        xs = np.arange(lx0 + 10, max(lx0 + 12, lx1 + 10), 8, dtype=np.float32)
        wobble = rng.uniform(0, 2.0) * np.sin(xs / rng.uniform(60, 300) + rng.uniform(0, 6.3))
        ys = ly + slope * (xs - 10) + wobble
        pts = np.stack([xs, ys], axis=1).round().astype(np.int32).reshape(-1, 1, 2)
        thick = int(rng.choice([1, 1, 2, 2, 3]))
        cv2.polylines(delta, [pts], False, float(sign * contrast * rng.uniform(0.6, 1.1)), thick)
    # Scratches fade in and out along their length; 0.5 floor keeps every masked pixel visible.
    fade = 0.5 + 0.5 * np.clip(_smooth_noise(rng, 1, bw, 80)[0] + 0.5, 0, 1)
    delta *= fade[None, :]
    y0, x0 = _place(rng, bh, h), _place(rng, bw, w)
    return y0, x0, delta != 0, delta


def paint_patch(rng: np.random.Generator, h: int, w: int) -> Stamp:
    """Class 4: a large irregular patch of scale, elongated along rolling, mottled inside."""
    lo = min(60.0, 0.3 * w)
    bw = int(rng.uniform(lo, max(lo + 1, min(500, w))))
    bh = int(np.clip(bw * rng.uniform(0.25, 0.8), 20, 0.85 * h))
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    r = np.sqrt(((xx - bw / 2) / (bw / 2)) ** 2 + ((yy - bh / 2) / (bh / 2)) ** 2)
    edge = _smooth_noise(rng, bh, bw, max(8.0, min(bw, bh) / 4)) * 0.45
    mask = (1.0 - r + edge) > 0.15
    inside = 0.7 + 0.3 * _smooth_noise(rng, bh, bw, rng.uniform(4, 14))
    # Strongest in the middle, weaker towards the rim (never zero inside the mask), so the
    # patch reads as scale grown into the surface rather than a pasted shape.
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    ramp = np.clip(dist / rng.uniform(3, 12), 0.3, 1.0)
    grit = rng.standard_normal((bh, bw), dtype=np.float32) * rng.uniform(0.05, 0.2)
    sign = -1.0 if rng.random() < 0.75 else 1.0
    strength = sign * _contrast(rng, 18, 55) * np.clip(inside + grit, 0.3, 1.4) * ramp
    delta = np.where(mask, strength, 0).astype(np.float32)
    if rng.random() < 0.5:  # rolled-in scale: a few darker flakes inside the patch
        flakes = (_smooth_noise(rng, bh, bw, 5) > 0.5) & mask
        delta[flakes] -= _contrast(rng, 10, 30)
    y0, x0 = _place(rng, bh, h), _place(rng, bw, w)
    return y0, x0, delta != 0, delta


PAINTERS = (paint_pits, paint_crack, paint_scratches, paint_patch)
