"""Build TensorRT engines from our ONNX files, on the device that will run them.

Engines are not portable: one built with TensorRT 10.3 on a Jetson Orin (sm 8.7)
does not load on an RTX 4000 (sm 8.9) or under TensorRT 10.8. So every engine is
described by an `EngineKey` (TensorRT version, GPU name, compute capability,
SHA-256 of the ONNX file, precision, batch range, workspace size, and
`BUILDER_VERSION`, the version of this file's build recipe) written to a sidecar
JSON next to it together with the model's `ModelInfo`; `cached_engine()` looks
engines up by key and builds the missing ones, so the service rebuilds instead of
failing after a driver, TensorRT, GPU or recipe change.

Precision (`choose_precision`), and why TensorRT 10 and 11 differ:
- TensorRT 10 builds "weakly typed" networks from an FP32 graph and may pick FP16
  kernels when `BuilderFlag.FP16` is set (if the GPU has fast FP16).
- TensorRT 11 removed that flag: every network is strongly typed and precision
  comes from the graph's own types. FP16 there needs an FP16 ONNX
  (`inspect-edge export onnx RUN --fp16`); asked for FP16 with an FP32 graph, it
  builds FP32 and says so (the FP32 fallback), instead of failing.
- An FP16 graph builds strongly typed on both (TensorRT 10: the STRONGLY_TYPED flag).
The precision actually built is what the sidecar's ModelInfo records, so the
service, its page and the bench label the engine with what it really runs.

Batch: an ONNX file with a fixed batch builds with no optimisation profile (the
key records that batch); a dynamic one gets one profile over the batch only, its
optimisation point at the tiles per frame (`BuildOptions.for_tiles`).

Only the documented TensorRT 10/11 Python API is used: `OnnxParser`,
`set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`, `create_optimization_profile`,
`create_timing_cache`/`set_timing_cache`, `IProgressMonitor` (to cancel at
shutdown), `build_serialized_network`. `tensorrt` and `pycuda` are imported
inside the functions that need them. Files, locks and the parity decision live in
`tensorrt_cache` (pure Python, tested everywhere).
"""

from __future__ import annotations

import atexit
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from inspect_edge.backends.base import BackendError
from inspect_edge.backends.tensorrt_cache import (
    MAX_DICE_DRIFT,
    active_build,
    atomic_write_bytes,
    build_once,
    load_timing_cache,
    parity_failures,
    save_timing_cache,
    shutdown_requested,
    stop_builds,
)
from inspect_edge.backends.tensorrt_key import (  # noqa: F401  (re-exported: callers import them from here)
    BUILDER_VERSION,
    GPU_ENV,
    SIDECAR_FORMAT,
    BuildOptions,
    DeviceIdentity,
    EngineBuildError,
    EngineKey,
    EngineLoadError,
    EngineMismatch,
    EngineRefused,
    PrecisionPlan,
    check_engine_fits,
    choose_precision,
    default_cache_dir,
    effective_options,
    gpu_index,
    profile_shapes,
    read_sidecar,
    refusal_path,
    sidecar_path,
    tiles_per_frame,
    timing_cache_path,
    write_sidecar,
)
from inspect_edge.model_info import ModelInfo, file_sha256

DEFAULT_FRAME = (256, 1600)  # the strip camera's frame (Severstal's format, the synthetic strip's default)


# ---- the TensorRT side (needs tensorrt + pycuda) ----------------------------
def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"TensorRT is not installed ({e}); install the `gpu` extra on the device "
                           "(tensorrt from NVIDIA's index, pycuda)") from None
    return trt


def import_cuda():
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise BackendError(f"pycuda is not installed ({e}); install the `gpu` extra") from None
    return cuda


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def current_device(device: int | None = None) -> DeviceIdentity:
    trt, cuda = import_tensorrt(), import_cuda()
    index = gpu_index(device)
    try:
        cuda.init()
        dev = cuda.Device(index)
        major, minor = dev.compute_capability()
        return DeviceIdentity(trt.__version__, dev.name(), f"{major}.{minor}")
    except cuda.Error as e:
        raise BackendError(f"no usable CUDA device {index}: {e}") from None


@contextlib.contextmanager
def cuda_context(device: int):
    """The device's primary context, retained and current for the block, released after.

    Each holder keeps its own retain: a backend closing (or the service shutting
    down) while a build runs only drops its own reference, so the context the
    build uses is never destroyed under it.
    """
    cuda = import_cuda()
    cuda.init()
    ctx = cuda.Device(device).retain_primary_context()
    ctx.push()
    try:
        yield ctx
    finally:
        cuda.Context.pop()
        ctx.detach()


