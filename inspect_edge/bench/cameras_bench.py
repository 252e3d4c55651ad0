"""`inspect-edge bench --cameras 1,2,4`: one model serving several cameras.

Each camera is a replay source of its own pre-rendered strip frames at a fixed
rate (`camera_fps`), read by its own capture thread, as the service runs them;
each camera count runs twice: "aligned", all cameras started together as
cameras triggered by one line encoder are (the hardest case for a shared model:
their frames arrive at the same moment, so the last of them waits for the
others), and "staggered", free-running cameras evenly out of phase. The
service's own parts run: InspectionPipeline (one inference thread, each round
batching the newest frame of every camera), ServiceMetrics and LiveView.

Per camera: frames captured, processed and dropped, and the age of a frame when
its defects are known (capture to result), in milliseconds and in inference
periods (the engine alone on one frame, timed first on the same model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from inspect_edge.bench.pipeline_bench import PipelineBenchConfig, ReplaySource, time_engine_alone


def _pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


PHASES = ("aligned", "staggered")


def run_one(model_path: Path, n: int, camera_fps: float, seconds: float, threads: int | None,
            frame_hw: tuple[int, int], period_s: float, phase: str = "aligned", backend: str = "onnxruntime") -> dict:
    from inspect_edge.backends import open_backend
    from inspect_edge.bench.runner import strip_frames
    from inspect_edge.metrics import ServiceMetrics
    from inspect_edge.pipeline import CameraFeed, InspectionPipeline
    from inspect_edge.server.live import LiveView
    from inspect_edge.sources.capture import LatestFrameCapture

    names = [f"cam{k}" for k in range(n)]
    captures = {name: LatestFrameCapture(ReplaySource(strip_frames(*frame_hw, n=8, seed=k), camera_fps), name=f"capture:{name}")
                for k, name in enumerate(names)}
    metrics, live = ServiceMetrics(), LiveView()
    records: list[tuple[str, float, int, float]] = []  # camera, capture-to-result s, frames in its batch, batch inference s
    pipeline: InspectionPipeline
    pipeline = InspectionPipeline(
        [CameraFeed(name, cap) for name, cap in captures.items()], lambda: open_backend(model_path, backend, threads),
        sinks=[lambda r: metrics.observe(r, pipeline.info.classes), live,
               lambda r: records.append((r.camera, r.latency_s, r.batch_frames, r.stage_s["inference"] * r.batch_frames))])
    metrics.bind(captures, pipeline)
    pipeline.start()
    if not pipeline.ready.wait(120):
        pipeline.stop()
        raise RuntimeError(f"cameras bench: model not ready ({pipeline.load_error or 'timeout'})")
    for cap in captures.values():
        cap.start()
        if phase == "staggered":
            time.sleep(1.0 / (camera_fps * n))
    time.sleep(seconds)
    for cap in captures.values():
        cap.stop(timeout=5.0)
    pipeline.stop(timeout=60.0)
    per_camera = {}
    for name, cap in captures.items():
        c, p = cap.counts(), pipeline.counts(name)
        ages = [rec[1] for rec in records if rec[0] == name]
        dropped = dict(c.dropped)
        dropped["error"] = dropped.get("error", 0) + p.errors
        p99 = _pct(ages, 99)
        per_camera[name] = {
            "captured": c.captured, "processed": p.processed, "dropped": dropped,
            "age_ms": {"p50": _pct(np.array(ages) * 1e3, 50), "p99": None if p99 is None else p99 * 1e3},
            "age_p99_periods": None if p99 is None else p99 / period_s,
        }
    batches = [rec[2] for rec in records]
    batch_s = float(np.mean([rec[3] for rec in records])) if records else float("nan")
    worst_p99 = max((v["age_p99_periods"] or float("inf")) for v in per_camera.values())
    stale = sum(v["dropped"]["stale"] + v["dropped"]["error"] for v in per_camera.values())
    return {
        "cameras": n, "phase": phase, "camera_fps": camera_fps, "seconds": seconds,
        "processed_fps": sum(v["processed"] for v in per_camera.values()) / seconds,
        "offered_fps": n * camera_fps,
        "mean_frames_per_batch": float(np.mean(batches)) if batches else 0.0,
        "mean_batch_inference_ms": batch_s * 1e3,
        "per_camera": per_camera, "worst_age_p99_periods": worst_p99,
        # The same age in rounds: one batched inference of all cameras' newest frames.
        "worst_age_p99_batches": max((v["age_ms"]["p99"] or float("inf")) for v in per_camera.values()) / (batch_s * 1e3),
        "dropped_stale_or_error": stale,
        "all_processed": stale == 0,
        "target_met": bool(stale == 0 and worst_p99 < 2.0),
    }


def run_cameras_bench(model_path: str | Path, counts: Sequence[int], *, camera_fps: float = 5.0, seconds: float = 20.0,
                      threads: int | None = None, frame_hw: tuple[int, int] = (256, 1600),
                      log: Callable[[str], None] = print) -> dict:
    from inspect_edge.bench.runner import strip_frames

    model_path = Path(model_path)
    times, info, tiles = time_engine_alone(model_path, strip_frames(*frame_hw, n=8), threads, PipelineBenchConfig(), 3.0)
    period_s = float(np.mean(times))
    log(f"  engine alone: {period_s * 1e3:.1f} ms per {frame_hw[0]}x{frame_hw[1]} frame ({tiles} tile(s)), "
        f"{threads or 'default'} thread(s)")
    rows = []
    for n, phase in ((n, ph) for n in counts for ph in (PHASES if n > 1 else PHASES[:1])):
        row = run_one(model_path, n, camera_fps, seconds, threads, frame_hw, period_s, phase)
        rows.append(row)
        ages = ", ".join(f"{k} p99 {v['age_ms']['p99']:.0f} ms" for k, v in row["per_camera"].items() if v["age_ms"]["p99"])
        log(f"  {n} camera(s) {phase} at {camera_fps:g} frames/s: processed {row['processed_fps']:.1f} of {row['offered_fps']:g} "
            f"frames/s, {row['mean_frames_per_batch']:.2f} frames per batch; {ages}; "
            f"stale/error drops {row['dropped_stale_or_error']}")
    return {"model": str(model_path), "input": [info.input_height, info.input_width], "frame": list(frame_hw),
            "tiles_per_frame": tiles, "threads": threads, "inference_period_ms": period_s * 1e3, "rows": rows}


def to_markdown(record: dict, command: str) -> str:
    lines = ["# Many cameras, one model", "",
             f"`{command}`; model `{Path(record['model']).name}`, {record['frame'][0]}x{record['frame'][1]} frames "
             f"({record['tiles_per_frame']} tile(s)), {record['threads'] or 'default'} inference thread(s); "
             f"inference period (engine alone, one frame) {record['inference_period_ms']:.1f} ms. Aligned: all cameras "
             "start together (encoder-triggered line cameras), their frames arrive at the same moment; staggered: "
             "free-running cameras evenly out of phase.", "",
             "| cameras | phase | offered frames/s | processed frames/s | frames per batch | batch inference ms | stale + error drops | "
             "frame age p50 / p99 ms (per camera) | worst p99 in periods | in batches | all processed, p99 < 2 periods |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        ages = "; ".join(f"{k} {v['age_ms']['p50']:.0f} / {v['age_ms']['p99']:.0f}" for k, v in r["per_camera"].items()
                         if v["age_ms"]["p99"] is not None)
        lines.append(f"| {r['cameras']} | {r['phase']} | {r['offered_fps']:g} | {r['processed_fps']:.1f} | {r['mean_frames_per_batch']:.2f} | "
                     f"{r['mean_batch_inference_ms']:.1f} | {r['dropped_stale_or_error']} | {ages} | {r['worst_age_p99_periods']:.2f} | "
                     f"{r['worst_age_p99_batches']:.2f} | "
                     f"{'yes' if r['target_met'] else 'NO'} |")
    return "\n".join(lines) + "\n"
