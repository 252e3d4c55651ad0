"""The bench record as JSON, the same numbers as a Markdown page, and the targets checked."""

from __future__ import annotations

import json
import math
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

NO_GPU = "not measured: no GPU in this environment"


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("onnxruntime", "numpy", "opencv-python-headless", "torch", "tensorrt"):
        try:
            versions[pkg] = version(pkg)   # metadata only: importing torch here is not allowed
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def _fps(engine: list[dict], model: str, contender: str, best: bool, threads: int | None) -> dict | None:
    rows = [r for r in engine if r["model"] == model and r["contender"] == contender and r["threads"] == threads]
    if not rows:
        return None
    return max(rows, key=lambda r: r["fps"]) if best else next((r for r in rows if r["batch"] == 1), None)


def evaluate_targets(record: dict) -> list[dict]:
    """One line per target: what was measured and whether it was met (None: not measured)."""
    out = _evaluate(record)
    for t in out:   # numpy booleans would reach the JSON as strings
        t["met"] = None if t["met"] is None else bool(t["met"])
    return out


def _evaluate(record: dict) -> list[dict]:
    out = []
    engine = record.get("engine", [])
    thread_counts = sorted({r["threads"] for r in engine if r["contender"] == "onnxruntime-cpu"}) or [None]
    for m in record.get("models", []):
        for threads, best in ((t, b) for t in thread_counts for b in (False, True)):
            ort = _fps(engine, m["label"], "onnxruntime-cpu", best, threads)
            pt = _fps(engine, m["label"], "pytorch-eager-cpu", best, threads)
            where = f"{threads} thread(s), " + ("best batch" if best else "batch 1")
            if ort and pt:
                ratio = ort["fps"] / pt["fps"]
                out.append({"target": f"{m['label']}: ONNX Runtime >= 1.5x PyTorch eager (CPU, {where})",
                            "measured": f"{ratio:.2f}x ({ort['fps']:.1f} vs {pt['fps']:.1f} frames/s)",
                            "met": ratio >= 1.5})
            else:
                out.append({"target": f"{m['label']}: ONNX Runtime >= 1.5x PyTorch eager (CPU, {where})",
                            "measured": "not measured (PyTorch eager not available)", "met": None})
    for a in record.get("agreement", []):
        if a["reference"].startswith("pytorch-eager-cpu") and a["candidate"] == "onnxruntime-cpu":
            note = " (random weights)" if a["random_weights"] else ""
            empty = f"; classes with no positives: {a['empty_classes']}" if a["empty_classes"] else ""
            out.append({"target": f"{a['model']}: mask Dice PyTorch vs ONNX Runtime > 0.999{note}",
                        "measured": f"min over classes {a['min_dice']:.5f}{empty}", "met": a["min_dice"] > 0.999})
    p = record.get("pipeline")
    if p:
        out.append({"target": "pipeline throughput >= 0.9 x engine-only",
                    "measured": f"{p['ratio_pipeline_to_engine']:.3f} ({p['pipeline_fps']:.2f} vs "
                                f"{p['engine']['fps']:.2f} frames/s)",
                    "met": p["ratio_pipeline_to_engine"] >= 0.9})
        s = p["share_of_inference"]
        out.append({"target": "post-processing < 5% of inference time",
                    "measured": f"{100 * s['postprocess']:.2f}%", "met": s["postprocess"] < 0.05})
        out.append({"target": "instrumentation (metrics) < 1% of inference time",
                    "measured": f"{100 * s['metrics']:.3f}%", "met": s["metrics"] < 0.01})
        f = p["freshness"]["age_at_result_periods"]
        out.append({"target": f"source at {p['config']['rate_factor']:g}x inference rate: p99 frame age "
                              "<= 2 inference periods",
                    "measured": f"p99 {f['p99']:.2f} periods (p50 {f['p50']:.2f})", "met": f["p99"] <= 2.0})
        fr = p["frames"]
        out.append({"target": "dropped == captured - processed",
                    "measured": f"{fr['dropped_total']} == {fr['captured']} - {fr['processed']}",
                    "met": fr["drop_identity_holds"]})
    gpu_rows = [r for r in engine if r["device"] == "cuda"]
    out.append({"target": "GPU throughput at batch 1 and best batch per model size",
                "measured": f"{len(gpu_rows)} GPU row(s)" if gpu_rows else NO_GPU,
                "met": None})
    return out


