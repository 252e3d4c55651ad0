"""cameras -> pre-process -> infer -> post-process -> sinks, on one inference thread.

Many cameras share one model: each round takes the newest frame of every camera
that has one and runs all their tiles through the model together, so every
camera is served once per round (a fast camera cannot starve a slow one; its
extra frames are dropped as stale, counted on that camera). Each camera keeps
its own tracker and counts.

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

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from inspect_edge.backends.base import Backend
from inspect_edge.config import DEFAULT_CAMERA, TrackingConfig
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
    camera: str = DEFAULT_CAMERA
    batch_frames: int = 1                                # frames (of all cameras) in its inference batch


@dataclass
class PipelineCounts:
    processed: int = 0
    errors: int = 0                    # frames dropped because inference or post-processing failed
    defects: dict[str, int] = field(default_factory=dict)      # physical defects (tracks), by class
    detections: dict[str, int] = field(default_factory=dict)   # defects seen per frame, by class
    strip_metres: float = 0.0          # strip inspected, when the line speed is configured

    def copy(self) -> PipelineCounts:
        return PipelineCounts(self.processed, self.errors, dict(self.defects), dict(self.detections), self.strip_metres)

    @staticmethod
    def total(parts: list[PipelineCounts]) -> PipelineCounts:
        """All cameras: frames and defects add up; the strip is one, so its metres are the longest any camera saw."""
        out = PipelineCounts()
        for c in parts:
            out.processed += c.processed
            out.errors += c.errors
            for mine, theirs in ((out.defects, c.defects), (out.detections, c.detections)):
                for k, n in theirs.items():
                    mine[k] = mine.get(k, 0) + n
            out.strip_metres = max(out.strip_metres, c.strip_metres)
        return out


@dataclass
class CameraFeed:
    """One camera as the inference thread sees it: its name and its newest-frame capture."""

    name: str
    capture: LatestFrameCapture


@dataclass
class _CameraState:
    feed: CameraFeed
    tracker: DefectTracker
    counts: PipelineCounts = field(default_factory=PipelineCounts)
    rate: RateMeter = field(default_factory=RateMeter)
    last_capture_time: float | None = None


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
    def __init__(self, cameras: LatestFrameCapture | Sequence[CameraFeed], backend_factory: Callable[[], Backend], *,
                 fit: FitMode = "tile", overlap: int = 32,
                 sinks: Sequence[Callable[[FrameResult], None]] = (),
                 on_model_loaded: Callable[[Backend], None] | None = None,
                 tracking: TrackingConfig | None = None, swap: ModelSwap | None = None) -> None:
        feeds = [CameraFeed(DEFAULT_CAMERA, cameras)] if isinstance(cameras, LatestFrameCapture) else list(cameras)
        if not feeds or len({f.name for f in feeds}) < len(feeds):
            raise ValueError(f"cameras must be at least one, with unique names; got {[f.name for f in feeds]}")
        self.swap = swap
        self.tracking = tracking or TrackingConfig()
        track_ids = itertools.count(1)  # one sequence for all cameras: a defect id names one defect in the service
        self._cameras = {f.name: _CameraState(f, self._new_tracker(track_ids)) for f in feeds}
        self._wake = threading.Event()
        for f in feeds:
            f.capture.on_frame = self._wake.set
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

    def counts(self, camera: str | None = None) -> PipelineCounts:
        """One camera's counts, or all cameras' together."""
        with self._lock:
            if camera is not None:
                return self._cameras[camera].counts.copy()
            return PipelineCounts.total([st.counts for st in self._cameras.values()])

    def processed_fps(self, window_s: float = 5.0, camera: str | None = None) -> float:
        with self._lock:
            return (self._rate if camera is None else self._cameras[camera].rate).rate(window_s)

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
                for st in self._cameras.values():
                    if not st.counts.defects:
                        st.counts.defects = {c: 0 for c in self.info.classes}
                        st.counts.detections = {c: 0 for c in self.info.classes}
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
                taken = self._newest_frames()
                if not taken:
                    continue
                for st, frame, result in self._process_round(taken, backend, pre):
                    if result is None:
                        with self._lock:
                            st.counts.errors += 1
                        continue
                    self._deliver(st, frame, result)
        finally:
            self.ready.clear()
            backend.close()
            if self.swap is not None:
                self.swap.close_all(keep=backend)

    def _new_tracker(self, ids) -> DefectTracker:
        t = self.tracking
        return DefectTracker(axis=t.axis_index, max_missed=t.max_missed, speed_px_per_frame=t.speed_px_per_frame,
                             max_shift_px=t.max_shift_px, ids=ids)

    def _newest_frames(self) -> list[tuple[_CameraState, Frame]]:
        """The newest frame of every camera that has one; waits briefly when none has."""
        self._wake.clear()  # before looking: a frame published after this sets it again
        taken = [(st, f) for st in self._cameras.values() if (f := st.feed.capture.take(timeout=0)) is not None]
        if not taken:
            self._wake.wait(0.2)
        return taken

    def _process_round(self, taken, backend: Backend, pre: Preprocessor):
        """(camera, frame, result or None) per frame; a frame that fails costs only itself,
        a failed batch inference costs the round."""
        info = backend.info
        prepared = []
        for st, frame in taken:
            t0 = time.perf_counter()
            try:
                batch, plan = pre.to_batch(frame.image)
            except Exception:
                self._frame_failures.failed(f"camera {st.feed.name} frame {frame.seq} dropped (pre-processing)")
                yield st, frame, None
                continue
            prepared.append((st, frame, batch, plan, time.perf_counter() - t0))
        if not prepared:
            return
        t1 = time.perf_counter()
        try:
            logits = infer_tiles(backend, np.concatenate([p[2] for p in prepared]) if len(prepared) > 1 else prepared[0][2])
        except Exception:
            self._frame_failures.failed(f"{len(prepared)} frame(s) dropped (inference)")
            for st, frame, *_ in prepared:
                yield st, frame, None
            return
        infer_s = time.perf_counter() - t1
        total_tiles = sum(p[3].num_tiles for p in prepared)
        start = 0
        for st, frame, batch, plan, pre_s in prepared:
            part = logits[start:start + plan.num_tiles]
            start += plan.num_tiles
            try:
                yield st, frame, self._finish_frame(st, frame, part, plan, pre, info, pre_s,
                                                    infer_s * plan.num_tiles / total_tiles, len(prepared))
            except Exception:
                self._frame_failures.failed(f"camera {st.feed.name} frame {frame.seq} dropped (post-processing)")
                yield st, frame, None

    def _finish_frame(self, st: _CameraState, frame: Frame, logits, plan, pre: Preprocessor, info: ModelInfo,
                      pre_s: float, infer_s: float, batch_frames: int) -> FrameResult:
        t2 = time.perf_counter()
        masks, defects = analyse_logits(pre.stitch(logits, plan), info, frame.capture_time)
        # The kept components are the masks' pixels exactly: summing their areas spares a pass over every mask.
        flagged = [0] * info.num_classes
        for d in defects:
            flagged[d.class_index] += d.area_px
        pixels = float(masks.shape[1] * masks.shape[2])
        share = tuple(n / pixels for n in flagged)
        defects = merge_fragments(defects, self.tracking.merge_gap_px, self.tracking.axis_index)
        update = st.tracker.update(frame.seq, frame.capture_time, defects, frame.image.shape)
        t3 = time.perf_counter()
        return FrameResult(
            seq=frame.seq, capture_time=frame.capture_time, image=frame.image, masks=masks,
            defects=defects, stage_s={"preprocess": pre_s, "inference": infer_s, "postprocess": t3 - t2},
            latency_s=time.monotonic() - frame.capture_mono, area_share=share, tiles=plan.num_tiles,
            track_ids=update.track_ids, started=update.started, closed=update.closed,
            strip_speed_px=st.tracker.speed, model_version=info.model_version, camera=st.feed.name,
            batch_frames=batch_frames,
        )

    def _deliver(self, st: _CameraState, frame: Frame, result: FrameResult) -> None:
        if self.swap is not None:
            try:
                self.swap.shadow(frame.seq, frame.image, result.masks, len(result.defects))
            except Exception:  # a broken candidate never costs production a frame
                self._shadow_failures.failed(f"frame {frame.seq} not shadowed")
        self._record(st, result)
        for sink in self.sinks:
            try:
                sink(result)
            except Exception:
                self._sink_failures.setdefault(id(sink), RepeatedFailureLog(
                    log, f"sink {getattr(sink, '__name__', type(sink).__name__)}")).failed(f"frame {frame.seq}")

    def _record(self, st: _CameraState, result: FrameResult) -> None:
        with self._lock:
            c = st.counts
            c.processed += 1
            for d in result.defects:
                c.detections[d.class_name] = c.detections.get(d.class_name, 0) + 1
            for t in result.started:
                c.defects[t.class_name] = c.defects.get(t.class_name, 0) + 1
            speed = self.tracking.strip_speed_m_s
            if speed and st.last_capture_time is not None:
                dt = result.capture_time - st.last_capture_time
                if 0 < dt <= 2.0:  # a longer gap is an outage: the strip under it was not inspected
                    c.strip_metres += speed * dt
            st.last_capture_time = result.capture_time
            st.rate.tick()
            self._rate.tick()
