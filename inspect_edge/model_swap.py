"""A candidate model beside production: checked, shadowed on live frames, promoted between frames.

`propose(path)` (any thread) loads the candidate with ONNX Runtime, runs the
warm-up check of `pipeline.check_backend`, and refuses it, with the reason,
when it fails or its classes or input size differ from production's;
production carries on either way. While a candidate waits, every
`shadow_every`-th frame also goes through it, on the same tiles, and its masks
are compared with production's (per-class Dice over the shadowed frames,
defect-count difference). `promote()` and `rollback()` are carried out by the
inference thread between two frames, so no frame is dropped or counted twice
because of a swap; the request waits until it is done. Optionally a candidate
promotes itself after `auto_after` shadowed frames when every class agrees with
production to `auto_min_dice` and its own validation score (the `metrics.json`
of the run its metadata names) reaches `auto_min_val_dice`.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np

from inspect_edge.backends.base import Backend
from inspect_edge.postprocess import analyse_logits
from inspect_edge.preprocess import Preprocessor


log = logging.getLogger(__name__)


def _validation_dice(source_run: str) -> float | None:
    """The candidate's own validation score, from the training run its metadata names."""
    try:
        return float(json.loads((Path(source_run) / "metrics.json").read_text())["val_competition_dice_calibrated"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


class SwapRefused(ValueError):
    """A candidate that cannot take over; the message says why."""


class ShadowStats:
    def __init__(self, classes) -> None:
        self.classes = tuple(classes)
        k = len(self.classes)
        self.frames = 0
        self.inter, self.total = np.zeros(k), np.zeros(k)
        self.count_diff = 0  # candidate defects - production defects, summed over shadowed frames

    def add(self, prod: np.ndarray, cand: np.ndarray, n_prod: int, n_cand: int) -> None:
        self.frames += 1
        self.inter += (prod & cand).sum(axis=(1, 2))
        self.total += prod.sum(axis=(1, 2)) + cand.sum(axis=(1, 2))
        self.count_diff += n_cand - n_prod

    def summary(self) -> dict:
        dice = {c: (1.0 if self.total[k] == 0 else float(2 * self.inter[k] / self.total[k]))
                for k, c in enumerate(self.classes)}
        return {"frames": self.frames, "dice_vs_production": dice, "defect_count_diff": self.count_diff,
                "positive_pixels": {c: int(self.total[k]) for k, c in enumerate(self.classes)}}


class ModelSwap:
    def __init__(self, open_candidate, *, fit: str = "tile", overlap: int = 32, shadow_every: int = 5,
                 auto_after: int | None = None, auto_min_dice: float = 0.9, auto_min_val_dice: float | None = None) -> None:
        self.open_candidate, self.fit, self.overlap = open_candidate, fit, overlap
        self.shadow_every = max(1, shadow_every)
        self.auto_after, self.auto_min_dice, self.auto_min_val_dice = auto_after, auto_min_dice, auto_min_val_dice
        self._val_dice: float | None = None
        self._lock = threading.Lock()
        self.candidate: tuple[Backend, Preprocessor] | None = None
        self.previous: tuple[Backend, Preprocessor] | None = None
        self.stats: ShadowStats | None = None
        self._wanted: str | None = None          # "promote" | "rollback", for the inference thread
        self._done = threading.Event()
        self._outcome: dict = {}
        self.swaps = 0

    # ---- request threads ---------------------------------------------------
    def propose(self, path: Path, production: Backend) -> dict:
        from inspect_edge.pipeline import check_backend

        try:
            cand = self.open_candidate(Path(path))
        except Exception as e:
            raise SwapRefused(f"{path}: cannot load ({e})") from None
        info, prod = cand.info, production.info
        why = ""
        if info.classes != prod.classes:
            why = f"classes {list(info.classes)} differ from production's {list(prod.classes)}"
        elif (info.input_height, info.input_width, info.input_channels) != (prod.input_height, prod.input_width, prod.input_channels):
            why = (f"input {info.input_channels}x{info.input_height}x{info.input_width} differs from production's "
                   f"{prod.input_channels}x{prod.input_height}x{prod.input_width}")
        pre = Preprocessor(info, self.fit, self.overlap)
        why = why or check_backend(cand, pre)
        if why:
            cand.close()
            raise SwapRefused(f"{path}: candidate refused: {why}")
        val_dice = _validation_dice(info.source_run)
        with self._lock:
            old, self.candidate, self.stats = self.candidate, (cand, pre), ShadowStats(info.classes)
            self._val_dice = val_dice
        if old is not None:
            old[0].close()
        return {"candidate": info.model_version, "path": str(path), "shadow_every": self.shadow_every}

    def request(self, what: str, timeout: float = 10.0) -> dict:
        with self._lock:
            if what == "promote" and self.candidate is None:
                raise SwapRefused("no candidate to promote: POST /api/model first")
            if what == "rollback" and self.previous is None:
                raise SwapRefused("no previous model to roll back to")
            self._done.clear()
            self._wanted = what
        if not self._done.wait(timeout):
            raise SwapRefused(f"the inference thread did not {what} within {timeout:g} s (no frames?)")
        return dict(self._outcome)

    def close_all(self, keep: Backend | None = None) -> None:
        """At stop: free the candidate and the previous model (not `keep`, closed by its owner)."""
        with self._lock:
            held, self.candidate, self.previous = [self.candidate, self.previous], None, None
        for h in held:
            if h is not None and h[0] is not keep:
                h[0].close()

    def status(self) -> dict:
        with self._lock:
            cand = self.candidate
            return {"candidate": None if cand is None else cand[0].info.model_version,
                    "previous": None if self.previous is None else self.previous[0].info.model_version,
                    "shadow": None if self.stats is None else self.stats.summary(), "swaps": self.swaps}

    # ---- inference thread --------------------------------------------------
    def between_frames(self, production: tuple[Backend, Preprocessor]) -> tuple[Backend, Preprocessor] | None:
        """The new production (backend, pre-processor) when a promote or rollback is due, else None."""
        with self._lock:
            what, self._wanted = self._wanted, None
            if what is None:
                return None
            if what == "promote":
                new, self.candidate, self.stats = self.candidate, None, None
                if self.previous is not None:
                    self.previous[0].close()
            else:
                new = self.previous
            self.previous = production
            self.swaps += 1
            self._outcome = {"done": what, "production": new[0].info.model_version,
                             "previous": production[0].info.model_version}
        self._done.set()
        return new

    def shadow(self, seq: int, image: np.ndarray, prod_masks: np.ndarray, n_prod: int) -> None:
        from inspect_edge.pipeline import infer_tiles

        with self._lock:
            cand, stats = self.candidate, self.stats
        if cand is None or seq % self.shadow_every:
            return
        backend, pre = cand
        batch, plan = pre.to_batch(image)
        masks, defects = analyse_logits(pre.stitch(infer_tiles(backend, batch), plan), backend.info)
        with self._lock:
            if self.stats is not stats:
                return
            stats.add(prod_masks, masks, n_prod, len(defects))
            if self.auto_after and stats.frames >= self.auto_after and self._wanted is None and self._auto_ok(stats):
                log.info("auto-promoting %s after %d shadowed frames: %s", backend.info.model_version, stats.frames,
                         stats.summary()["dice_vs_production"])
                self._wanted = "promote"

    def _auto_ok(self, stats: ShadowStats) -> bool:
        if min(stats.summary()["dice_vs_production"].values()) < self.auto_min_dice:
            return False
        if self.auto_min_val_dice is not None:
            return self._val_dice is not None and self._val_dice >= self.auto_min_val_dice
        return True
