"""The one seam between the service and an inference engine.

Every backend takes a float32 batch already normalised as `ModelInfo` says,
shape (N, C, H, W), and returns float32 logits (N, num_classes, H, W).
Thresholding happens on logits (sigmoid is monotonic), so no backend spends
time on a full-frame sigmoid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from inspect_edge.flip_average import flip_average, flips_label, views
from inspect_edge.model_info import ModelInfo


class BackendError(RuntimeError):
    """A model file cannot be loaded or run; the message says which and why."""


class Backend(ABC):
    name: str = "?"
    info: ModelInfo

    @property
    def precision(self) -> str:
        return self.info.precision

    @property
    def max_batch(self) -> int:
        return 64

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K, H, W) float32 logits."""

    def warmup(self, runs: int = 2) -> None:
        x = np.zeros((1, self.info.input_channels, self.info.input_height, self.info.input_width), np.float32)
        for _ in range(runs):
            self.infer(x)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FlipAveraging(Backend):
    """A backend that runs the flip test-time augmentation its model asks for
    (`ModelInfo.tta_flips`): every caller of `infer` (the service, the bench) pays for and
    gets the same averaged logits that `train evaluate` scored."""

    def __init__(self, inner: Backend) -> None:
        self.inner, self.info = inner, inner.info
        self.name = inner.name + flips_label(inner.info.tta_flips)
        self._views = len(views(inner.info.tta_flips))

    @property
    def precision(self) -> str:
        return self.inner.precision

    @property
    def max_batch(self) -> int:
        return max(1, self.inner.max_batch // self._views)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return flip_average(self.inner.infer, batch, self.info.tta_flips, self.inner.max_batch)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):
        # Backend-specific attributes (a TensorRT engine's path, its sidecar) stay reachable.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
