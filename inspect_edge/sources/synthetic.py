"""The project's moving steel strip as a live camera: no hardware, no data."""

from __future__ import annotations

import numpy as np

from inspect_edge.sources.base import Pacer, Source


class SyntheticSource(Source):
    kind = "synthetic"
    live = True

    def __init__(self, spec: str = "synthetic", *, fps: float | None = 10.0, seed: int = 0,
                 frame_height: int = 256, frame_width: int = 1600) -> None:
        super().__init__(spec)
        self.fps = fps
        self.seed = seed
        self.frame_height, self.frame_width = frame_height, frame_width
        self._strip = None
        self._pacer = Pacer(fps)

    def open(self) -> None:
        # Imported here: the generator is only needed when this source is used.
        from inspect_edge.data.synthetic import MovingStrip

        if self._strip is None:  # a reconnect continues the same strip
            self._strip = MovingStrip(frame_height=self.frame_height, frame_width=self.frame_width,
                                      seed=self.seed)

    def read(self) -> np.ndarray:
        self._pacer.wait()
        image, _masks = self._strip.next_frame()
        return image
