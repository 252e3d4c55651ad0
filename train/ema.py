"""Exponential moving average of a model's weights (segmenter and GAN generator alike)."""

from __future__ import annotations

import torch


def ema_decay_at(step: int, decay: float) -> float:
    """The decay warms up: early on a 0.999 average would mostly remember the random init."""
    return min(decay, (1 + step) / (10 + step))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """Parameters are averaged; buffers (BatchNorm statistics) are copied, since an average of
    running statistics does not describe the averaged weights any better than the latest ones."""
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)
