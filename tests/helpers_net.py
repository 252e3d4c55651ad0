"""Loopback helpers shared by the tests that start real servers."""

from __future__ import annotations

import socket
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll `check` until it returns something truthy (returned); connection errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as e:
            last = e
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not within {timeout_s} s (last: {last!r})")