def _onnx_facts(onnx_path: Path) -> tuple[ModelInfo, int | None]:
    """(ModelInfo, fixed batch or None), read by ONNX Runtime: the `onnx` package is not an edge dependency."""
    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, threads=1)
    try:
        return backend.info, backend._fixed_batch
    finally:
        backend.close()


def _progress_monitor(trt):
    """A monitor that cancels the build once shutdown is requested (TensorRT >= 10 has IProgressMonitor)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _CancelOnShutdown(base):
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            pass

        def step_complete(self, phase_name, step) -> bool:
            return not shutdown_requested()  # False asks TensorRT to cancel the build

        def phase_finish(self, phase_name) -> None:
            pass

    return _CancelOnShutdown()


_atexit_registered = False


def build_engine(onnx_path: str | Path, engine_path: str | Path, opts: BuildOptions | None = None,
                 log: Callable[[str], None] = print, device: int | None = None) -> EngineKey:
    """Parse `onnx_path`, build a serialized engine at `engine_path`, write its sidecar; return its key."""
    global _atexit_registered
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info, fixed_batch = _onnx_facts(onnx_path)  # also rejects files without our metadata, before TensorRT runs
    opts = effective_options(opts or BuildOptions(), fixed_batch, log)
    index = gpu_index(device)
    dev = current_device(index)
    key = EngineKey.for_build(dev, file_sha256(onnx_path), opts)
    major = tensorrt_major(trt)
    if not _atexit_registered:
        # Interpreter teardown releases pycuda's state: first cancel and wait for builds in flight.
        atexit.register(stop_builds, 120.0)
        _atexit_registered = True

    with active_build(), cuda_context(index):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        fast = getattr(builder, "platform_has_fast_fp16", None) if major < 11 else None
        plan = choose_precision(major, info.precision == "fp16", opts.fp16, fast)
        if plan.note:
            log(plan.note)
        flags = 0
        if plan.strongly_typed and major < 11:  # TensorRT 11 networks are always strongly typed
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
            for i in range(parser.num_errors):
                log(f"ONNX parser error {i + 1}/{parser.num_errors}: {parser.get_error(i)}")
            raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the ONNX graph "
                                   f"({parser.num_errors} error(s) printed above)")
        if network.num_inputs != 1:
            raise EngineBuildError(f"{onnx_path}: expected one network input, got {network.num_inputs}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
        if plan.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        inp = network.get_input(0)
        shapes = profile_shapes(tuple(inp.shape), info, opts)
        if shapes is not None:  # only dynamic dimensions need (and accept) a profile
            profile = builder.create_optimization_profile()
            profile.set_shape(inp.name, *shapes)
            config.add_optimization_profile(profile)

        timing_path = timing_cache_path(engine_path, dev)
        payload = load_timing_cache(timing_path, log)
        timing = config.create_timing_cache(payload)
        if payload and (timing is None or not config.set_timing_cache(timing, False)):
            log(f"TensorRT rejected timing cache {timing_path.name}; discarded, building without it")
            timing_path.unlink(missing_ok=True)
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, False)
        elif not payload:
            config.set_timing_cache(timing, False)
        monitor = _progress_monitor(trt)
        if monitor is not None:
            config.progress_monitor = monitor

        log(f"TensorRT {trt.__version__} on GPU {index} ({dev.gpu_name}): building {plan.precision} engine, "
            f"batch {opts.min_batch}..{opts.max_batch} (opt {opts.opt_batch}), workspace {opts.workspace_mib} MiB")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            if shutdown_requested():
                raise EngineBuildError(f"{onnx_path}: build cancelled, the process is shutting down")
            raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
        # Never leave a half-written engine where the service looks; unique temp names per writer.
        atomic_write_bytes(engine_path, bytes(serialized))
        save_timing_cache(timing_path, bytes(config.get_timing_cache().serialize()))
    write_sidecar(engine_path, info.replace(precision=plan.precision), key, onnx_path.resolve())
    log(f"wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB), timing cache {timing_path.name}")
    return key


def parity_frames(info: ModelInfo, n: int = 4, seed: int = 0):
    """Normalised model inputs cut from the synthetic strip: the service has no data set at hand."""
    import numpy as np

    from inspect_edge.data.synthetic import MovingStrip
    from inspect_edge.preprocess import normalise

    strip = MovingStrip(frame_height=info.input_height, frame_width=info.input_width, seed=seed, speed_px=97)
    return normalise(np.stack([strip.next_frame()[0] for _ in range(n)]), info)


def engine_vs_onnxruntime(engine_path: Path, onnx_path: Path, x, device: int | None = None):
    """(reference logits, engine logits, engine ModelInfo) on the normalised batch `x`."""
    import numpy as np

    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    from inspect_edge.backends.tensorrt_backend import TensorRTBackend

    reference = OnnxRuntimeBackend(onnx_path)
    try:
        ref = np.concatenate([reference.infer(x[i:i + 1]) for i in range(len(x))])
    finally:
        reference.close()
    with TensorRTBackend(engine_path, device=device) as engine:
        cand = np.concatenate([engine.infer(x[i:i + 1]) for i in range(len(x))])
        return ref, cand, engine.info


def check_engine_parity(engine_path: Path, onnx_path: Path, device: int | None = None,
                        max_drift: float = MAX_DICE_DRIFT) -> dict:
    """The first-build check the service runs: a report dict with `failures` (empty: accepted)."""
    import numpy as np

    from inspect_edge.postprocess import mask_dice_between

    info, _ = _onnx_facts(onnx_path)
    ref, cand, built = engine_vs_onnxruntime(engine_path, onnx_path, parity_frames(info), device)
    dice, positive = mask_dice_between(ref, cand, info)
    diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    failures = parity_failures(dice, max_drift)
    if not np.isfinite(cand).all():
        failures.insert(0, "TensorRT produced non-finite logits")
    return {"reference": "onnxruntime-cpu", "candidate": f"tensorrt-{built.precision}", "images": len(ref),
            "images_from": "synthetic strip", "max_abs_logit_diff": float(diff.max()), "per_class_dice": dice,
            "positive_pixels": positive, "max_dice_drift": max_drift, "failures": failures}


def cached_engine(onnx_path: str | Path, cache_dir: str | Path | None = None,
                  opts: BuildOptions | None = None, log: Callable[[str], None] = print,
                  rebuild: bool = False, device: int | None = None, verify: bool = True,
                  frame: tuple[int, int] | None = None) -> Path:
    """The engine for `onnx_path` on this device, built (and cached) when missing, stale or `rebuild`.

    A first build is checked against ONNX Runtime (`check_engine_parity`) before it
    enters the cache; a refused engine never does, and its report stays beside the
    cache entry (`.refused.json`) so restarts fail fast instead of rebuilding for
    minutes; `rebuild=True` tries again. Concurrent callers build once (`build_once`).
    Without `opts`, the optimisation batch is the tiles one `frame` (H, W) makes:
    the service opens its backend before the first frame arrives, so it tunes for
    the strip camera's frame, 256 x 1600, unless told otherwise.
    """
    onnx_path = Path(onnx_path)
    info, fixed_batch = _onnx_facts(onnx_path)
    if opts is None:
        opts = BuildOptions.for_tiles(tiles_per_frame(info, *(frame or DEFAULT_FRAME)),
                                      max_batch=BuildOptions().max_batch)
    opts = effective_options(opts, fixed_batch, log)
    index = gpu_index(device)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = EngineKey.for_build(current_device(index), file_sha256(onnx_path), opts)
    engine = cache / f"{key.file_stem()}.engine"
    refused = refusal_path(engine)
    if refused.is_file() and not rebuild:
        raise EngineRefused(f"{onnx_path}: the TensorRT engine built here was refused by the parity check "
                            f"(report {refused}); delete it or rebuild to try again")
    state = {"forced": rebuild}

    def is_current(path: Path) -> bool:
        if state["forced"] or not (path.is_file() and sidecar_path(path).is_file()):
            return False
        try:
            return read_sidecar(path)[1] == key
        except BackendError as e:
            log(f"rebuilding: {e}")
            return False

    def build(tmp: Path) -> list[Path]:
        state["forced"] = False  # once built, a later caller waiting on the lock takes this one
        log(f"building TensorRT engine for {onnx_path.name} into {engine} (first run on this device)")
        build_engine(onnx_path, tmp, opts, log=log, device=index)
        if not verify:
            return [sidecar_path(tmp)]
        report = check_engine_parity(tmp, onnx_path, index)
        if report["failures"]:
            atomic_write_bytes(refused, (json.dumps(report, indent=2) + "\n").encode())
            raise EngineRefused(f"{onnx_path}: TensorRT engine refused: {'; '.join(report['failures'])} "
                                f"(report {refused})")
        log(f"parity vs ONNX Runtime passed: per-class Dice "
            f"{ {k: round(v, 4) for k, v in report['per_class_dice'].items()} }")
        parity = tmp.with_name(tmp.name + ".parity.json")
        atomic_write_bytes(parity, (json.dumps(report, indent=2) + "\n").encode())
        return [sidecar_path(tmp), parity]

    refused.unlink(missing_ok=True)
    build_once(engine, is_current, build, log)
    return engine
