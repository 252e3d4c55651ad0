"""The file-system and decision side of the engine cache: pure Python, tested on any machine.

Why each piece exists:
- Two processes (a DaemonSet pod restarting while an `export engine` runs, or two
  services on one box) may build the same engine at once. `build_once` serialises
  them with an advisory lock file (fcntl.flock: released by the kernel when a
  process dies, so a crash never leaves a stale lock) and re-checks the cache
  after taking it, so the second process loads what the first one built.
- Every file is written to a unique temporary name in the same directory, then
  renamed over the target (`os.replace` is atomic on POSIX): a reader sees the
  old file or the new one, never half of one, and two writers never share a
  temporary file.
- The timing cache is framed with a magic line and a SHA-256 of its payload. A
  file that fails the check (a torn write from an older version, disk trouble)
  is discarded with a warning and the build starts from an empty cache: tactic
  timings are an optimisation, never a reason to fail a build.
- Builds take minutes. `active_build()` counts them, so shutdown can ask them to
  stop (`shutdown_requested()`, polled by TensorRT's progress monitor) and wait
  for them to return before CUDA state is released under them.
- `parity_failures` is the one place that decides whether a TensorRT engine's
  masks drifted too far from ONNX Runtime's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_DICE_DRIFT = 0.005  # per class, TensorRT vs ONNX Runtime on the same frames
TIMING_MAGIC = b"inspect-edge-timing-cache/1\n"


# ---- atomic files ----------------------------------------------------------
def unique_temp_path(target: Path) -> Path:
    """A fresh, not yet existing name beside `target` (same file system, so a rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_temp_path(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# ---- timing cache ----------------------------------------------------------
def save_timing_cache(path: str | Path, payload: bytes) -> Path:
    digest = hashlib.sha256(payload).hexdigest().encode()
    return atomic_write_bytes(path, TIMING_MAGIC + digest + b"\n" + payload)


def load_timing_cache(path: str | Path, warn: Callable[[str], None]) -> bytes:
    """The payload of a timing cache file; b"" when absent, or when corrupt (then warned and removed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as e:
        warn(f"timing cache {path.name} unreadable ({e}); building without it")
        return b""
    head, _, rest = raw.partition(b"\n")
    digest, _, payload = rest.partition(b"\n")
    if head + b"\n" != TIMING_MAGIC or hashlib.sha256(payload).hexdigest().encode() != digest:
        warn(f"timing cache {path.name} is corrupt or from another writer; discarded, building without it")
        path.unlink(missing_ok=True)
        return b""
    return payload


# ---- one build at a time per engine ----------------------------------------
class LockTimeout(TimeoutError):
    pass


@contextlib.contextmanager
def file_lock(path: str | Path, timeout_s: float = 3600.0, log: Callable[[str], None] = print,
              poll_s: float = 0.2) -> Iterator[None]:
    """An exclusive advisory lock on `path`, across processes and threads (each call opens its own fd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, told = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not told:
                log(f"waiting for another build holding {path.name}")
                told = True
            if time.monotonic() > deadline:
                raise LockTimeout(f"{path}: another build held the lock for more than {timeout_s:.0f} s")
            time.sleep(poll_s)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def build_once(target: Path, is_current: Callable[[Path], bool], build: Callable[[Path], list[Path]],
               log: Callable[[str], None] = print, lock_timeout_s: float = 3600.0) -> bool:
    """Make `target` current, building it at most once across concurrent callers; True if this call built it.

    `build(tmp)` writes the new file at the unique path `tmp` (plus any companions)
    and returns the temporary files to install, in order, as (tmp, final) pairs via
    their names: each returned path must be `tmp` or start with `tmp`'s name, and is
    renamed to `target`'s name with the same suffix. On any failure, all of them are removed.
    """
    if is_current(target):
        return False
    with file_lock(target.with_name(target.name + ".lock"), lock_timeout_s, log):
        if is_current(target):  # built by whoever held the lock before us
            return False
        tmp = unique_temp_path(target)
        written: list[Path] = [tmp]
        try:
            written = [tmp, *build(tmp)]
            for p in dict.fromkeys(written):  # engine first, then its companions (sidecar, report)
                if p.exists():
                    os.replace(p, target.with_name(target.name + p.name[len(tmp.name):]))
        finally:
            for p in written:
                p.unlink(missing_ok=True)
    return True


# ---- builds in flight, and shutdown ----------------------------------------
_builds = 0
_builds_cv = threading.Condition()
_shutdown = threading.Event()


@contextlib.contextmanager
def active_build() -> Iterator[None]:
    global _builds
    with _builds_cv:
        _builds += 1
    try:
        yield
    finally:
        with _builds_cv:
            _builds -= 1
            _builds_cv.notify_all()


def builds_in_flight() -> int:
    with _builds_cv:
        return _builds


def shutdown_requested() -> bool:
    return _shutdown.is_set()


def stop_builds(timeout_s: float = 60.0) -> bool:
    """Ask running builds to cancel and wait for them to return; True if none is left."""
    _shutdown.set()
    with _builds_cv:
        return _builds_cv.wait_for(lambda: _builds == 0, timeout_s)


def reset_shutdown() -> None:
    """For tests and for a process that starts serving again after stop_builds()."""
    _shutdown.clear()


# ---- the parity decision ---------------------------------------------------
def parity_failures(per_class_dice: dict[str, float], max_drift: float = MAX_DICE_DRIFT) -> list[str]:
    """Why an engine is refused: classes whose mask Dice vs ONNX Runtime fell more than `max_drift` below 1."""
    bad = {name: round(d, 4) for name, d in per_class_dice.items() if not (1.0 - d) <= max_drift + 1e-12}
    return [f"mask Dice drifts more than {max_drift:g} from ONNX Runtime for {bad}"] if bad else []
