"""`inspect-edge export ...`: turn a training run into what the edge service loads.

    inspect-edge export onnx runs/nano --out model.onnx [--fp16]   # needs the train extra
    inspect-edge export engine model.onnx --fp16 --frame 256x1600  # on the device, needs TensorRT
    inspect-edge export int8 model.onnx --calibration-data data/train  # CPU edge boxes, ONNX Runtime

Each step checks its own result: `onnx` compares PyTorch with ONNX Runtime,
`engine` compares ONNX Runtime with TensorRT, on the same images (refusing a
mask Dice drift above 0.005, the service's own rule); both check the graph
against TensorRT's ONNX operator table first. The numbers
are printed and saved as `<output>.parity.json`. Exit codes: 0 verified,
1 parity failed (the unverified file is kept beside, never at the output path),
2 bad input or a tool refused (one line on stderr, no traceback).

Imported by the torch-free CLI, so torch, onnx and tensorrt are imported inside
the commands, never at module level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Export a trained model: `onnx` (needs the train extra), `engine` (needs TensorRT).",
                  no_args_is_help=True)

EXIT_PARITY, EXIT_BAD_INPUT = 1, 2


def _clean_errors(fn):
    """Known failures become one line and exit code 2; a bug still shows its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from inspect_edge.backends.base import BackendError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (BackendError, ValueError, OSError, RuntimeError) as e:
            # CheckpointError and ModelInfoError are ValueErrors; ExportError and ParityError RuntimeErrors.
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"error: {text}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def _finish(report, unverified: Path, out: Path) -> None:
    for line in report.lines():
        typer.echo(line)
    saved = report.save(out.with_name(out.name + ".parity.json"))
    if not report.passed:
        typer.echo(f"error: parity check failed; the unverified file stays at {unverified}, report {saved}", err=True)
        raise typer.Exit(EXIT_PARITY)
    if unverified != out:
        unverified.replace(out)
    typer.echo(f"verified: {out} (report {saved})")


def _tolerance(precision: str, max_diff: float | None, min_dice: float | None):
    from export.parity import Tolerance

    base = Tolerance.for_precision(precision)
    return Tolerance(max_abs_logit=base.max_abs_logit if max_diff is None else max_diff,
                     min_dice=base.min_dice if min_dice is None else min_dice)


@app.command("onnx")
@_clean_errors
def onnx_command(
    run: Path = typer.Argument(..., help="Run folder (best.pt + model_info.json) or a checkpoint .pt."),
    out: Path = typer.Option(Path("model.onnx"), "--out", "-o", help="Where to write the ONNX file."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write <out>_fp16.onnx: float16 inside, float32 in/out "
                              "(for TensorRT 11 and runtimes that take precision from the graph)."),
    opset: int = typer.Option(18, help="ONNX opset (17 or later)."),
    model_version: Optional[str] = typer.Option(None, help="Version to record (default: the run's)."),
    data: Optional[Path] = typer.Option(None, help="Data set for the parity images (default: the run's validation data)."),
    images: int = typer.Option(8, min=1, help="How many images the parity check runs."),
    max_diff: Optional[float] = typer.Option(None, help="Largest allowed |logit difference| (default 1e-3, fp16 0.1)."),
    min_dice: Optional[float] = typer.Option(None, help="Smallest allowed per-class mask Dice (default 0.99, fp16 0.97)."),
    tensorrt_ops: bool = typer.Option(True, "--tensorrt-ops-check/--no-tensorrt-ops-check",
                                      help="Refuse graphs TensorRT's ONNX parser cannot take (see "
                                      "inspect_edge/backends/tensorrt_onnx_ops.py); off for CPU-only models."),
    int8: bool = typer.Option(False, "--int8", help="Also write <out>_int8.onnx for the CPU, calibrated on "
                              "--calibration-data and gated on mask Dice vs FP32 (see `export int8`)."),
    calibration_data: Optional[Path] = typer.Option(None, "--calibration-data", help="Training data to calibrate INT8 on."),
) -> None:
    """Export a trained run to ONNX with its metadata, then check it against PyTorch."""
    from export.onnx_export import export_onnx, pytorch_vs_onnxruntime
    from export.parity import pick_images
    from train.checkpoint import load_run

    model, info = load_run(run)
    source = str(run.resolve())
    shots = pick_images(info, images, data=data, run=run, log=typer.echo)
    targets = [(out, False)] + ([(out.with_name(f"{out.stem}_fp16{out.suffix or '.onnx'}"), True)] if fp16 else [])
    for target, half in targets:
        unverified = target.with_name(f"{target.stem}.unverified.onnx")
        written = export_onnx(model, info, unverified, opset=opset, fp16=half, source_run=source,
                              model_version=model_version)
        typer.echo(f"exported {written.precision} graph: opset {opset}, input (batch, {written.input_channels}, "
                   f"{written.input_height}, {written.input_width}), classes {list(written.classes)}, "
                   f"content hash {written.content_hash[:16]}..., {unverified.stat().st_size / 1e6:.2f} MB")
        if tensorrt_ops:
            from inspect_edge.backends.tensorrt_onnx_ops import check_onnx_ops

            check_onnx_ops(unverified)  # UnsupportedOnnxOps is a ValueError: one line, exit 2
            typer.echo("TensorRT ONNX parser: every operator is in the supported table")
        report = pytorch_vs_onnxruntime(model, unverified, shots, _tolerance(written.precision, max_diff, min_dice))
        _finish(report, unverified, target)
    if int8:
        if calibration_data is None:
            raise ValueError("--int8 needs --calibration-data DIR (frames of the training data)")
        _int8(out, out.with_name(f"{out.stem}_int8{out.suffix or '.onnx'}"), calibration_data, data, 64, 32, 0.005)


