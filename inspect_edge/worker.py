"""What the service's long-lived threads share: a stoppable named thread and a rate meter.

The capture, inference and event threads each own one daemon thread with a stop
flag; keeping the lifecycle in one place means every one of them stops the same
way on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class StoppableThread:
    """One named daemon thread running `target` until `stop_event` is set."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=target, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


class RateMeter:
    """Events per second over a recent window, from `time.monotonic()` stamps.

    Not thread-safe by itself: callers hold their own lock, which they already
    take to update the counts that go with the rate.
    """

    def __init__(self, keep: int = 256) -> None:
        self._times: deque[float] = deque(maxlen=keep)

    def tick(self, t: float | None = None) -> None:
        self._times.append(time.monotonic() if t is None else t)

    def rate(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        times = [t for t in self._times if now - t <= window_s]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)
