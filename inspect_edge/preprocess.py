"""Fit any grayscale frame to the model's fixed input, and map logits back.

Two ways to fit (`fit`):
- "tile" (default): no scaling, so defects keep the pixel size the model was
  trained at. Each axis shorter than the model is padded (edge pixels
  replicated, so the border does not look like a dark defect); each axis longer
  than the model is cut into overlapping tiles. A 256 x 1600 strip frame on a
  256 x 512 model becomes 4 tiles, one batch. Overlaps are averaged back.
- "resize": the whole frame squeezed to the model input; logits are resized back.

Normalisation follows ModelInfo: (u / 255 - mean) / std, as float32, with the
gray channel repeated for 3-channel models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from inspect_edge.model_info import ModelInfo

FitMode = Literal["tile", "resize"]


def normalise_unit(images01: np.ndarray, mean: float, std: float, channels: int = 1) -> np.ndarray:
    """(..., H, W) grey levels already scaled to [0, 1] -> float32 (x - mean) / std with a
    channel axis of `channels` inserted before (H, W). The one formula of the ModelInfo
    contract: training crops (after jitter), feature nets and `normalise` all use it."""
    x = (np.asarray(images01, np.float32) - np.float32(mean)) / np.float32(std)
    return np.repeat(np.expand_dims(x, -3), channels, axis=-3)


def normalise(images_u8: np.ndarray, info: ModelInfo) -> np.ndarray:
    """(N, H, W) uint8 -> (N, C, H, W) float32 per the ModelInfo contract: what training,
    export parity and the bench feed a model. (The service's Preprocessor does the same
    arithmetic in place into a reused buffer.)"""
    return normalise_unit(np.asarray(images_u8).astype(np.float32) / 255.0, info.mean, info.std, info.input_channels)


def pad_bottom_right(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Grow a (H, W) frame to at least (height, width) by replicating its last row and
    column: the one padding of the project (a constant border reads as a dark or bright
    defect along the edge). Training crops, the edge pre-processing and the model's own
    padding to a multiple of 32 all pad this way."""
    h, w = image.shape[:2]
    ph, pw = max(0, height - h), max(0, width - w)
    if not (ph or pw):
        return image
    return np.pad(image, ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2), mode="edge")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, evenly spread, overlapping >= `overlap`."""
    if length <= tile:
        return [0]
    overlap = min(max(overlap, 0), tile - 1)
    n = math.ceil((length - overlap) / (tile - overlap))
    if n == 1:
        return [0]
    step = (length - tile) / (n - 1)
    return [round(i * step) for i in range(n)]


@dataclass(frozen=True)
class FramePlan:
    frame_shape: tuple[int, int]      # (H, W) of the frame as captured
    padded_shape: tuple[int, int]     # after padding short axes (tile mode)
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    fit: str

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


class Preprocessor:
    """Used by one inference thread only: the batch buffer is reused frame after frame."""

    def __init__(self, info: ModelInfo, fit: FitMode = "tile", overlap: int = 32) -> None:
        if fit not in ("tile", "resize"):
            raise ValueError(f"fit: must be 'tile' or 'resize', got {fit!r}")
        self.info = info
        self.fit = fit
        self.overlap = overlap
        self._plans: dict[tuple[int, int], FramePlan] = {}
        self._buffer: np.ndarray | None = None
        self._scale = 1.0 / (255.0 * info.std)
        self._offset = info.mean / info.std

    def plan(self, shape: tuple[int, int]) -> FramePlan:
        plan = self._plans.get(shape)
        if plan is None:
            h, w = shape
            mh, mw = self.info.input_height, self.info.input_width
            if self.fit == "resize":
                plan = FramePlan((h, w), (mh, mw), (0,), (0,), "resize")
            else:
                plan = FramePlan((h, w), (max(h, mh), max(w, mw)),
                                 tuple(tile_starts(h, mh, self.overlap)),
                                 tuple(tile_starts(w, mw, self.overlap)), "tile")
            self._plans[shape] = plan
        return plan

    def to_batch(self, gray: np.ndarray) -> tuple[np.ndarray, FramePlan]:
        """uint8 (H, W) -> float32 (tiles, C, model_h, model_w) and the plan to stitch it back."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError(f"frame: expected uint8 (H, W) grayscale, got {gray.dtype} {gray.shape}")
        plan = self.plan(gray.shape)
        mh, mw, c = self.info.input_height, self.info.input_width, self.info.input_channels
        n = plan.num_tiles
        if self._buffer is None or self._buffer.shape[0] != n:
            self._buffer = np.empty((n, c, mh, mw), np.float32)
        out = self._buffer
        if plan.fit == "resize":
            src = cv2.resize(gray, (mw, mh), interpolation=cv2.INTER_AREA)
        else:
            ph, pw = plan.padded_shape
            src = pad_bottom_right(gray, ph, pw)
        i = 0
        for y in plan.ys:
            for x in plan.xs:
                # One fused multiply-add per tile, written straight into the batch.
                np.multiply(src[y:y + mh, x:x + mw], self._scale, out=out[i, 0], casting="unsafe")
                out[i, 0] -= self._offset
                i += 1
        if c == 3:
            out[:, 1] = out[:, 0]
            out[:, 2] = out[:, 0]
        return out, plan

    def stitch(self, logits: np.ndarray, plan: FramePlan) -> np.ndarray:
        """(tiles, K, model_h, model_w) -> (K, H, W) logits in frame pixels."""
        info = self.info
        want = (plan.num_tiles, info.num_classes, info.input_height, info.input_width)
        if logits.ndim != 4 or logits.shape[0] != plan.num_tiles:
            raise ValueError(f"model output: expected shape {want} for {plan.num_tiles} tile(s), got {tuple(logits.shape)}")
        if logits.shape[1] != info.num_classes:
            raise ValueError(f"model output has {logits.shape[1]} channels but its metadata names "
                             f"{info.num_classes} classes ({', '.join(info.classes)})")
        if logits.shape[2:] != (info.input_height, info.input_width):
            raise ValueError(f"model output is {logits.shape[2]}x{logits.shape[3]} but its input is "
                             f"{info.input_height}x{info.input_width}: defects need logits at input resolution")
        h, w = plan.frame_shape
        k, mh, mw = logits.shape[1:]
        if plan.fit == "resize":
            return np.stack([cv2.resize(logits[0, j], (w, h), interpolation=cv2.INTER_LINEAR)
                             for j in range(k)])
        if plan.num_tiles == 1:
            return np.ascontiguousarray(logits[0, :, :h, :w])
        ph, pw = plan.padded_shape
        total = np.zeros((k, ph, pw), np.float32)
        weight = np.zeros((ph, pw), np.float32)
        i = 0
        for y in plan.ys:
            for x in plan.xs:
                total[:, y:y + mh, x:x + mw] += logits[i]
                weight[y:y + mh, x:x + mw] += 1.0
                i += 1
        total /= weight
        return np.ascontiguousarray(total[:, :h, :w])
