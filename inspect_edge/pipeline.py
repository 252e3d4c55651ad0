"""capture -> pre-process -> infer -> post-process -> sinks, on one inference thread.

The backend is built inside the inference thread by a factory: TensorRT binds
its CUDA context, buffers and stream to the thread that creates them, so a
backend made on another thread would fail there. Sinks (metrics, live view,
events) are plain callables run after each frame; a failing sink is logged and
never stops inspection. Before the first camera frame, warm-up runs one strip
frame through every stage and refuses a model whose output does not match its
metadata (class count, output size, finite logits): such a model would otherwise
drop every frame, or report defects at wrong coordinates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from inspect_edge.backends.base import Backend
from inspect_edge.config import TrackingConfig
from inspect_edge.model_info import ModelInfo
from inspect_edge.model_swap import ModelSwap
from inspect_edge.postprocess import Defect, analyse_logits
from inspect_edge.preprocess import FitMode, Preprocessor
from inspect_edge.sources.base import Frame
from inspect_edge.sources.capture import LatestFrameCapture
from inspect_edge.tracking import DefectTracker, Track, merge_fragments
from inspect_edge.worker import RateMeter, RepeatedFailureLog, SupervisedThread

log = logging.getLogger(__name__)

STAGES = ("preprocess", "inference", "postprocess")
WARMUP_FRAME = (256, 1600)  # the strip camera's frame: warm-up checks tiling and stitching as frames will use them


@dataclass
class FrameResult:
    seq: int
    capture_time: float
    image: np.ndarray                  # uint8 (H, W), the frame as captured
    masks: np.ndarray                  # bool (K, H, W) after thresholds and minimum areas
    defects: list[Defect]
    stage_s: dict[str, float]          # seconds per stage, keys STAGES
    latency_s: float                   # capture to result, including the wait for the model
    area_share: tuple[float, ...]      # per class: flagged pixels / frame pixels
    tiles: int
    track_ids: list[int] = field(default_factory=list)   # per defect: the physical defect it belongs to
    started: list[Track] = field(default_factory=list)   # physical defects first seen in this frame
    closed: list[Track] = field(default_factory=list)    # physical defects that left the view
    strip_speed_px: float = 0.0                          # the tracker's estimate, px per captured frame
    model_version: str = ""                              # the model that produced it (hot swaps change it)


@dataclass
class PipelineCounts:
    processed: int = 0
    errors: int = 0                    # frames dropped because inference or post-processing failed
    defects: dict[str, int] = field(default_factory=dict)      # physical defects (tracks), by class
    detections: dict[str, int] = field(default_factory=dict)   # defects seen per frame, by class
    strip_metres: float = 0.0          # strip inspected, when the line speed is configured


def infer_tiles(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """(tiles, K, h, w) logits of one frame's tiles, through the model together in chunks it accepts."""
    step = max(1, backend.max_batch)
    parts = [backend.infer(batch[i:i + step]) for i in range(0, len(batch), step)]
    logits = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if not np.isfinite(logits).all():
        raise ValueError(f"model output holds {np.count_nonzero(~np.isfinite(logits))} NaN or infinite values")
    return logits


def check_backend(backend: Backend, pre: Preprocessor) -> str:
    """Run one strip frame through every stage; the reason it cannot run, or '' when it can."""
    try:
        backend.warmup(1)
    except Exception as e:
        return f"warm-up inference failed: {type(e).__name__}: {e}"
    h, w = WARMUP_FRAME
    image = np.tile(np.linspace(40, 200, w, dtype=np.uint8), (h, 1))
    try:
        batch, plan = pre.to_batch(image)
        analyse_logits(pre.stitch(infer_tiles(backend, batch), plan), backend.info)
    except Exception as e:
        return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    return ""