def _int8(fp32: Path, out: Path, calibration_data: Path, check_data: Optional[Path], n_calib: int, n_check: int,
          max_drift: float) -> None:
    from export.int8 import frames_from_data, quantize_int8
    from export.onnx_meta import read_metadata

    info = read_metadata(fp32)
    used, calib = frames_from_data(calibration_data, info, n_calib, seed=0)
    # Checked on other frames than it was calibrated on: the same data set minus those, or --data.
    skip = set(used) if check_data is None or Path(check_data) == Path(calibration_data) else set()
    _, check = frames_from_data(check_data or calibration_data, info, n_check, seed=1, skip=skip)
    typer.echo(f"INT8: calibrating on {len(calib)} frames of {calibration_data}, checking on {len(check)} others")
    result = quantize_int8(fp32, out, calib, check, max_drift=max_drift, log=typer.echo)
    if not result.passed:
        fmt = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
        typer.echo(f"error: INT8 refused: mask Dice vs FP32 ({fmt(result.per_class_dice)}) stays below {1 - max_drift:g} "
                   f"even with {len(result.float_nodes)} node(s) in float; for scale, the FP32 model's own masks under "
                   f"one grey level of noise: {fmt(result.fp32_noise_dice)}", err=True)
        raise typer.Exit(EXIT_PARITY)
    typer.echo(f"verified: {out} ({len(result.float_nodes)} node(s) kept in float; report {out.name}.int8.json)")
    ms = result.median_ms
    typer.echo(f"batch 1 on this machine: FP32 {ms['fp32']:.1f} ms, INT8 {ms['int8']:.1f} ms ({ms['fp32'] / ms['int8']:.2f}x)")
    if ms["int8"] >= ms["fp32"]:
        typer.echo("warning: the INT8 model is not faster than FP32 here (each float layer adds a quantise/dequantise "
                   "pair); serve the FP32 model unless the edge CPU measures otherwise (`inspect-edge bench`)", err=True)


@app.command("int8")
@_clean_errors
def int8_command(
    model: Path = typer.Argument(..., help="A verified FP32 .onnx (from `export onnx`)."),
    calibration_data: Path = typer.Option(..., "--calibration-data", help="Training data: frames to calibrate on."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default <model>_int8.onnx)."),
    check_data: Optional[Path] = typer.Option(None, "--data", help="Held-out data to gate on (default: other frames of the calibration data)."),
    calibration_images: int = typer.Option(64, min=1, help="Frames to calibrate on."),
    check_images: int = typer.Option(32, min=1, help="Frames the gate compares FP32 and INT8 masks on."),
    max_drift: float = typer.Option(0.005, help="Largest allowed per-class mask Dice drift vs FP32."),
) -> None:
    """FP32 ONNX -> INT8 (static QDQ, per-channel) for the CPU; refused if masks drift more than --max-drift."""
    _int8(model, out or model.with_name(f"{model.stem}_int8{model.suffix or '.onnx'}"), calibration_data, check_data,
          calibration_images, check_images, max_drift)


