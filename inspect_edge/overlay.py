"""Drawing defects on frames: one palette for the live page, the stream and evidence."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from inspect_edge.postprocess import Defect

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies),
# as RGB; class k gets colour k, cycling for models with more classes.
PALETTE_RGB = (
    (230, 159, 0),    # orange
    (86, 180, 233),   # sky blue
    (0, 158, 115),    # bluish green
    (240, 228, 66),   # yellow
    (213, 94, 0),     # vermillion
    (204, 121, 167),  # reddish purple
    (0, 114, 178),    # blue
)


def class_color_rgb(k: int) -> tuple[int, int, int]:
    return PALETTE_RGB[k % len(PALETTE_RGB)]


def class_color_hex(k: int) -> str:
    return "#%02x%02x%02x" % class_color_rgb(k)


def _bgr(k: int) -> tuple[int, int, int]:
    r, g, b = class_color_rgb(k)
    return (b, g, r)


def render_overlay(gray: np.ndarray, masks: np.ndarray, defects: list[Defect], alpha: float = 0.45,
                   labels: bool = True) -> np.ndarray:
    """BGR image: the frame, each class's mask tinted in its colour, boxes around defects."""
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    for k in range(masks.shape[0]):
        m = masks[k]
        if not m.any():
            continue
        colour = np.array(_bgr(k), np.float32)
        img[m] = (img[m].astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)
    for d in defects:
        x, y, w, h = d.bbox
        cv2.rectangle(img, (x - 2, y - 2), (x + w + 1, y + h + 1), _bgr(d.class_index), 2)
    if labels:
        for d, text, (tx, ty) in label_positions(defects, gray.shape[:2]):
            cv2.putText(img, text, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(img, text, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _bgr(d.class_index), 1, cv2.LINE_AA)
    return img


def render_preview(gray: np.ndarray, masks: np.ndarray, defects: list[Defect], max_width: int | None) -> np.ndarray:
    """The overlay for the live stream: drawn on the frame scaled down to `max_width` first, so
    a wide strip costs a fraction of the drawing and encoding (evidence keeps the full frame)."""
    h, w = gray.shape[:2]
    if not max_width or w <= max_width:
        return render_overlay(gray, masks, defects)
    s = max_width / w
    size = (max_width, max(1, round(h * s)))
    small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    small_masks = np.stack([cv2.resize(m.view(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for m in masks]) \
        if len(masks) else masks
    scaled = [dataclasses.replace(d, bbox=tuple(max(0, round(v * s)) for v in d.bbox[:2]) +
                                  tuple(max(1, round(v * s)) for v in d.bbox[2:])) for d in defects]
    return render_overlay(small, small_masks, scaled)


def label_positions(defects: list[Defect], shape: tuple[int, int]) -> list[tuple[Defect, str, tuple[int, int]]]:
    """Where each label goes (text baseline origin), so that no two labels overlap.

    Above the box, else below it, else stacked further down; a label with no free
    place is left out (its box and colour still say what it is). The surest
    defects are placed first.
    """
    H, W = shape
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for d in sorted(defects, key=lambda d: -d.peak_prob):
        x, y, w, h = d.bbox
        text = f"{d.class_name} {d.peak_prob:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        tx = max(0, min(x, W - tw))
        for ty in (y - 6, *(y + h + th + 6 + k * (th + 6) for k in range(4))):
            rect = (tx, ty - th - 2, tw, th + 6)
            if rect[1] >= 0 and rect[1] + rect[3] <= H and not any(_overlaps(rect, r) for r in placed):
                placed.append(rect)
                out.append((d, text, (tx, ty)))
                break
    return out


def _overlaps(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def crop_around(image: np.ndarray, bbox: tuple[int, int, int, int], margin: int = 12,
                max_side: int = 160) -> np.ndarray:
    """A small view of one defect with some context, at most `max_side` pixels on its long side."""
    x, y, w, h = bbox
    H, W = image.shape[:2]
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(W, x + w + margin), min(H, y + h + margin)
    crop = image[y0:y1, x0:x1]
    scale = max_side / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(crop, (max(1, int(crop.shape[1] * scale)), max(1, int(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def encode_mask_png(masks: np.ndarray) -> bytes:
    """(K, H, W) bool as one PNG, lossless: bit k set where class k is present.

    8-bit for up to 8 classes, 16-bit for up to 16; more classes than a PNG
    channel has bits is refused with the count (callers write masks another way).
    """
    k_count = masks.shape[0]
    if k_count > 16:
        raise ValueError(f"mask PNG holds at most 16 classes, got {k_count}")
    dtype = np.uint8 if k_count <= 8 else np.uint16
    packed = np.zeros(masks.shape[1:], dtype)
    for k in range(k_count):
        packed |= masks[k].astype(dtype) << k
    ok, buf = cv2.imencode(".png", packed)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