def write_json(record: dict, path: Path) -> Path:
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def _f(x, digits=1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(record: dict) -> str:
    m = record["machine"]
    cfg = record["config"]
    lines = [f"## inspect-edge bench, {record['created']}", "",
             f"- Machine: {m['cpu']}, {m['cores']} CPU core(s), {m['platform']}, Python {m['python']}",
             f"- Load average (1/5/15 min) before: {m['load_avg_1_5_15']}, after: {record.get('load_after')}",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- Threads: each CPU contender timed with {cfg['threads']} intra-op thread(s) "
             "(ONNX Runtime: 1 inter-op thread, spinning off; PyTorch: torch.set_num_threads); "
             f"pipeline run with {record['pipeline']['threads'] if record.get('pipeline') else '-'}",
             f"- Command: `{record['command']}`", ""]
    lines += ["### Models", "", "| model | input | origin | weights | file |", "|---|---|---|---|---|"]
    for mod in record["models"]:
        lines.append(f"| {mod['label']} | {mod['input'][0]}x{mod['input'][1]} | {mod['origin']} | "
                     f"{'random (speed only)' if mod['random_weights'] else 'trained'} | `{mod['onnx']}` |")
    lines += ["", "### Engines (same inputs, contenders alternated; warm-up excluded)", "",
              "Latency is per call (one batch); throughput is frames per second sustained. "
              "**bold** = best batch of that contender.", "",
              "| model | contender | device | threads | batch | median ms | p99 ms | frames/s | n |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in record["engine"]:
        b = f"**{r['batch']}**" if r.get("best_batch") else str(r["batch"])
        lines.append(f"| {r['model']} | {r['contender']} | {r['device']} | {r['threads'] or '-'} | {b} | "
                     f"{_f(r['median_ms'])} | {_f(r['p99_ms'])} | {_f(r['fps'])} | {r['n']} |")
    if not any(r["device"] == "cuda" for r in record["engine"]):
        lines.append(f"| all | GPU (TensorRT FP16 / PyTorch CUDA FP16) | cuda | - | - | - | - | {NO_GPU} | - |")
    if record.get("skipped"):
        # "model: reason" lines, one per model: shown once per reason with the models listed.
        by_reason: dict[str, list[str]] = {}
        for s in record["skipped"]:
            label, _, reason = s.partition(": ") if ": not" in s.partition(": ")[2] else ("", "", s)
            by_reason.setdefault(reason, []).append(label)
        lines += ["", "Not measured:", ""]
        lines += [f"- {r}" + (f" (models: {', '.join(m for m in ms if m)})" if any(ms) else "")
                  for r, ms in by_reason.items()]
    if record.get("agreement"):
        lines += ["", "### Mask agreement (model's thresholds and minimum areas, pooled per class)", "",
                  "| model | reference | candidate | images | min Dice | max abs logit diff | classes with no positives |",
                  "|---|---|---|---|---|---|---|"]
        for a in record["agreement"]:
            w = " (random weights)" if a["random_weights"] else ""
            lines.append(f"| {a['model']}{w} | {a['reference']} | {a['candidate']} | {a['images']} | "
                         f"{a['min_dice']:.5f} | {a['max_abs_logit_diff']:.2e} | {', '.join(a['empty_classes']) or '-'} |")
    p = record.get("pipeline")
    if p:
        pf = p["per_frame_ms"]
        w = ", random weights" if p.get("random_weights") else ""
        lines += ["", f"### Pipeline vs engine alone ({p['model_label']}{w}, frame {p['frame'][0]}x{p['frame'][1]} "
                  f"-> {p['tiles_per_frame']} tile(s) of {p['input'][0]}x{p['input'][1]})", "",
                  f"- Engine alone: {_f(p['engine']['fps'], 2)} frames/s ({_f(p['engine']['mean_ms'])} ms per frame, "
                  f"= one inference period)",
                  f"- Whole pipeline: {_f(p['pipeline_fps'], 2)} frames/s; "
                  f"**ratio {p['ratio_pipeline_to_engine']:.3f}**",
                  f"- Source: replayed frames at {_f(p['source_fps_target'])} frames/s target "
                  f"({_f(p['source_fps_achieved'])} achieved), for {p['config']['seconds']:g} s; "
                  f"one live-view viewer at {p['config']['viewer_fps']:g} frames/s", "",
                  "| where the time goes (mean ms per processed frame) | ms | share of wall |", "|---|---|---|"]
        wall = pf["wall"] or float("nan")
        for key, label in (("preprocess", "pre-processing (tile + normalise)"), ("inference", "inference"),
                           ("postprocess", "post-processing (stitch, thresholds, components)"),
                           ("metrics", "metrics (Prometheus observe)"), ("live_view_sink", "live-view sink"),
                           ("other_wait", "waiting for a frame / scheduling"), ("wall", "wall time per frame")):
            lines.append(f"| {label} | {_f(pf[key], 2)} | {_f(100 * pf[key] / wall)}% |")
        lines.append(f"| capture read, capture thread (per captured frame) | {_f(pf['capture_read_other_thread'], 2)} | - |")
        lines.append(f"| live-view JPEG encode, viewer thread (per encode, {p['live_view_encodes']} encodes) | "
                     f"{_f(pf['live_view_encode_other_thread'], 2)} | - |")
        f, fr = p["freshness"], p["frames"]
        lines += ["", "### Freshness under a fast source", "",
                  f"- Source at {p['config']['rate_factor']:g}x the engine rate; inference period "
                  f"{_f(p['inference_period_ms'])} ms",
                  f"- Age of processed frames, capture to result: p50 {f['age_at_result_periods']['p50']:.2f}, "
                  f"p99 {f['age_at_result_periods']['p99']:.2f} periods "
                  f"({_f(f['age_at_result_ms']['p50'])} / {_f(f['age_at_result_ms']['p99'])} ms)",
                  f"- Age when inference starts: p50 {f['age_at_inference_start_periods']['p50']:.2f}, "
                  f"p99 {f['age_at_inference_start_periods']['p99']:.2f} periods",
                  f"- Frames: captured {fr['captured']}, processed {fr['processed']}, dropped {fr['dropped_total']} "
                  f"({', '.join(f'{k} {v}' for k, v in fr['dropped'].items() if v) or 'none'}); "
                  f"captured - processed = {fr['captured_minus_processed']} "
                  f"({'identity holds' if fr['drop_identity_holds'] else 'IDENTITY BROKEN'})"]
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in record["targets"]:
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    for note in record.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"
