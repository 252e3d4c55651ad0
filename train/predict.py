"""Batched, no-grad inference with the ModelInfo pre-processing contract."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from inspect_edge.flip_average import flip_average
from inspect_edge.model_info import ModelInfo
from inspect_edge.preprocess import normalise


def _batches_by_shape(images: Sequence[np.ndarray], batch_size: int) -> Iterable[list[int]]:
    # Frames of different sizes cannot share a tensor; group equal shapes, keep order within a group.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[:2]), []).append(i)
    for idx in groups.values():
        for j in range(0, len(idx), batch_size):
            yield idx[j : j + batch_size]


def predict_logits(
    model: torch.nn.Module,
    images: Sequence[np.ndarray] | np.ndarray,
    info: ModelInfo,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    tta: bool = True,
) -> np.ndarray:
    """uint8 grey frames (list of (H, W) or array (N, H, W)) -> float32 logits (N, K, H, W).

    All frames must share one size (the result is one array); the model pads
    internally, so the size need not be a multiple of 32. The flip views in
    `info.tta_flips` are averaged, as the edge does, unless `tta` is False (parity
    checks compare one engine pass with another).
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = images[None]
    images = list(images)
    if not images:
        return np.zeros((0, info.num_classes, info.input_height, info.input_width), np.float32)
    for i, img in enumerate(images):
        if img.ndim != 2:
            raise ValueError(f"image {i}: expected a grey (H, W) frame, got shape {img.shape}")
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise ValueError(f"all images must share one size to stack the logits, got {sorted(shapes)}")
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    h, w = images[0].shape
    out = np.empty((len(images), info.num_classes, h, w), np.float32)
    flips = info.tta_flips if tta else ()

    def forward(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    with torch.no_grad():
        for idx in _batches_by_shape(images, batch_size):
            out[idx] = flip_average(forward, normalise(np.stack([images[i] for i in idx]), info), flips)
    return out


def iter_dataset_logits(model: torch.nn.Module, ds, info: ModelInfo, *, batch_size: int = 8):
    """Yield (Sample, logits float32 (K, H, W)) over a SteelDataset, in order, full frames."""
    for start in range(0, len(ds), batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        if len({s.image.shape for s in samples}) == 1:
            logits = predict_logits(model, [s.image for s in samples], info, batch_size=batch_size)
        else:
            logits = [predict_logits(model, [s.image], info)[0] for s in samples]
        yield from zip(samples, logits)
