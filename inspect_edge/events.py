"""Defect events: a JSON-lines log, evidence on disk, an optional webhook.

One event per physical defect (a track of `inspect_edge.tracking`), written when
it leaves the view, with its camera, first and last frame, length along the strip
and peak score; its evidence is the frame where it scored highest. Called from the
inference thread for every processed frame, so it must be cheap and must never
raise. Evidence images and webhook calls go to a worker
thread through a bounded queue; the log line of an event with evidence is
appended by that worker once the evidence is written (or has failed), so a line
never names a folder that does not exist; other lines are appended at once.
Each line is written whole (`append_whole_line`). Every outcome is counted
(saved, rate-limited, backlog, write error, writer error, unsaved at stop, quota
eviction; sent, failed, cooldown), so nothing is lost silently. A full disk
costs evidence, never the service.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import queue
import shutil
import threading
import time
import urllib.request
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from inspect_edge.config import EventsConfig, TrackingConfig
from inspect_edge.overlay import encode_jpeg, encode_mask_png, render_overlay
from inspect_edge.pipeline import FrameResult
from inspect_edge.tracking import Track
from inspect_edge.worker import SupervisedThread

log = logging.getLogger(__name__)

# error: the writer itself failed (a bug, logged with its traceback); unsaved: still queued at stop.
EVIDENCE_OUTCOMES = ("saved", "rate_limited", "backlog", "write_error", "error", "unsaved", "evicted")
WEBHOOK_OUTCOMES = ("sent", "failed", "cooldown", "backlog", "shutdown")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class EvidenceStore:
    """One folder per event (frame.jpg, overlay.jpg, mask.png, event.json) under a byte quota.

    mask.png packs class k into bit k (8-bit up to 8 classes, 16-bit up to 16);
    a model with more classes gets masks.npz instead.

    Folder names sort by time, so the oldest evidence is the first to go, both
    when the quota is exceeded and when the disk is full.
    """

    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._index: deque[tuple[Path, int]] = deque()
        self.total_bytes = 0
        self.evicted = 0
        if self.root.is_dir():  # evidence from an earlier run in the same folder counts too
            for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                self._index.append((d, size))
                self.total_bytes += size

    def save(self, name: str, result: FrameResult, event: dict) -> Path:
        """Write one event's evidence; OSError only if it failed even after freeing space."""
        files = {
            "frame.jpg": encode_jpeg(result.image, 90),
            "overlay.jpg": encode_jpeg(render_overlay(result.image, result.masks, result.defects), 85),
            "event.json": (json.dumps(event, indent=2) + "\n").encode(),
        }
        if result.masks.shape[0] <= 16:
            files["mask.png"] = encode_mask_png(result.masks)
        else:  # more classes than a PNG's bits: one boolean plane per class
            buf = io.BytesIO()
            np.savez_compressed(buf, masks=result.masks)
            files["masks.npz"] = buf.getvalue()
        try:
            path = self._write(name, files)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._index:
                raise
            self._evict_oldest()
            path = self._write(name, files)
        self._enforce_quota()
        return path

    def _write(self, name: str, files: dict[str, bytes]) -> Path:
        path = self.root / name
        try:
            path.mkdir(parents=True, exist_ok=False)
            for fname, data in files.items():
                (path / fname).write_bytes(data)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            raise
        size = sum(len(b) for b in files.values())
        self._index.append((path, size))
        self.total_bytes += size
        return path

    def _evict_oldest(self) -> None:
        path, size = self._index.popleft()
        shutil.rmtree(path, ignore_errors=True)
        self.total_bytes -= size
        self.evicted += 1

    def _enforce_quota(self) -> None:
        while self.total_bytes > self.quota_bytes and self._index:
            self._evict_oldest()


