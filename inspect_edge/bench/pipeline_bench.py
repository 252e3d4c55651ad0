"""The whole pipeline against the engine alone, on the same model and frames.

1. Engine alone: the model runs the pre-processed tile batches of the frames,
   back to back; its mean time per frame is the *inference period*.
2. Pipeline: the service's own parts (LatestFrameCapture, InspectionPipeline,
   ServiceMetrics, LiveView with one viewer pulling JPEGs at the live page's
   rate) fed by a replay source running at `rate_factor` times the engine rate,
   so inference, not the source, sets the pace. The same run gives the
   freshness numbers: the age of processed frames and the drops.

The replay source hands out copies of frames rendered beforehand, as a camera
driver hands out fresh buffers; its own cost is measured as "capture".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inspect_edge.bench.timing import summarize
from inspect_edge.sources.base import Pacer, Source


@dataclass(frozen=True)
class PipelineBenchConfig:
    seconds: float = 10.0          # how long the pipeline runs (after the model is ready)
    engine_seconds: float = 3.0    # how long the engine alone is timed
    rate_factor: float = 2.0       # source rate / engine-alone inference rate
    viewer_fps: float = 15.0       # one live-page viewer (the service's default stream cap)
    fit: str = "tile"
    backend: str = "onnxruntime"
    preview_max_width: int | None = 800  # the live stream's width cap (the service's server.preview_max_width)


class ReplaySource(Source):
    """Pre-rendered frames at a fixed rate, forever; times its own reads."""
    kind = "replay"
    live = True

    def __init__(self, frames: Sequence[np.ndarray], fps: float) -> None:
        super().__init__("replay")
        self.frames, self.fps = list(frames), fps
        self._pacer = Pacer(fps)
        self._i = 0
        self.read_s: list[float] = []

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        self._pacer.wait()
        t0 = time.perf_counter()
        image = self.frames[self._i % len(self.frames)].copy()
        self._i += 1
        self.read_s.append(time.perf_counter() - t0)
        return image


def _ms(values) -> float:
    return float(np.mean(values) * 1e3) if len(values) else 0.0


def _pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def time_engine_alone(model_path: Path, frames: Sequence[np.ndarray], threads: int | None,
                      cfg: PipelineBenchConfig, seconds: float) -> tuple[list[float], object, int]:
    """Seconds per frame of the engine alone on the frames' tile batches; the ModelInfo; tiles per frame."""
    from inspect_edge.backends import open_backend
    from inspect_edge.preprocess import Preprocessor

    backend = open_backend(model_path, cfg.backend, threads)
    try:
        pre = Preprocessor(backend.info, cfg.fit)
        batches = [pre.to_batch(f)[0].copy() for f in frames]
        step = max(1, backend.max_batch)

        def one(b):
            for i in range(0, len(b), step):
                backend.infer(b[i:i + step])

        one(batches[0])
        one(batches[-1])
        times, t_end, i = [], time.monotonic() + seconds, 0
        while time.monotonic() < t_end or len(times) < 5:
            t0 = time.perf_counter()
            one(batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
            i += 1
        return times, backend.info, len(batches[0])
    finally:
        backend.close()


def run_pipeline_bench(model_path: str | Path, frames: Sequence[np.ndarray], threads: int | None,
                       cfg: PipelineBenchConfig = PipelineBenchConfig(),
                       log: Callable[[str], None] = print) -> dict:
    from inspect_edge.backends import open_backend
    from inspect_edge.metrics import ServiceMetrics
    from inspect_edge.pipeline import InspectionPipeline
    from inspect_edge.server.live import LiveView
    from inspect_edge.sources.capture import LatestFrameCapture

    model_path = Path(model_path)
    # The engine is timed before and after the pipeline and the two pooled, so a
    # load change on a shared machine does not favour one side of the ratio.
    before, info, tiles = time_engine_alone(model_path, frames, threads, cfg, cfg.engine_seconds / 2)
    engine = summarize(before, 1)
    period_s = engine.mean_ms / 1e3
    source_fps = cfg.rate_factor / period_s
    log(f"  engine alone: {engine.mean_ms:.1f} ms per frame ({tiles} tile(s)), {engine.fps:.1f} frames/s; "
        f"source at {source_fps:.1f} frames/s for {cfg.seconds:g} s")

    source = ReplaySource(frames, source_fps)
    capture = LatestFrameCapture(source)
    metrics, live = ServiceMetrics(), LiveView(preview_max_width=cfg.preview_max_width)
    sink_s: dict[str, list[float]] = {"metrics": [], "live_view": []}
    records: list[tuple[float, dict, float]] = []   # (done monotonic, stage seconds, capture-to-result)
    pipeline: InspectionPipeline

    def timed(name, fn):
        def sink(result):
            t0 = time.perf_counter()
            fn(result)
            sink_s[name].append(time.perf_counter() - t0)
        return sink

    def record(result):
        records.append((time.monotonic(), dict(result.stage_s), result.latency_s))

    pipeline = InspectionPipeline(
        capture, lambda: open_backend(model_path, cfg.backend, threads), fit=cfg.fit,
        sinks=[timed("metrics", lambda r: metrics.observe(r, pipeline.info.classes)),
               timed("live_view", live), record])
    metrics.bind({"main": capture}, pipeline)

    encode_s: list[float] = []
    viewer_stop = threading.Event()

    def viewer():
        last = 0
        while not viewer_stop.wait(1.0 / cfg.viewer_fps):
            t0 = time.perf_counter()
            live.latest_jpeg("main", preview=True)  # what the live page's stream asks for
            if live.encodes != last:
                last = live.encodes
                encode_s.append(time.perf_counter() - t0)

    pipeline.start()
    if not pipeline.ready.wait(120):
        pipeline.stop()
        raise RuntimeError(f"pipeline bench: model not ready ({pipeline.load_error or 'timeout'})")
    viewer_thread = threading.Thread(target=viewer, name="viewer", daemon=True)
    capture.start()
    viewer_thread.start()
    time.sleep(cfg.seconds)
    # Order matters for the drop identity: stop the source first (a frame left in
    # the slot is counted as a shutdown drop), then let the model finish its frame.
    capture.stop(timeout=5.0)
    pipeline.stop(timeout=60.0)
    viewer_stop.set()
    viewer_thread.join(5.0)
    after, _, _ = time_engine_alone(model_path, frames, threads, cfg, cfg.engine_seconds / 2)
    engine_before, engine_after = engine, summarize(after, 1)
    engine = summarize(before + after, 1)
    period_s = engine.mean_ms / 1e3   # ages are stated in pooled inference periods
    t_scrape = time.perf_counter()
    metrics.render()
    scrape_s = time.perf_counter() - t_scrape

    cap, pipe = capture.counts(), pipeline.counts()
    dropped = dict(cap.dropped)
    dropped["error"] = dropped.get("error", 0) + pipe.errors
    dropped_total = sum(dropped.values())

    done = np.array([r[0] for r in records])
    fps = float((len(done) - 1) / (done[-1] - done[0])) if len(done) >= 2 else 0.0
    stage = {k: [r[1][k] for r in records] for k in ("preprocess", "inference", "postprocess")}
    latency = np.array([r[2] for r in records])
    start_age = latency - np.array([sum(r[1].values()) for r in records]) if len(records) else latency
    wall_ms = 1e3 / fps if fps else float("nan")
    per_frame = {
        "preprocess": _ms(stage["preprocess"]), "inference": _ms(stage["inference"]),
        "postprocess": _ms(stage["postprocess"]), "metrics": _ms(sink_s["metrics"]),
        "live_view_sink": _ms(sink_s["live_view"]),
    }
    on_thread = sum(per_frame.values())
    inf_ms = per_frame["inference"] or float("nan")
    result = {
        "model": str(model_path), "input": [info.input_height, info.input_width],
        "frame": list(frames[0].shape), "tiles_per_frame": tiles, "threads": threads,
        "config": asdict(cfg),
        "engine": engine.to_dict(),
        "engine_before_fps": engine_before.fps, "engine_after_fps": engine_after.fps,
        "inference_period_ms": period_s * 1e3,
        "source_fps_target": source_fps,
        "source_fps_achieved": cap.captured / cfg.seconds,
        "pipeline_fps": fps,
        "ratio_pipeline_to_engine": float(fps / engine.fps) if engine.fps else 0.0,
        # Mean milliseconds per processed frame, on the inference thread unless noted.
        "per_frame_ms": {
            **per_frame,
            "other_wait": max(wall_ms - on_thread, 0.0),   # waiting for a frame, scheduling
            "wall": wall_ms,
            "capture_read_other_thread": _ms(source.read_s),
            "live_view_encode_other_thread": _ms(encode_s),
        },
        "live_view_encodes": len(encode_s),
        "metrics_scrape_ms": scrape_s * 1e3,
        "share_of_inference": {
            "postprocess": per_frame["postprocess"] / inf_ms,
            "metrics": per_frame["metrics"] / inf_ms,
            "preprocess": per_frame["preprocess"] / inf_ms,
        },
        "freshness": {
            "processed": len(records),
            "age_at_result_periods": {"p50": _pct(latency, 50) / period_s, "p99": _pct(latency, 99) / period_s},
            "age_at_inference_start_periods": {"p50": _pct(start_age, 50) / period_s,
                                               "p99": _pct(start_age, 99) / period_s},
            "age_at_result_ms": {"p50": _pct(latency, 50) * 1e3, "p99": _pct(latency, 99) * 1e3},
        },
        "frames": {"captured": cap.captured, "processed": pipe.processed, "dropped": dropped,
                   "dropped_total": dropped_total,
                   "captured_minus_processed": cap.captured - pipe.processed,
                   "drop_identity_holds": bool(dropped_total == cap.captured - pipe.processed)},
    }
    f = result["freshness"]
    log(f"  pipeline: {fps:.1f} frames/s = {result['ratio_pipeline_to_engine']:.2f} x engine; "
        f"age p50 {f['age_at_result_periods']['p50']:.2f} / p99 {f['age_at_result_periods']['p99']:.2f} periods; "
        f"captured {cap.captured}, processed {pipe.processed}, dropped {dropped_total}")
    return result
