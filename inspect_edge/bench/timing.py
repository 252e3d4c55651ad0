"""Latency samples -> the numbers the tables show, and the interleaved timing loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int                 # timed calls (warm-up excluded)
    batch: int
    median_ms: float
    p99_ms: float
    mean_ms: float
    fps: float             # frames per second sustained: batch * n / total time

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(seconds: Sequence[float], batch: int = 1) -> Summary:
    t = np.asarray(seconds, np.float64)
    if t.size == 0:
        raise ValueError("no timings to summarize")
    return Summary(n=int(t.size), batch=batch, median_ms=float(np.median(t) * 1e3),
                   p99_ms=float(np.percentile(t, 99) * 1e3), mean_ms=float(t.mean() * 1e3),
                   fps=float(batch * t.size / t.sum()))


def time_interleaved(runs: dict[str, Callable[[], object]], *, warmup: int, seconds: float,
                     min_iters: int, max_iters: int) -> dict[str, list[float]]:
    """Time each callable in round-robin order so that load changes hit every contender alike.

    Warm-up calls are not timed. The number of rounds comes from the slowest
    contender's warm-up time and the `seconds` budget, within [min_iters, max_iters].
    """
    slowest = 0.0
    for fn in runs.values():
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            fn()
            slowest = max(slowest, time.perf_counter() - t0)
    rounds = int(min(max_iters, max(min_iters, seconds / max(slowest * len(runs), 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples
