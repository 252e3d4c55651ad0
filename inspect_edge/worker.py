"""What the service's long-lived threads share: a supervised named thread, a rate meter
and a rate-limited logger of repeated failures.

The capture, inference and event threads each run under a `SupervisedThread`:
Ctrl-C/SIGTERM stops every one the same way, and an unexpected exception
restarts the thread with backoff instead of ending it silently. A thread that
keeps failing gives up after its restart budget and says so through `state`,
which `/healthz` reports: restarting the process is then the process manager's
job (systemd `Restart=`, a Kubernetes liveness probe).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

# A supervised thread is new, running, restarting, finished, stopped, failed or died;
# the last two make /healthz 503.
UNHEALTHY = ("failed", "died")


class SupervisedThread:
    """One named daemon thread running `target` until `stop_event` is set.

    `target` returning is a normal end ("finished": a file source ended, a model
    that cannot run was refused). `target` raising is a bug or a fault: logged
    with its traceback (then at most once per `log_every_s`), counted in
    `restarts`, and `target` is run again after a backoff that doubles up to
    `backoff_max_s`. More than `max_restarts` within `window_s` ends it as
    "failed".
    """

    def __init__(self, target: Callable[[], None], name: str, *, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 10.0, max_restarts: int = 5, window_s: float = 300.0,
                 log_every_s: float = 60.0) -> None:
        self.target, self.name = target, name
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.max_restarts, self.window_s = max_restarts, window_s
        self.stop_event = threading.Event()
        self.restarts = 0
        self.state = "new"
        self.last_error = ""
        self._restart_times: deque[float] = deque()
        self._failures = RepeatedFailureLog(log, f"thread {name!r}", log_every_s)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        if self.state == "new":  # a second start (the inference thread restarting) is a no-op
            self.state = "running"
            self._thread.start()

    def stop(self, timeout: float) -> None:
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        # Liveness first, state second: read the other way round, a thread that sets "finished"
        # and exits between the two reads was marked "died" (a file source ending turned /healthz 503).
        # A thread not yet started (no ident) has not ended.
        if self._thread.ident is not None and not self._thread.is_alive() and self.state in ("running", "restarting"):
            self.state = "died"  # ended without passing through _main's bookkeeping
        return self.state not in UNHEALTHY

    def status(self) -> dict:
        healthy = self.healthy  # first: it may turn a silently ended thread into "died"
        return {"state": self.state, "healthy": healthy, "restarts": self.restarts, "last_error": self.last_error}

    def _main(self) -> None:
        delay = self.backoff_initial_s
        while True:
            try:
                self.target()
                self.state = "stopped" if self.stop_event.is_set() else "finished"
                return
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                if self.stop_event.is_set():
                    self.state = "stopped"
                    return
                now = time.monotonic()
                self._restart_times.append(now)
                while self._restart_times and now - self._restart_times[0] > self.window_s:
                    self._restart_times.popleft()
                if len(self._restart_times) > self.max_restarts:
                    self.state = "failed"
                    log.error("thread %r failed %d times in %.0f s; giving up (last: %s)",
                              self.name, len(self._restart_times), self.window_s, self.last_error, exc_info=True)
                    return
                self.restarts += 1
                self.state = "restarting"
                self._failures.failed(f"restarting in {delay:.1f} s")
                if self.stop_event.wait(delay):
                    self.state = "stopped"
                    return
                delay = min(delay * 2, self.backoff_max_s)
                self.state = "running"
            except BaseException:
                self.state = "died"
                raise


class RepeatedFailureLog:
    """Log the first failure with its traceback, then one summary line per interval.

    Called from inside an `except` block. A model that fails on every frame
    would otherwise write a traceback per frame (about 100 lines a second).
    """

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 10.0) -> None:
        self.logger, self.what, self.every_s = logger, what, every_s
        self.total = 0
        self._since_last = 0
        self._last_log = -1e18
        self._last_message = ""

    def failed(self, context: str = "") -> None:
        e = sys.exc_info()[1]
        self.total += 1
        self._since_last += 1
        self._last_message = f"{type(e).__name__}: {e}" if e is not None else "unknown error"
        now = time.monotonic()
        if self.total == 1:
            self.logger.error("%s failed%s", self.what, f"; {context}" if context else "", exc_info=True)
        elif now - self._last_log >= self.every_s:
            self.logger.error("%s failed %d more times since the last report (%d in all; last: %s)%s", self.what,
                              self._since_last, self.total, self._last_message, f"; {context}" if context else "")
        else:
            return
        self._last_log, self._since_last = now, 0


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
