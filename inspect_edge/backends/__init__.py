"""Pick and open an inference backend for a model file.

    backend = open_backend("model.onnx")                         # ONNX Runtime, CPU
    backend = open_backend("model.engine")                       # TensorRT, sidecar model.engine.json
    backend = open_backend("model.onnx", backend="tensorrt")     # TensorRT engine from the cache,
                                                                 # built on this device if missing

Every failure to open a model is a `BackendError` with a one-line reason.
TensorRT is imported only when a TensorRT backend is asked for.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from inspect_edge.backends.base import Backend, BackendError, FlipAveraging

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")


class BackendName(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


def _resolve(path: Path, backend: str | BackendName) -> BackendName:
    try:
        name = BackendName(backend)
    except ValueError:
        raise BackendError(
            f"unknown backend {backend!r}; choose one of {[b.value for b in BackendName]}"
        ) from None
    suffix = path.suffix.lower()
    if suffix not in ONNX_SUFFIXES + ENGINE_SUFFIXES:
        raise BackendError(
            f"{path}: unknown model file type {suffix or '(no suffix)'!r}; "
            f"expected one of {list(ONNX_SUFFIXES + ENGINE_SUFFIXES)}"
        )
    if name is BackendName.auto:
        return BackendName.tensorrt if suffix in ENGINE_SUFFIXES else BackendName.onnxruntime
    if name is BackendName.onnxruntime and suffix in ENGINE_SUFFIXES:
        raise BackendError(f"{path}: a TensorRT engine cannot run on onnxruntime; pass the .onnx instead")
    return name


def open_backend(
    model_path: str | Path,
    backend: str | BackendName = "auto",
    threads: int | None = None,
    *,
    engine_cache: str | Path | None = None,
) -> Backend:
    """Open `model_path` on the chosen backend ("auto" decides by file suffix).

    `threads` sets ONNX Runtime's intra-op threads; TensorRT ignores it.
    `engine_cache` is where TensorRT engines built from an `.onnx` are kept
    (default: see `tensorrt_build.default_cache_dir`).

    A TensorRT backend must be opened in the thread that will call `infer`
    (CUDA contexts and streams belong to a thread).
    """
    opened = _open(Path(model_path), backend, threads, engine_cache)
    # The model's flip test-time augmentation, if it has one, wraps whichever engine runs it.
    return FlipAveraging(opened) if opened.info.tta_flips else opened


def _open(path: Path, backend: str | BackendName, threads: int | None, engine_cache: str | Path | None) -> Backend:
    name = _resolve(path, backend)
    if name is BackendName.onnxruntime:
        from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=threads)

    from inspect_edge.backends import tensorrt_build
    from inspect_edge.backends.tensorrt_backend import TensorRTBackend

    if path.suffix.lower() in ONNX_SUFFIXES:
        engine = tensorrt_build.cached_engine(path, cache_dir=engine_cache)
        try:
            return TensorRTBackend(engine)
        except tensorrt_build.EngineLoadError:
            # A damaged cache entry (a power cut mid-copy): build it again, once.
            engine = tensorrt_build.cached_engine(path, cache_dir=engine_cache, rebuild=True)
            return TensorRTBackend(engine)
    try:
        return TensorRTBackend(path)
    except tensorrt_build.EngineMismatch as e:
        # An engine copied from another device or TensorRT version: rebuild from
        # the ONNX it was made from, if that is still at hand, instead of failing.
        source = e.source_onnx
        if source is None or not source.is_file():
            raise
        engine = tensorrt_build.cached_engine(source, cache_dir=engine_cache)
        return TensorRTBackend(engine)


__all__ = ["Backend", "BackendError", "BackendName", "open_backend"]
