"""Cameras, network streams and video files, all through cv2.VideoCapture."""

from __future__ import annotations

import cv2
import numpy as np

from inspect_edge.sources.base import Pacer, Source, SourceEnded, SourceError, to_gray


class VideoCaptureSource(Source):
    """`kind` camera (an index), stream (rtsp/http URL) or file (a path).

    OpenCV's own queue is cut to one frame (CAP_PROP_BUFFERSIZE=1, honoured by
    V4L2 and some stream back ends); together with a capture thread that reads
    continuously this keeps the newest frame no older than one frame interval.
    Open and read timeouts make a dead network stream fail instead of hanging.
    """

    def __init__(self, spec: str, kind: str, *, loop: bool = False, realtime: bool = True,
                 open_timeout_s: float = 5.0, read_timeout_s: float = 5.0,
                 width: int | None = None, height: int | None = None) -> None:
        super().__init__(spec)
        if kind not in ("camera", "stream", "file"):
            raise ValueError(f"kind: must be camera, stream or file, got {kind!r}")
        self.kind = kind
        self.live = kind != "file"
        self.loop = loop
        self.realtime = realtime
        self.open_timeout_ms = int(open_timeout_s * 1000)
        self.read_timeout_ms = int(read_timeout_s * 1000)
        self.width, self.height = width, height
        self.fps: float | None = None
        self._cap: cv2.VideoCapture | None = None
        self._pacer = Pacer(None)

    def open(self) -> None:
        self.close()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms]
        if self.kind == "camera":
            cap = cv2.VideoCapture(int(self.spec), cv2.CAP_ANY, params)
        else:
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.kind} {self.spec}: cannot open")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        # Only a file needs pacing: a camera or a stream delivers at its own rate.
        self._pacer = Pacer(self.fps if self.kind == "file" and self.realtime else None)
        self._cap = cap

    def read(self) -> np.ndarray:
        if self._cap is None:
            raise SourceError(f"{self.kind} {self.spec}: not open")
        self._pacer.wait()
        ok, image = self._cap.read()
        if ok and image is not None and image.size:
            return to_gray(image)
        if self.kind == "file":
            if not self.loop:
                raise SourceEnded(self.spec)
            # Rewinding by frame position is unreliable for some codecs; reopening is not.
            self.open()
            ok, image = self._cap.read()
            if ok and image is not None and image.size:
                return to_gray(image)
            raise SourceError(f"file {self.spec}: no frame after rewinding")
        raise SourceError(f"{self.kind} {self.spec}: no frame (disconnected or timed out)")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