def append_whole_line(path: Path, line: bytes) -> None:
    """Append one complete line or nothing: a write that fails part-way (a full disk) is cut
    back, so the next record never lands on a half line and the file stays parseable."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":  # a torn line from a crash or power cut: end it
            line = b"\n" + line
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


class EventRecorder:
    """The events sink: `recorder(result)` for every processed frame."""

    def __init__(self, run_dir: Path, cfg: EventsConfig, tracking: TrackingConfig | None = None) -> None:
        self.cfg = cfg
        self.tracking = tracking or TrackingConfig()
        self._open: dict[int, tuple[str, Track]] = {}              # physical defects still in view, with their camera
        self._peaks: dict[int, tuple[FrameResult, float]] = {}     # their frame of highest score so far
        self._speed: dict[str, float] = {}                         # per camera: the tracker's strip speed
        self.log_path = Path(run_dir) / "events.jsonl"
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:  # reported on the first failed append, counted there
            log.error("cannot create the run folder %s: %s", run_dir, e)
        self.store = EvidenceStore(Path(run_dir) / "evidence", int(cfg.evidence_quota_mb * 1024 * 1024))
        self._jobs: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
        self._lock = threading.Lock()
        self._events = 0
        self._by_camera: dict[str, int] = {}
        self._log_errors = 0
        self._evidence = {o: 0 for o in EVIDENCE_OUTCOMES}
        self._webhook = {o: 0 for o in WEBHOOK_OUTCOMES}
        self._last_evidence = -1e18
        self._last_webhook = -1e18
        self._last_log_warning = -1e18
        self._order: deque[list] = deque()  # [event, complete] in frame order; see __call__
        self._order_lock = threading.Lock()
        self._worker = SupervisedThread(self._work, "events")
        self._stop = self._worker.stop_event

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 2.0) -> None:
        """After the inference thread has stopped: log the defects still in view, then drain."""
        self.close_open()
        self._worker.stop(timeout)
        if not self._worker.running:
            self._flush_unsaved()

    @property
    def running(self) -> bool:
        return self._worker.running

    @property
    def thread(self) -> SupervisedThread:
        return self._worker

    def counts(self) -> dict:
        with self._lock:
            evidence = dict(self._evidence)
            evidence["evicted"] = self.store.evicted
            return {"events": self._events, "by_camera": dict(self._by_camera), "log_errors": self._log_errors, "evidence": evidence,
                    "webhook": dict(self._webhook), "evidence_bytes": self.store.total_bytes}

    # ---- inference thread: cheap, never raises -----------------------------
    def __call__(self, result: FrameResult) -> None:
        """One event per physical defect, written when its track closes, with the frame of its peak."""
        self._speed[result.camera] = result.strip_speed_px
        for d, track_id in zip(result.defects, result.track_ids):
            held = self._peaks.get(track_id)
            if held is None or d.peak_prob > held[1]:
                self._peaks[track_id] = (result, d.peak_prob)
        for t in result.started:
            self._open[t.id] = (result.camera, t)
        for t in result.closed:
            self._emit(result.camera, t)

    def close_open(self) -> None:
        """Defects still in view when the service stops: logged too, marked as such."""
        for camera, t in list(self._open.values()):
            self._emit(camera, t, at_stop=True)

    def _emit(self, camera: str, track: Track, at_stop: bool = False) -> None:
        self._open.pop(track.id, None)
        held = self._peaks.pop(track.id, None)
        result = held[0] if held else None
        now = time.monotonic()
        stamp = datetime.fromtimestamp(track.first_time, timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3]
        name = f"{stamp}Z-d{track.id:08d}-{camera}"
        event = {**track.to_event(self._speed.get(camera, 0.0), self.tracking.mm_per_px), "camera": camera,
                 "iso_time": iso(track.first_time),
                 "model_version": result.model_version if result is not None else None, "evidence": None}
        if at_stop:
            event["open_at_stop"] = True
        with self._lock:
            self._events += 1
            self._by_camera[camera] = self._by_camera.get(camera, 0) + 1
            want_evidence = self.cfg.evidence and now - self._last_evidence >= self.cfg.evidence_min_interval_s
            if self.cfg.evidence and not want_evidence:
                self._evidence["rate_limited"] += 1
            want_webhook = bool(self.cfg.webhook_url) and now - self._last_webhook >= self.cfg.webhook_cooldown_s
            if self.cfg.webhook_url and not want_webhook:
                self._webhook["cooldown"] += 1
        # A line names evidence only once it exists: an event waiting for its evidence
        # holds its line (and the lines after it, to keep the log in frame order) until
        # the worker has written it or failed. The webhook job queues behind it, so it
        # names the evidence too.
        entry = [event, False]
        with self._order_lock:
            self._order.append(entry)
        if want_evidence and result is not None and self._enqueue(("evidence", name, result, event, entry), self._evidence):
            self._last_evidence = now
        else:
            entry[1] = True
        if want_webhook and self._enqueue(("webhook", event), self._webhook):
            self._last_webhook = now
        self._flush_lines()

    def _flush_lines(self, done: list | None = None) -> None:
        """Write every line at the head of the order whose event is complete."""
        with self._order_lock:
            if done is not None:
                done[1] = True
            while self._order and self._order[0][1]:
                self._append_log(self._order.popleft()[0])

    def _enqueue(self, job: tuple, outcomes: dict) -> bool:
        try:
            self._jobs.put_nowait(job)
            return True
        except queue.Full:
            with self._lock:
                outcomes["backlog"] += 1
            return False

    def _append_log(self, event: dict) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            append_whole_line(self.log_path, line)
        except OSError as e:
            with self._lock:
                self._log_errors += 1
            if time.monotonic() - self._last_log_warning > 60:  # one warning a minute, not per frame
                self._last_log_warning = time.monotonic()
                log.error("cannot append to %s (%s); events are counted but not logged", self.log_path, e)

    # ---- worker thread -----------------------------------------------------
    def _work(self) -> None:
        """The supervised target; a job that raises is finished first, then the thread restarts."""
        while not (self._stop.is_set() and self._jobs.empty()):
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            if self._stop.is_set() and job[0] == "webhook":
                with self._lock:  # do not hold shutdown up on a slow receiver, but say so
                    self._webhook["shutdown"] += 1
                continue
            if job[0] == "evidence":
                self._save_evidence(*job[1:])
            else:
                self._post(job[1])

    def _save_evidence(self, name: str, result: FrameResult, event: dict, entry: list) -> None:
        outcome = "error"
        try:
            self.store.save(name, result, dict(event, evidence=f"evidence/{name}"))
            outcome = "saved"
        except OSError as e:
            log.error("evidence %s not saved: %s", name, e)
            outcome = "write_error"
            event["evidence_error"] = str(e)
        finally:  # also when saving raised something unexpected: the event is logged either way
            if outcome == "saved":
                event["evidence"] = f"evidence/{name}"
            elif outcome == "error":
                event["evidence_error"] = "evidence writer failed (see the service log)"
            with self._lock:
                self._evidence[outcome] += 1
            self._flush_lines(entry)

    def _flush_unsaved(self) -> None:
        """Jobs left when the worker is gone for good: log their events, say evidence was not written."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job[0] == "evidence":
                job[3]["evidence_error"] = "not written: the service stopped before the evidence writer reached it"
                with self._lock:
                    self._evidence["unsaved"] += 1
                self._flush_lines(job[4])
            else:
                with self._lock:
                    self._webhook["shutdown"] += 1

    def _post(self, event: dict) -> None:
        body = json.dumps({"source": "inspect-edge", **event}).encode()
        req = urllib.request.Request(self.cfg.webhook_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.webhook_timeout_s) as resp:
                ok = 200 <= resp.status < 300
        except (OSError, ValueError) as e:
            log.warning("webhook %s failed: %s", self.cfg.webhook_url, e)
            ok = False
        with self._lock:
            self._webhook["sent" if ok else "failed"] += 1
