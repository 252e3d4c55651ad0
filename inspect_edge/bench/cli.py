"""`inspect-edge bench`: mounted on the inspect-edge CLI as a command group (pyproject entry point)."""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option}: comma-separated integers, got {text!r}") from None


def _hw(text: str, option: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
        return h, w
    except ValueError:
        raise typer.BadParameter(f"{option}: HEIGHTxWIDTH, e.g. 256x512, got {text!r}") from None


@app.callback(invoke_without_command=True)
def bench(
    model: Optional[List[Path]] = typer.Option(None, "--model", "-m", help="Model to time (repeatable): .onnx, "
                                               "or a run folder / checkpoint .pt (PyTorch eager and Dice need one)."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Build random-weight models of these sizes "
                                        "(e.g. nano,small,base; needs torch). Default when no --model."),
    input_size: str = typer.Option("256x512", "--input", help="Model input HxW for --sizes."),
    batches: str = typer.Option("1,2,4", "--batches", help="Batch sizes to time; the best is reported."),
    threads: str = typer.Option(",".join(map(str, sorted({1, os.cpu_count() or 1}))), "--threads",
                                help="CPU thread counts to time each CPU engine with; the pipeline uses the largest."),
    seconds: float = typer.Option(3.0, "--seconds", help="Timing budget per model and batch (all contenders)."),
    min_iters: int = typer.Option(5, "--min-iters", min=1, help="Timed calls per contender at least."),
    warmup: int = typer.Option(2, "--warmup", min=1, help="Untimed calls per contender first."),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Time the whole pipeline too."),
    pipeline_model: Optional[str] = typer.Option(None, "--pipeline-model", help="Model label for the pipeline "
                                                 "run (default: the first)."),
    pipeline_seconds: float = typer.Option(10.0, "--pipeline-seconds", help="How long the pipeline runs."),
    rate_factor: float = typer.Option(2.0, "--rate-factor", help="Source rate / inference rate."),
    frame: str = typer.Option("256x1600", "--frame", help="Frame size HxW for the pipeline run."),
    tensorrt: bool = typer.Option(True, "--tensorrt/--no-tensorrt", help="Try TensorRT (GPU only; labelled with the precision its engine was built with)."),
    plugins: bool = typer.Option(True, "--plugins/--no-plugins", help="Load contender plugins (PyTorch)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/bench/<UTC timestamp>)."),
    cameras: Optional[str] = typer.Option(None, "--cameras", help="Instead: serve this many cameras with one model, "
                                          "e.g. 1,2,4 (the --model given, else the built-in one; threads: the largest of --threads)."),
    camera_fps: float = typer.Option(5.0, "--camera-fps", help="--cameras: each camera's frame rate."),
    cameras_seconds: float = typer.Option(20.0, "--cameras-seconds", help="--cameras: how long each camera count runs."),
) -> None:
    """Time the engines side by side, the pipeline against the engine, and frame freshness."""
    from rich.console import Console

    from inspect_edge.bench.engines import TimingBudget
    from inspect_edge.bench.pipeline_bench import PipelineBenchConfig
    from inspect_edge.bench.runner import BenchConfig, BenchError, run_bench

    console = Console(stderr=True)
    models = list(model or [])
    size_list = [s.strip() for s in sizes.split(",") if s.strip()] if sizes else ([] if models else
                                                                                   ["nano", "small", "base"])
    ih, iw = _hw(input_size, "--input")
    fh, fw = _hw(frame, "--frame")
    out = out or Path("runs/bench") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    command = shlex.join(["inspect-edge", "bench", *sys.argv[2:]]) if len(sys.argv) > 1 else "inspect-edge bench"
    if cameras is not None:
        _cameras_bench(models, _ints(cameras, "--cameras"), camera_fps, cameras_seconds, max(_ints(threads, "--threads")),
                       (fh, fw), out, command, console)
        return
    cfg = BenchConfig(
        out=out, models=models, sizes=size_list, input_height=ih, input_width=iw,
        batches=_ints(batches, "--batches"), threads=_ints(threads, "--threads"),
        budget=TimingBudget(warmup=warmup, seconds_per_cell=seconds, min_iters=min_iters),
        tensorrt=tensorrt, plugins=plugins, pipeline=pipeline, pipeline_model=pipeline_model,
        pipeline_cfg=PipelineBenchConfig(seconds=pipeline_seconds, rate_factor=rate_factor),
        frame_height=fh, frame_width=fw,
        command=command,
    )
    try:
        record = run_bench(cfg, log=lambda s: console.print(s, highlight=False, markup=False))
    except BenchError as e:
        typer.echo(f"inspect-edge bench: {e}", err=True)
        raise typer.Exit(2) from None
    for t in record["targets"]:
        mark = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
        typer.echo(f"[{mark:>6}] {t['target']}: {t['measured']}")
    typer.echo(f"record: {out / 'bench.json'}  table: {out / 'bench.md'}")


def _cameras_bench(models: list[Path], counts: list[int], camera_fps: float, seconds: float, threads: int,
                   frame_hw: tuple[int, int], out: Path, command: str, console) -> None:
    import json

    from inspect_edge.bench.cameras_bench import run_cameras_bench, to_markdown
    from inspect_edge.config import DEFAULT_MODEL

    if not counts or min(counts) < 1 or camera_fps <= 0 or seconds <= 0:
        raise typer.BadParameter("--cameras needs counts >= 1, --camera-fps and --cameras-seconds > 0")
    model = models[0] if models else DEFAULT_MODEL
    if model.suffix.lower() != ".onnx":
        raise typer.BadParameter(f"--cameras runs the service's ONNX Runtime backend: give an .onnx model, got {model}")
    record = run_cameras_bench(model, counts, camera_fps=camera_fps, seconds=seconds, threads=threads, frame_hw=frame_hw,
                               log=lambda m: console.print(m, highlight=False, markup=False))
    record["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    (out / "cameras.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "cameras.md").write_text(to_markdown(record, command))
    typer.echo(to_markdown(record, command))
    typer.echo(f"record: {out / 'cameras.json'}  table: {out / 'cameras.md'}")
