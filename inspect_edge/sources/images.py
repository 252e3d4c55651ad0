"""A folder or a glob of still images played as a video, in name order."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np

from inspect_edge.sources.base import Pacer, Source, SourceEnded, SourceError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class UnreadableImage(SourceError):
    """One file could not be decoded; the capture counts it and moves on."""


def list_images(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    else:
        files = [Path(f) for f in glob.glob(spec, recursive=True)
                 if Path(f).suffix.lower() in IMAGE_SUFFIXES and Path(f).is_file()]
    return sorted(files)


class ImageFolderSource(Source):
    kind = "images"
    live = False

    def __init__(self, spec: str, *, loop: bool = False, fps: float | None = 10.0) -> None:
        super().__init__(spec)
        self.loop = loop
        self.fps = fps
        self._files: list[Path] = []
        self._next = 0
        self._pacer = Pacer(fps)

    def open(self) -> None:
        self._files = list_images(self.spec)
        if not self._files:
            raise SourceError(f"images {self.spec}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self._next = 0

    def read(self) -> np.ndarray:
        if self._next >= len(self._files):
            if not self.loop or not self._files:
                raise SourceEnded(self.spec)
            self._next = 0
        path = self._files[self._next]
        self._next += 1
        self._pacer.wait()
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise UnreadableImage(f"{path}: not a readable image")
        return image