@app.command("engine")
@_clean_errors
def engine_command(
    onnx_path: Path = typer.Argument(..., help="ONNX file written by `inspect-edge export onnx`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Engine path (default: beside the ONNX, .engine)."),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help="FP16 kernels (TensorRT 10 flag; TensorRT 11 builds "
                              "FP32 from an FP32 graph and FP16 from the _fp16.onnx)."),
    min_batch: int = typer.Option(1, min=1), opt_batch: int = typer.Option(1, min=1),
    max_batch: int = typer.Option(8, min=1),
    frame: Optional[str] = typer.Option(None, "--frame", help="Camera frame HxW (e.g. 256x1600): the optimisation "
                                        "batch becomes the tiles per frame, overriding --opt-batch."),
    workspace_mib: int = typer.Option(1024, help="Builder workspace memory limit, MiB."),
    gpu: Optional[int] = typer.Option(None, "--gpu", min=0, help="CUDA device index (default $INSPECT_EDGE_GPU or 0)."),
    data: Optional[Path] = typer.Option(None, help="Data set for the parity images (default: the source run's)."),
    images: int = typer.Option(8, min=1, help="How many images the parity check runs."),
    max_diff: Optional[float] = typer.Option(None, help="Largest allowed |logit difference| vs ONNX Runtime."),
    max_dice_drift: Optional[float] = typer.Option(None, help="Largest allowed per-class mask Dice drift vs ONNX "
                                                   "Runtime (default 0.005, what the service refuses beyond)."),
) -> None:
    """Build a TensorRT engine on this device (sidecar JSON beside it), then check it against ONNX Runtime."""
    from export.parity import compare_logits, pick_images
    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    from inspect_edge.backends.tensorrt_build import (BuildOptions, build_engine, engine_vs_onnxruntime,
                                                      sidecar_path, tiles_per_frame)
    from inspect_edge.backends.tensorrt_cache import MAX_DICE_DRIFT, file_lock, parity_failures
    from inspect_edge.preprocess import normalise

    reference = OnnxRuntimeBackend(onnx_path)  # rejects files without our metadata before TensorRT starts
    info = reference.info
    reference.close()
    _check_ops_if_onnx_installed(onnx_path)
    out = out or onnx_path.with_suffix(".engine")
    unverified = out.with_name(f"{out.stem}.unverified{out.suffix}")
    if frame:
        h, w = _frame_size(frame)
        tiles = tiles_per_frame(info, h, w)
        typer.echo(f"a {h}x{w} frame is {tiles} tile(s) of {info.input_height}x{info.input_width}: optimising for "
                   f"batch {tiles}")
        opts = BuildOptions.for_tiles(tiles, fp16=fp16, max_batch=max_batch, workspace_mib=workspace_mib)
    else:
        opts = BuildOptions(fp16=fp16, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                            workspace_mib=workspace_mib)
    drift = MAX_DICE_DRIFT if max_dice_drift is None else max_dice_drift
    with file_lock(out.with_name(out.name + ".lock"), log=typer.echo):  # two builds of one output: one at a time
        build_engine(onnx_path, unverified, opts, log=typer.echo, device=gpu)
        shots = pick_images(info, images, data=data, run=info.source_run or None, log=typer.echo)
        ref, cand, built = engine_vs_onnxruntime(unverified, onnx_path, normalise(shots, info), gpu)
        precision = built.precision
        base = _tolerance(precision, max_diff, None)
        report = compare_logits(ref, cand, built, reference="onnxruntime-cpu", candidate=f"tensorrt-{precision}",
                                tolerance=type(base)(max_abs_logit=base.max_abs_logit, min_dice=1.0 - drift))
        # One Dice rule for this command and the service's first build: tensorrt_cache.parity_failures.
        report.failures = [f for f in report.failures if not f.startswith("mask Dice")]
        report.failures += parity_failures(report.per_class_dice, drift)
        if report.passed and unverified != out:
            sidecar_path(unverified).replace(sidecar_path(out))
        _finish(report, unverified, out)


def _frame_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"--frame: expected HxW such as 256x1600, got {text!r}") from None
    if h < 1 or w < 1:
        raise typer.BadParameter(f"--frame: sizes must be positive, got {text!r}")
    return h, w


def _check_ops_if_onnx_installed(onnx_path: Path) -> None:
    """The operator table check before a build; devices without the `onnx` package rely on the export's."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        typer.echo("note: `onnx` not installed, operator table check skipped (it ran at export)")
        return
    from inspect_edge.backends.tensorrt_onnx_ops import check_onnx_ops

    check_onnx_ops(onnx_path)


@app.command("info")
@_clean_errors
def info_command(model_path: Path = typer.Argument(..., help="An .onnx, or an .engine with its sidecar JSON.")) -> None:
    """Print the metadata a model file carries (what the service will use)."""
    from inspect_edge.backends import ENGINE_SUFFIXES
    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend, check_model_file
    from inspect_edge.backends.tensorrt_build import read_sidecar

    if model_path.suffix.lower() in ENGINE_SUFFIXES:
        check_model_file(model_path, "TensorRT engine")
        info, key, _ = read_sidecar(model_path)
        typer.echo(f"engine built for {key.device().describe()}, batch {key.min_batch}..{key.max_batch}")
    else:
        info = OnnxRuntimeBackend(model_path).info
    typer.echo(info.to_json())
