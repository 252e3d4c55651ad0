"""One inspection service: its cameras (a capture thread each), one inference thread, sinks, and their numbers.

The capture threads start only once the model is loaded and warmed up, so a
slow model load (a TensorRT engine build) does not throw away the first
seconds of a video file as stale frames. The service is ready while the model
is loaded and at least one camera delivers; a camera that is down is reported
as such on its own, without making the whole line unready.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from inspect_edge.backends.base import Backend
from inspect_edge.config import ServiceConfig
from inspect_edge.events import EventRecorder
from inspect_edge.metrics import ServiceMetrics
from inspect_edge.model_swap import ModelSwap
from inspect_edge.overlay import class_color_hex
from inspect_edge.pipeline import CameraFeed, FrameResult, InspectionPipeline
from inspect_edge.server.live import LiveView
from inspect_edge.sources import LatestFrameCapture, open_source
from inspect_edge.worker import SupervisedThread

log = logging.getLogger(__name__)


def default_backend_factory(cfg: ServiceConfig) -> Callable[[], Backend]:
    def factory() -> Backend:
        from inspect_edge.backends import open_backend

        return open_backend(cfg.model.resolved_path(), cfg.model.backend, cfg.model.threads)

    return factory


class InspectionService:
    def __init__(self, cfg: ServiceConfig, run_dir: Path,
                 backend_factory: Callable[[], Backend] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cameras: dict[str, LatestFrameCapture] = {}
        for c in cfg.camera_list():
            try:
                source = open_source(c.spec, loop=c.loop, realtime=c.realtime, fps=c.fps,
                                     open_timeout_s=c.open_timeout_s, read_timeout_s=c.read_timeout_s)
            except ValueError as e:
                raise ValueError(f"camera {c.name!r}: {e}") if cfg.cameras else e from None
            self.cameras[c.name] = LatestFrameCapture(
                source, backoff_initial_s=c.reconnect_initial_s, backoff_max_s=c.reconnect_max_s,
                stall_timeout_s=c.read_timeout_s, streak_gap_s=cfg.server.ready_stale_s, name=f"capture:{c.name}",
                roi=c.roi)
        self.metrics = ServiceMetrics()
        self.events = EventRecorder(self.run_dir, cfg.events, cfg.tracking)
        sv = cfg.server
        self.live = LiveView(sv.jpeg_quality, sv.recent_window_s, sv.recent_interval_s, preview_max_width=sv.preview_max_width)
        m = cfg.model
        self.swap = ModelSwap(self._open_candidate, fit=m.fit, overlap=m.tile_overlap, shadow_every=m.shadow_every,
                              auto_after=m.auto_promote_after, auto_min_dice=m.auto_promote_min_dice,
                              auto_min_val_dice=m.auto_promote_min_val_dice)
        self.pipeline = InspectionPipeline(
            [CameraFeed(name, cap) for name, cap in self.cameras.items()], backend_factory or default_backend_factory(cfg),
            fit=cfg.model.fit, overlap=cfg.model.tile_overlap,
            sinks=[self._observe, self.live, self.events], on_model_loaded=self._model_loaded, tracking=cfg.tracking,
            swap=self.swap)
        self.metrics.bind(self.cameras, self.pipeline, self.events, self.threads, self.swap)
        self.stopping = threading.Event()   # streaming responses end when this is set
        self.started_at = time.monotonic()
        self._stopped = False

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        self.events.start()
        self.pipeline.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        for cap in self.cameras.values():
            cap.stop(timeout=2.0)
        self.pipeline.stop(timeout=2.0)
        self.events.stop(timeout=2.0)
        try:
            (self.run_dir / "summary.json").write_text(json.dumps(self.stats(), indent=2) + "\n")
        except OSError as e:
            log.error("cannot write the run summary: %s", e)

    def threads(self) -> dict[str, SupervisedThread]:
        capture = {cap.thread.name: cap.thread for cap in self.cameras.values()}
        if len(capture) == 1:
            capture = {"capture": next(iter(capture.values()))}  # one camera: the name dashboards already use
        return {**capture, "inference": self.pipeline.thread, "events": self.events.thread}

    def threads_alive(self) -> list[str]:
        return [name for name, t in self.threads().items() if t.running]

    def health(self) -> tuple[bool, str, dict]:
        """Whether the process should be restarted: a worker thread died or is past its restart budget."""
        states = {name: t.status() for name, t in self.threads().items()}
        bad = [f"thread {name!r} {st['state']} after {st['restarts']} restart(s): {st['last_error'] or 'no error recorded'}"
               for name, st in states.items() if not st["healthy"]]
        return not bad, "; ".join(bad) or "ok", states

    def _open_candidate(self, path: Path) -> Backend:
        from inspect_edge.backends import open_backend

        if Path(path).suffix.lower() != ".onnx":
            raise ValueError("hot swap takes an .onnx model (ONNX Runtime); a TensorRT engine needs a restart")
        return open_backend(path, "onnxruntime", self.cfg.model.threads)

    # ---- sinks and callbacks (inference thread) ----------------------------
    def _model_loaded(self, backend: Backend) -> None:
        info = backend.info
        self.metrics.set_model(info.model_version, backend.name, backend.precision)
        log.info("model %s %s on %s (%s); input %dx%d; classes %s", info.arch, info.model_version,
                 backend.name, backend.precision, info.input_height, info.input_width, list(info.classes))
        if not self.stopping.is_set():
            for cap in self.cameras.values():
                cap.start()  # a second call (after a hot swap) is a no-op

    def _observe(self, result: FrameResult) -> None:
        self.metrics.observe(result, self.pipeline.info.classes)

    # ---- what the endpoints report -----------------------------------------
    def camera_state(self, name: str) -> tuple[bool, str]:
        """(delivering, why not) for one camera."""
        cap = self.cameras[name]
        c = cap.counts()
        if c.finished:
            return False, f"source ended ({cap.source.spec})" + (f": {c.last_error}" if c.last_error else "")
        if not c.up:
            return False, f"source down: {c.last_error or 'connecting'}"
        now = time.monotonic()
        age = now - c.last_frame_mono if c.last_frame_mono else None
        if age is None or age > self.cfg.server.ready_stale_s:
            return False, "source connected but no recent frame"
        flowing = now - c.streak_start_mono
        if flowing < self.cfg.server.ready_recover_s:
            return False, f"source recovering: frames flowing for {flowing:.1f} s of {self.cfg.server.ready_recover_s:g} s"
        return True, "ok"

    def camera_states(self) -> dict[str, tuple[bool, str]]:
        return {name: self.camera_state(name) for name in self.cameras}

    def readiness(self, states: dict[str, tuple[bool, str]] | None = None) -> tuple[bool, str]:
        """Ready: the model is loaded and at least one camera delivers (`states`: camera_states(), if already read)."""
        if self.pipeline.load_error:  # "model not loaded: ..." or "model refused: ..."
            return False, self.pipeline.load_error
        if not self.pipeline.ready.is_set():
            return False, "model loading"
        states = states if states is not None else self.camera_states()
        if len(states) == 1:
            return next(iter(states.values()))
        down = [f"{name}: {why}" for name, (ok, why) in states.items() if not ok]
        if len(down) == len(states):
            return False, "no camera delivers (" + "; ".join(down) + ")"
        return True, "ok" if not down else f"ok; {len(down)} of {len(states)} camera(s) down ({'; '.join(down)})"

    def _per_metre(self, pipe) -> dict:
        if not self.cfg.tracking.strip_speed_m_s:
            return {}
        m = pipe.strip_metres
        return {"strip_metres": round(m, 2),
                "per_metre": {c: (round(n / m, 4) if m > 0 else None) for c, n in pipe.defects.items()}}

    def _camera_stats(self, name: str, classes: list[str], state: tuple[bool, str]) -> dict:
        cap = self.cameras[name]
        c, pipe = cap.counts(), self.pipeline.counts(name)
        dropped = dict(c.dropped)
        dropped["error"] = dropped.get("error", 0) + pipe.errors
        ok, why = state
        window, latest = self.live.window_counts(name), self.live.latest_of(name)
        return {
            "name": name, "spec": cap.source.spec, "kind": cap.source.kind, "roi": list(cap.roi) if cap.roi else None,
            "delivering": ok, "reason": why, "up": c.up, "finished": c.finished, "reconnects": c.reconnects,
            "last_error": c.last_error,
            "frames": {"captured": c.captured, "processed": pipe.processed, "dropped": dropped},
            "fps": {"capture": round(cap.capture_fps(), 2), "processed": round(self.pipeline.processed_fps(camera=name), 2)},
            "frame_age_ms": self.live.latency_summary(name),
            "defects": {"total": pipe.defects, "detections_per_frame": pipe.detections, **self._per_metre(pipe),
                        "in_window": {k: window.get(k, 0) for k in classes}},
            "last_frame": None if latest is None else {
                "seq": latest.seq, "time": latest.capture_time, "defects": len(latest.defects),
                "shape": list(latest.image.shape), "tiles": latest.tiles},
        }

    def stats(self) -> dict:
        """Totals over the cameras at the top, then each camera; `source` is the first camera's (one-camera clients)."""
        pipe, info = self.pipeline.counts(), self.pipeline.info
        states = self.camera_states()
        ready, reason = self.readiness(states)
        classes = list(info.classes) if info else []
        cameras = [self._camera_stats(name, classes, states[name]) for name in self.cameras]
        dropped: dict[str, int] = {}
        for cam in cameras:
            for k, n in cam["frames"]["dropped"].items():
                dropped[k] = dropped.get(k, 0) + n
        window = self.live.window_counts()
        first = cameras[0]
        latest = self.live.latest
        return {
            "ready": ready, "ready_reason": reason,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "model": None if info is None else {
                "version": info.model_version, "arch": info.arch, "backend": self.pipeline.backend_name,
                "precision": self.pipeline.precision, "input": [info.input_height, info.input_width],
                "classes": [{"name": c, "color": class_color_hex(k)} for k, c in enumerate(classes)]},
            "source": {k: first[k] for k in ("spec", "kind", "up", "finished", "reconnects", "last_error")},
            "cameras": cameras,
            "frames": {"captured": sum(c["frames"]["captured"] for c in cameras), "processed": pipe.processed,
                       "dropped": dropped},
            "fps": {"capture": round(sum(c["fps"]["capture"] for c in cameras), 2),
                    "processed": round(self.pipeline.processed_fps(), 2)},
            **self.live.timing_summary(),
            "defects": {"total": pipe.defects, "detections_per_frame": pipe.detections,
                        **self._per_metre(pipe),
                        "window_s": self.cfg.server.recent_window_s,
                        "in_window": {c: window.get(c, 0) for c in classes}},
            "last_frame": None if latest is None else {
                "seq": latest.seq, "time": latest.capture_time, "defects": len(latest.defects),
                "shape": list(latest.image.shape), "tiles": latest.tiles, "camera": latest.camera},
            "events": self.events.counts(),
        }
