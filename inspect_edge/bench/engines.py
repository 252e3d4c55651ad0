"""Engine-only timing: every contender on the same inputs, in alternation, per batch size.

Inputs are steel-strip-like frames made once per model (the synthetic strip,
cut to the model input) and normalised as the service does, so the numbers
and the mask agreement are on the same data for every contender.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inspect_edge.bench.contenders import BenchModel, Contender
from inspect_edge.bench.timing import summarize, time_interleaved
from inspect_edge.model_info import ModelInfo
from inspect_edge.postprocess import mask_dice_between
from inspect_edge.preprocess import Preprocessor


@dataclass(frozen=True)
class TimingBudget:
    warmup: int = 2
    seconds_per_cell: float = 3.0   # per (model, batch): all contenders together
    min_iters: int = 5
    max_iters: int = 200


def strip_inputs(info: ModelInfo, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic strip frames at the model's input size: (uint8 (n, H, W), normalised (n, C, H, W))."""
    from inspect_edge.data.synthetic import MovingStrip

    strip = MovingStrip(frame_height=info.input_height, frame_width=info.input_width, seed=seed, speed_px=97)
    frames = np.stack([strip.next_frame()[0] for _ in range(n)])
    pre = Preprocessor(info, "tile")
    batch = np.concatenate([pre.to_batch(f)[0].copy() for f in frames])
    return frames, batch


def time_model(model: BenchModel, contenders: Sequence[Contender], batches: Sequence[int],
               budget: TimingBudget, log: Callable[[str], None] = print) -> list[dict]:
    """One row per (contender, batch): median/p99 latency per call, frames per second."""
    _, inputs = strip_inputs(model.info, max(batches))
    rows = []
    for b in batches:
        x = np.ascontiguousarray(inputs[:b])
        runs = {c.name: (lambda c=c: c.run(x)) for c in contenders if b <= c.max_batch}
        if not runs:
            continue
        samples = time_interleaved(runs, warmup=budget.warmup, seconds=budget.seconds_per_cell,
                                   min_iters=budget.min_iters, max_iters=budget.max_iters)
        for c in contenders:
            if c.name not in samples:
                continue
            s = summarize(samples[c.name], b)
            rows.append({"model": model.label, "contender": c.name, "device": c.device,
                         "precision": c.precision, "threads": c.threads, **s.to_dict()})
            log(f"  {model.label:<8} {c.name:<20} threads {c.threads or '-'} batch {b:>2}: median {s.median_ms:8.1f} ms  "
                f"p99 {s.p99_ms:8.1f} ms  {s.fps:7.1f} frames/s  (n={s.n})")
    for key in {(r["contender"], r["threads"]) for r in rows}:
        mine = [r for r in rows if (r["contender"], r["threads"]) == key]
        best = max(mine, key=lambda r: r["fps"])
        for r in mine:
            r["best_batch"] = r is best
    return rows


def mask_agreement(model: BenchModel, reference: Contender, others: Sequence[Contender],
                   n_images: int = 8, batch: int = 1) -> list[dict]:
    """Per-class Dice between the reference's masks and each other contender's, pooled over the images.

    Masks use the model's own thresholds and minimum areas. A class with no
    positive pixels on either side scores 1.0 and is marked `empty`, so a
    trivial agreement is not mistaken for evidence.
    """
    info = model.info
    _, inputs = strip_inputs(info, n_images, seed=1)

    def logits(c: Contender) -> np.ndarray:
        return np.concatenate([c.run(np.ascontiguousarray(inputs[i:i + batch])) for i in range(0, n_images, batch)])

    ref = logits(reference)
    out = []
    for c in others:
        cand = logits(c)
        dice, positive = mask_dice_between(ref, cand, info)
        out.append({
            "model": model.label, "reference": reference.name, "candidate": c.name, "images": n_images,
            "random_weights": model.random_weights,
            "max_abs_logit_diff": float(np.abs(ref.astype(np.float64) - cand).max()),
            "dice": dice, "min_dice": min(dice.values()),
            "empty_classes": [n for n, px in positive.items() if sum(px) == 0],
            "positive_px": positive,
        })
    return out
