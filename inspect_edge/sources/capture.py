"""A capture thread that keeps only the newest frame.

The inference side always takes the newest frame; a frame overwritten before
it was taken is counted as dropped ("stale"), so lag never builds up and every
captured frame ends up processed or dropped for a stated reason. A lost live
source is reopened with exponential backoff, without restarting anything.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from inspect_edge.sources.base import Frame, Source, SourceEnded, SourceError
from inspect_edge.sources.images import UnreadableImage
from inspect_edge.worker import RateMeter, StoppableThread

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


class LatestFrameCapture:
    def __init__(self, source: Source, *, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 name: str = "capture") -> None:
        self.source = source
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._counts = CaptureCounts()
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._slot: Frame | None = None      # newest frame not yet taken
        self._worker = StoppableThread(self._run, name)
        self._stop = self._worker.stop_event
        self._rate = RateMeter()               # capture times, for the capture rate

    # ---- consumer side -----------------------------------------------------
    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not taken yet, waiting up to `timeout`; None if none came."""
        with self._new_frame:
            if self._slot is None:
                self._new_frame.wait(timeout)
            frame, self._slot = self._slot, None
            return frame

    def counts(self) -> CaptureCounts:
        with self._lock:
            c = self._counts
            return CaptureCounts(c.captured, dict(c.dropped), c.reconnects, c.failed_opens, c.up,
                                 c.finished, c.last_error, c.last_frame_mono)

    def capture_fps(self, window_s: float = 5.0) -> float:
        with self._lock:
            return self._rate.rate(window_s)

    @property
    def running(self) -> bool:
        return self._worker.running

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
                    self._finish()
                    return
                log.warning("%s; retrying in %.1f s", e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            with self._lock:
                self._counts.up = True
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

    def _publish(self, image) -> None:
        now_mono, now = time.monotonic(), time.time()
        with self._new_frame:
            c = self._counts
            c.captured += 1
            c.last_frame_mono = now_mono
            if self._slot is not None:
                c.dropped["stale"] += 1
            self._slot = Frame(c.captured, image, now, now_mono)
            self._rate.tick(now_mono)
            self._new_frame.notify()

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