class InspectionPipeline:
    def __init__(self, capture: LatestFrameCapture, backend_factory: Callable[[], Backend], *,
                 fit: FitMode = "tile", overlap: int = 32,
                 sinks: Sequence[Callable[[FrameResult], None]] = (),
                 on_model_loaded: Callable[[Backend], None] | None = None,
                 tracking: TrackingConfig | None = None, swap: ModelSwap | None = None) -> None:
        self.capture = capture
        self.swap = swap
        self.tracking = tracking or TrackingConfig()
        self.tracker = self._new_tracker()
        self.backend_factory = backend_factory
        self.fit, self.overlap = fit, overlap
        self.sinks = list(sinks)
        self.on_model_loaded = on_model_loaded
        self.info: ModelInfo | None = None
        self.current_backend: Backend | None = None  # production, as the inference thread last set it
        self.backend_name = ""
        self.precision = ""
        self.load_error = ""
        self.ready = threading.Event()     # model loaded and warmed up
        self._counts = PipelineCounts()
        self._last_capture_time: float | None = None
        self._lock = threading.Lock()
        self._rate = RateMeter()               # completion times, for the processed rate
        self._frame_failures = RepeatedFailureLog(log, "frame inference")
        self._shadow_failures = RepeatedFailureLog(log, "candidate model (shadow)")
        self._sink_failures: dict[int, RepeatedFailureLog] = {}
        self._worker = SupervisedThread(self._run, "inference")
        self._stop = self._worker.stop_event

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._worker.stop(timeout)

    @property
    def running(self) -> bool:
        return self._worker.running

    @property
    def thread(self) -> SupervisedThread:
        return self._worker

    def counts(self) -> PipelineCounts:
        with self._lock:
            c = self._counts
            return PipelineCounts(c.processed, c.errors, dict(c.defects), dict(c.detections), c.strip_metres)

    def processed_fps(self, window_s: float = 5.0) -> float:
        with self._lock:
            return self._rate.rate(window_s)

    # ---- inference thread --------------------------------------------------
    def _run(self) -> None:
        """The supervised target: an exception escaping here restarts it (and reloads the model)."""
        try:
            backend = self.backend_factory()
        except Exception as e:  # any loader failure must reach /readyz, not kill silently
            self.load_error = f"model not loaded: {e or type(e).__name__}"
            log.error("%s", self.load_error)
            return
        try:
            pre = Preprocessor(backend.info, self.fit, self.overlap)
            refused = check_backend(backend, pre)
            if refused:
                self.load_error = f"model refused: {refused}"
                log.error("%s", self.load_error)
                return  # restarting cannot fix the model: /readyz says why, the process stays up
            self.load_error = ""
            self.info, self.backend_name, self.precision = backend.info, backend.name, backend.precision
            with self._lock:
                if not self._counts.defects:
                    self._counts.defects = {c: 0 for c in self.info.classes}
                    self._counts.detections = {c: 0 for c in self.info.classes}
            if self.on_model_loaded:
                self.on_model_loaded(backend)
            self.current_backend = backend
            self.ready.set()
            while not self._stop.is_set():
                if self.swap is not None and (new := self.swap.between_frames((backend, pre))) is not None:
                    backend, pre = new  # between two frames: none is dropped or counted twice
                    self.current_backend = backend
                    self.info, self.backend_name, self.precision = backend.info, backend.name, backend.precision
                    log.info("model %s now in production", backend.info.model_version)
                    if self.on_model_loaded:
                        self.on_model_loaded(backend)
                frame = self.capture.take(timeout=0.2)
                if frame is None:
                    continue
                try:
                    result = self._process(frame, backend, pre)
                except Exception:
                    self._frame_failures.failed(f"frame {frame.seq} dropped")
                    with self._lock:
                        self._counts.errors += 1
                    continue
                if self.swap is not None:
                    try:
                        self.swap.shadow(frame.seq, frame.image, result.masks, len(result.defects))
                    except Exception:  # a broken candidate never costs production a frame
                        self._shadow_failures.failed(f"frame {frame.seq} not shadowed")
                self._record(result)
                for sink in self.sinks:
                    try:
                        sink(result)
                    except Exception:
                        self._sink_failures.setdefault(id(sink), RepeatedFailureLog(
                            log, f"sink {getattr(sink, '__name__', type(sink).__name__)}")).failed(f"frame {frame.seq}")
        finally:
            self.ready.clear()
            backend.close()
            if self.swap is not None:
                self.swap.close_all(keep=backend)

    def _new_tracker(self) -> DefectTracker:
        t = self.tracking
        return DefectTracker(axis=t.axis_index, max_missed=t.max_missed, speed_px_per_frame=t.speed_px_per_frame,
                             max_shift_px=t.max_shift_px)

    def _process(self, frame: Frame, backend: Backend, pre: Preprocessor) -> FrameResult:
        info = backend.info
        t0 = time.perf_counter()
        batch, plan = pre.to_batch(frame.image)
        t1 = time.perf_counter()
        logits = infer_tiles(backend, batch)
        t2 = time.perf_counter()
        masks, defects = analyse_logits(pre.stitch(logits, plan), info, frame.capture_time)
        defects = merge_fragments(defects, self.tracking.merge_gap_px, self.tracking.axis_index)
        update = self.tracker.update(frame.seq, frame.capture_time, defects, frame.image.shape)
        pixels = float(masks.shape[1] * masks.shape[2])
        share = tuple(float(np.count_nonzero(m)) / pixels for m in masks)
        t3 = time.perf_counter()
        return FrameResult(
            seq=frame.seq, capture_time=frame.capture_time, image=frame.image, masks=masks,
            defects=defects, stage_s={"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2},
            latency_s=time.monotonic() - frame.capture_mono, area_share=share, tiles=plan.num_tiles,
            track_ids=update.track_ids, started=update.started, closed=update.closed,
            strip_speed_px=self.tracker.speed, model_version=info.model_version,
        )

    def _record(self, result: FrameResult) -> None:
        with self._lock:
            c = self._counts
            c.processed += 1
            for d in result.defects:
                c.detections[d.class_name] = c.detections.get(d.class_name, 0) + 1
            for t in result.started:
                c.defects[t.class_name] = c.defects.get(t.class_name, 0) + 1
            speed = self.tracking.strip_speed_m_s
            if speed and self._last_capture_time is not None:
                dt = result.capture_time - self._last_capture_time
                if 0 < dt <= 2.0:  # a longer gap is an outage: the strip under it was not inspected
                    c.strip_metres += speed * dt
            self._last_capture_time = result.capture_time
            self._rate.tick()
