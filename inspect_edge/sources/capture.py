"""A capture thread that keeps only the newest frame.

The inference side always takes the newest frame; a frame overwritten before
it was taken is counted as dropped ("stale"), so lag never builds up and every
captured frame ends up processed or dropped for a stated reason. A lost live
source is reopened with exponential backoff, without restarting anything. A
source that stays open but sends nothing for `stall_timeout_s` is reported down
until its next frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from inspect_edge.sources.base import Frame, Source, SourceEnded, SourceError
from inspect_edge.sources.images import UnreadableImage
from inspect_edge.worker import RateMeter, SupervisedThread

log = logging.getLogger(__name__)

# Fixed label set for the dropped-frames metric (capture and pipeline reasons).
DROP_REASONS = ("stale", "unreadable", "shutdown", "error")


@dataclass
class CaptureCounts:
    captured: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in DROP_REASONS})
    reconnects: int = 0          # successful reopenings after a loss
    failed_opens: int = 0
    up: bool = False
    finished: bool = False       # a finite source reached its end
    last_error: str = ""
    last_frame_mono: float = 0.0
    streak_start_mono: float = 0.0  # first frame of the current run with no gap over streak_gap_s


class LatestFrameCapture:
    def __init__(self, source: Source, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 stall_timeout_s: float | None = None, streak_gap_s: float = 3.0, name: str = "capture",
                 roi: tuple[int, int, int, int] | None = None) -> None:
        self.source = source
        self.roi = roi  # x, y, w, h: only this region of each frame is kept
        self.on_frame: Callable[[], None] | None = None  # called after each new frame (the inference thread's wake-up)
        self._roi_warned = False
        self.stall_timeout_s = stall_timeout_s
        self.streak_gap_s = streak_gap_s
        self._opened_mono = 0.0
        self._stalled = False
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._counts = CaptureCounts()
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._slot: Frame | None = None      # newest frame not yet taken
        self._worker = SupervisedThread(self._run, name)
        self._stop = self._worker.stop_event
        self._rate = RateMeter()               # capture times, for the capture rate

    # ---- consumer side -----------------------------------------------------
    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not taken yet, waiting up to `timeout` (0: not at all); None if none came."""
        with self._new_frame:
            if self._slot is None and timeout != 0:
                self._new_frame.wait(timeout)
            frame, self._slot = self._slot, None
            return frame

    def counts(self) -> CaptureCounts:
        with self._lock:
            c = self._counts
            up, last_error = c.up, c.last_error
            if up and self.stall_timeout_s is not None:
                # An open stream can stop sending without an error (a frozen camera, a
                # paused server): its read blocks, so silence itself is the signal.
                quiet = time.monotonic() - max(c.last_frame_mono, self._opened_mono)
                if quiet > self.stall_timeout_s:
                    up, last_error = False, f"no new frame for {quiet:.1f} s (read timeout {self.stall_timeout_s:g} s)"
                    if not self._stalled:
                        log.warning("source %s: %s; reported down until a frame arrives", self.source.spec, last_error)
                    self._stalled = True
            return CaptureCounts(c.captured, dict(c.dropped), c.reconnects, c.failed_opens, up,
                                 c.finished, last_error, c.last_frame_mono, c.streak_start_mono)

    def capture_fps(self, window_s: float = 5.0) -> float:
        with self._lock:
            return self._rate.rate(window_s)

    @property
    def running(self) -> bool:
        return self._worker.running

    @property
    def thread(self) -> SupervisedThread:
        return self._worker

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._worker.stop(timeout)
        with self._new_frame:
            self._counts.up = False
            if self._slot is not None:  # captured, never taken: say so rather than lose it
                self._counts.dropped["shutdown"] += 1
                self._slot = None
            self._new_frame.notify_all()

    # ---- capture thread ----------------------------------------------------
    def _run(self) -> None:
        backoff = self.backoff_initial_s
        was_up = False
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceError as e:
                self._mark_down(str(e), failed_open=True)
                if not self.source.live:
                    log.error("cannot open %s: %s", self.source.spec, e)
                    self._finish()
                    return
                log.warning("%s; retrying in %.1f s", e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            with self._lock:
                self._counts.up = True
                self._counts.last_error = ""  # recovered: an old error would only mislead
                self._opened_mono = time.monotonic()
                if was_up:
                    self._counts.reconnects += 1
                    log.warning("source %s reconnected", self.source.spec)
            was_up = True
            try:
                lost = self._read_until_lost()
                if lost is None:
                    return          # stopped, or a finite source ended
                backoff = self.backoff_initial_s if lost.had_frames else backoff
                self._mark_down(lost.reason)
                log.warning("%s; reconnecting in %.1f s", lost.reason, backoff)
            finally:
                self.source.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)
        with self._lock:
            self._counts.up = False

    @dataclass
    class _Lost:
        reason: str
        had_frames: bool

    def _read_until_lost(self) -> _Lost | None:
        had_frames = False
        while not self._stop.is_set():
            try:
                image = self.source.read()
            except UnreadableImage as e:
                log.warning("%s", e)
                with self._lock:
                    self._counts.captured += 1
                    self._counts.dropped["unreadable"] += 1
                    self._counts.last_error = str(e)
                continue
            except SourceEnded:
                self._finish()
                return None
            except SourceError as e:
                if not self.source.live:
                    self._mark_down(str(e))
                    self._finish()
                    return None
                return self._Lost(str(e), had_frames)
            had_frames = True
            self._publish(image)
        return None

    def _crop(self, image: np.ndarray) -> np.ndarray:
        x, y, w, h = self.roi
        H, W = image.shape[:2]
        if x + w > W or y + h > H:
            if not self._roi_warned:
                self._roi_warned = True
                log.warning("source %s: roi %s reaches outside its %dx%d frame; inspecting the part inside (the whole frame if none is)", self.source.spec,
                            list(self.roi), W, H)
        cut = image[y:min(y + h, H), x:min(x + w, W)]
        # A copy: the inference thread keeps this frame, the full one can go.
        return cut.copy() if cut.size else image

    def _publish(self, image) -> None:
        if self.roi is not None:
            image = self._crop(image)
        now_mono, now = time.monotonic(), time.time()
        with self._new_frame:
            c = self._counts
            c.captured += 1
            if now_mono - c.last_frame_mono > self.streak_gap_s:
                c.streak_start_mono = now_mono
            c.last_frame_mono = now_mono
            if self._stalled:
                self._stalled = False
                log.warning("source %s delivers again", self.source.spec)
            if self._slot is not None:
                c.dropped["stale"] += 1
            self._slot = Frame(c.captured, image, now, now_mono)
            self._rate.tick(now_mono)
            self._new_frame.notify()
        if self.on_frame is not None:
            self.on_frame()

    def _mark_down(self, reason: str, failed_open: bool = False) -> None:
        with self._lock:
            self._counts.up = False
            self._counts.last_error = reason
            if failed_open:
                self._counts.failed_opens += 1

    def _finish(self) -> None:
        with self._new_frame:
            self._counts.up = False
            self._counts.finished = True
            self._new_frame.notify_all()
