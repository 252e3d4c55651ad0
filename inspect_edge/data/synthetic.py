"""Synthetic rolled-steel strips in Severstal's format: the project's built-in data.

Real Severstal images cannot be redistributed, so strips are made here: a material
texture (rolling streaks along x, mill-scale mottling), defects painted through their
masks (see `synthetic_defects`), then a camera-fixed uneven illumination and sensor
grain. Defects painted later cover earlier ones, and the earlier masks lose those
pixels, so every mask is exactly where its defect is visible.

Deterministic for a seed: everything random comes from the `numpy.random.Generator`
passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inspect_edge.data.synthetic_defects import PAINTERS, _smooth_noise

SYNTH_CLASSES = ("pits", "cracks", "scratches", "patches")


@dataclass
class StripConfig:
    height: int = 256
    width: int = 1600
    defect_free_share: float = 0.5
    max_defects: int = 4
    # Relative frequency of each class among painted defects (Severstal: scratches dominate).
    class_weights: tuple[float, float, float, float] = (0.25, 0.15, 0.4, 0.2)
    grain: float = 2.5  # sensor noise, gray levels (std)
    x_margin: int = 0  # keep defects this far from the left/right ends (MovingStrip seams)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"strip size must be at least 16x16, got {self.width}x{self.height}")
        if not 0.0 <= self.defect_free_share <= 1.0:
            raise ValueError(f"defect_free_share must be in [0, 1], got {self.defect_free_share}")
        if self.max_defects < 1:
            raise ValueError(f"max_defects must be >= 1, got {self.max_defects}")
        if len(self.class_weights) != 4 or min(self.class_weights) < 0 or sum(self.class_weights) <= 0:
            raise ValueError(f"class_weights: need 4 non-negative weights, got {self.class_weights}")


def material(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Bare rolled steel without lighting: float32 (h, w), gray levels around 100-150."""
    img = np.full((h, w), rng.uniform(100, 150), np.float32)
    # Rolling streaks: noise that varies fast across the strip (y) and slowly along it (x).
    for cells_x, amp in ((max(2, w // 300), rng.uniform(4, 9)), (max(2, w // 40), rng.uniform(2, 5))):
        small = rng.standard_normal((h, cells_x), dtype=np.float32)
        small = cv2.GaussianBlur(small, (1, 3), 0, sigmaY=rng.uniform(0.6, 1.5))
        img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * amp
    # Mill-scale mottling: isotropic blotches at two scales, squashed so they look patchy.
    mottle = _smooth_noise(rng, h, w, rng.uniform(14, 30)) + 0.6 * _smooth_noise(rng, h, w, rng.uniform(4, 8))
    img += np.tanh(mottle * 1.5) * rng.uniform(2.5, 6)
    # Fine structure along rolling: short bright/dark dashes a pixel high.
    dashes = rng.standard_normal((h, max(2, w // 12)), dtype=np.float32)
    img += cv2.resize(dashes, (w, h), interpolation=cv2.INTER_LINEAR) * rng.uniform(1, 3)
    return img


def illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Camera-fixed multiplicative light: a bright band across the strip, lamps along it."""
    y = np.linspace(-1, 1, h, dtype=np.float32)
    x = np.linspace(-1, 1, w, dtype=np.float32)
    centre, width = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 1.4)
    across = 0.7 + 0.4 * np.exp(-(((y - centre) / width) ** 2)) + rng.uniform(-0.1, 0.1) * y
    lamps = int(rng.integers(2, 6))
    along = 1.0 + rng.uniform(0.03, 0.12) * np.cos(np.pi * lamps * (x + rng.uniform(-1, 1)))
    along *= 1.0 - rng.uniform(0, 0.2) * x**2  # vignetting towards the ends
    return (across[:, None] * along[None, :]).astype(np.float32)


def paint_defects(rng: np.random.Generator, img: np.ndarray, cfg: StripConfig) -> np.ndarray:
    """Paint 1..max_defects defects into `img` (in place); returns bool masks (4, H, W)."""
    h, w = img.shape
    masks = np.zeros((len(SYNTH_CLASSES), h, w), bool)
    weights = np.asarray(cfg.class_weights, float)
    n = min(cfg.max_defects, int(rng.geometric(0.55)))
    lo, hi = cfg.x_margin, w - cfg.x_margin
    for _ in range(n):
        c = int(rng.choice(len(SYNTH_CLASSES), p=weights / weights.sum()))
        y0, x0, m, d = PAINTERS[c](rng, h, hi - lo)
        x0 += lo
        # Clip the stamp to the image (and to the margins).
        ya, yb = max(0, y0), min(h, y0 + m.shape[0])
        xa, xb = max(lo, x0), min(hi, x0 + m.shape[1])
        if ya >= yb or xa >= xb:
            continue
        m = m[ya - y0 : yb - y0, xa - x0 : xb - x0]
        if not m.any():
            continue
        d = d[ya - y0 : yb - y0, xa - x0 : xb - x0]
        region = img[ya:yb, xa:xb]
        region[m] += d[m]
        # The newest defect is what is visible: earlier masks give up these pixels.
        masks[:, ya:yb, xa:xb] &= ~m
        masks[c, ya:yb, xa:xb] |= m
    return masks


def finish(rng: np.random.Generator, img: np.ndarray, light: np.ndarray, grain: float) -> np.ndarray:
    """Lighting and sensor grain; float material -> uint8 camera image."""
    out = img * light
    out += rng.standard_normal(out.shape, dtype=np.float32) * grain
    return np.clip(out, 0, 255).astype(np.uint8)


def generate_strip(rng: np.random.Generator, cfg: StripConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One strip: image uint8 (H, W) and masks bool (4, H, W); about `defect_free_share` are clean."""
    cfg = cfg or StripConfig()
    cfg.validate()
    h, w = cfg.height, cfg.width
    img = material(rng, h, w)
    if rng.random() < cfg.defect_free_share:
        masks = np.zeros((len(SYNTH_CLASSES), h, w), bool)
    else:
        # A defect can fall off the edge; retry so a "defective" strip really has one.
        for _ in range(5):
            masks = paint_defects(rng, img, cfg)
            if masks.any():
                break
    return finish(rng, img, illumination(rng, h, w), cfg.grain), masks


class MovingStrip:
    """An endless strip moving under a fixed camera along the rolling direction (x).

    The strip is built from material tiles cross-faded over `seam` columns (defects stay
    out of the seams, so masks remain exact); lighting is fixed to the camera, grain is
    fresh every frame. Content moves right to left: defects enter on the right.
    """

    def __init__(
        self,
        frame_height: int = 256,
        frame_width: int = 1600,
        speed_px: int = 40,
        seed: int = 0,
        defect_free_share: float = 0.5,
        grain: float = 2.5,
        seam: int = 64,
    ):
        if speed_px < 1:
            raise ValueError(f"speed_px must be >= 1, got {speed_px}")
        self.h, self.w = int(frame_height), int(frame_width)
        self.speed = int(speed_px)
        self.seam = int(seam)
        self.grain = grain
        self._rng = np.random.default_rng(seed)
        self._tile_cfg = StripConfig(
            height=self.h, width=max(self.w, 4 * self.seam, 512),
            defect_free_share=defect_free_share, x_margin=self.seam,
        )
        self._tile_cfg.validate()
        self._light = illumination(self._rng, self.h, self.w)
        self._img = np.zeros((self.h, 0), np.float32)
        self._masks = np.zeros((len(SYNTH_CLASSES), self.h, 0), bool)
        self._x = 0  # buffer column shown at the left edge of the next frame
        self.frames = 0

    def _append_tile(self) -> None:
        cfg = self._tile_cfg
        img = material(self._rng, cfg.height, cfg.width)
        if self._rng.random() < cfg.defect_free_share:
            masks = np.zeros((len(SYNTH_CLASSES), cfg.height, cfg.width), bool)
        else:
            masks = paint_defects(self._rng, img, cfg)
        s = self.seam
        if self._img.shape[1] >= s:
            t = np.linspace(0, 1, s, dtype=np.float32)[None, :]
            self._img[:, -s:] = self._img[:, -s:] * (1 - t) + img[:, :s] * t
            img, masks = img[:, s:], masks[:, :, s:]
        self._img = np.concatenate([self._img, img], axis=1)
        self._masks = np.concatenate([self._masks, masks], axis=2)

    def next_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H, W), masks bool (4, H, W)) of the view, then move on by speed_px."""
        # Keep a seam's worth beyond the view so the next tile's fade never touches shown columns.
        while self._img.shape[1] - self._x < self.w + self.seam:
            self._append_tile()
        x = self._x
        image = finish(self._rng, self._img[:, x : x + self.w], self._light, self.grain)
        masks = self._masks[:, :, x : x + self.w].copy()
        self._x += self.speed
        if self._x > 4 * self._tile_cfg.width:  # drop what has left the view
            self._img = self._img[:, self._x :]
            self._masks = self._masks[:, :, self._x :]
            self._x = 0
        self.frames += 1
        return image, masks


def write_video(path: str | Path, moving_strip: MovingStrip, n_frames: int, fps: float = 25.0) -> Path:
    """Write `n_frames` of the moving strip as a video (.mp4 with mp4v, .avi with MJPG)."""
    path = Path(path)
    fourcc = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}.get(path.suffix.lower())
    if fourcc is None:
        raise ValueError(f"{path}: video must end in .mp4, .avi or .mkv")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (moving_strip.w, moving_strip.h)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
    if not writer.isOpened():
        raise OSError(f"{path}: cannot open a {fourcc} video writer")
    try:
        for _ in range(n_frames):
            image, _ = moving_strip.next_frame()
            writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    finally:
        writer.release()
    return path
