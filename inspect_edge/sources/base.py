"""What every frame source is: open, read the next grayscale frame, close; reopenable.

Sources deliver grayscale uint8 frames (H, W): the models are grayscale
(ModelInfo's pre-processing contract), and converting once in the capture
thread saves memory and work everywhere downstream.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np


class SourceError(RuntimeError):
    """The source cannot be opened or was lost; a live source is retried, a file is not."""


class SourceEnded(Exception):
    """A finite source (file, folder) has no more frames."""


@dataclass(frozen=True)
class Frame:
    seq: int              # 1, 2, ... over the capture's whole life, across reconnects
    image: np.ndarray     # uint8 (H, W) grayscale
    capture_time: float   # time.time() when the frame was read: what events and logs show
    capture_mono: float   # time.monotonic() at the same moment: what latencies are measured from


class Source(ABC):
    kind: str = "?"       # camera | stream | file | images | synthetic
    live: bool = False    # a lost live source is reconnected; a finite one simply ends

    def __init__(self, spec: str) -> None:
        self.spec = spec

    @abstractmethod
    def open(self) -> None:
        """Connect; raise SourceError with the reason if impossible. Called again after close()."""

    @abstractmethod
    def read(self) -> np.ndarray:
        """Block until the next frame; raise SourceEnded at the end, SourceError when lost."""

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image if image.dtype == np.uint8 else cv2.convertScaleAbs(image)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise SourceError(f"unsupported frame shape {image.shape}")


class Pacer:
    """Holds a file-like source to a frame rate, as a camera would deliver it.

    Scheduling from a fixed origin (not sleeping a fixed interval after each
    frame) keeps the average rate exact even when reads take varying time;
    after a long stall it restarts the schedule instead of bursting to catch up.
    """

    def __init__(self, fps: float | None) -> None:
        self.interval = 1.0 / fps if fps and fps > 0 else 0.0
        self._next = None

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self._next is None or now - self._next > 1.0:
            self._next = now
        delay = self._next - now
        if delay > 0:
            time.sleep(delay)
        self._next += self.interval

    def reset(self) -> None:
        self._next = None
