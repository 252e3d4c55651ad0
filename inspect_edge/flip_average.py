"""Flip test-time augmentation: the model also sees mirrored copies of each frame, and the
logits, mirrored back, are averaged.

A segmenter's errors are not mirror-symmetric, so the average removes some of them (on
NEU-Seg val about +0.005 mIoU for one flip); it costs one more inference per view. The
flips a model wants are part of its metadata (`ModelInfo.tta_flips`), so the edge, the
evaluation and the bench all run the same views: "h" mirrors along the strip (the width),
"v" across it; with both, every combination (4 views) is averaged.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable

import numpy as np

FLIP_AXES = {"h": -1, "v": -2}   # of (N, C, H, W) inputs and (N, K, H, W) logits


def views(flips: tuple[str, ...]) -> list[tuple[int, ...]]:
    """The axes each view mirrors: () first, then every combination of the chosen flips."""
    axes = [FLIP_AXES[f] for f in flips]
    return [c for r in range(len(axes) + 1) for c in combinations(axes, r)]


def flips_label(flips: tuple[str, ...]) -> str:
    """Suffix that names an engine running these views ("+flips-hv"; "" for none)."""
    return f"+flips-{''.join(flips)}" if flips else ""


def flip_average(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, flips: tuple[str, ...],
                 max_batch: int | None = None) -> np.ndarray:
    """Average of `run` over the flipped views of `batch`, each mirrored back.

    The views go through `run` together when `max_batch` allows (one call, the engine's
    batching does the rest), else one view per call."""
    if not flips:
        return run(batch)
    vs = views(flips)
    inputs = [np.ascontiguousarray(np.flip(batch, axis=v)) if v else batch for v in vs]
    n = len(batch)
    if max_batch is None or n * len(vs) <= max_batch:
        out = run(np.concatenate(inputs))
        outs = [out[i * n:(i + 1) * n] for i in range(len(vs))]
    else:
        outs = [run(x) for x in inputs]
    total = outs[0].astype(np.float32, copy=True)
    for v, y in zip(vs[1:], outs[1:]):
        total += np.flip(y, axis=v)
    total /= len(vs)
    return total
