"""Build TensorRT engines from our ONNX files, on the device that will run them.

Engines are not portable: one built with TensorRT 10.3 on a Jetson Orin (sm 8.7)
does not load on an RTX 4000 (sm 8.9) or under TensorRT 10.8. So every engine is
described by an `EngineKey` (TensorRT version, GPU name, compute capability,
SHA-256 of the ONNX file, precision, batch range) written to a sidecar JSON next
to it together with the model's `ModelInfo`; `cached_engine()` looks engines up
by key and builds the missing ones, so the service rebuilds instead of failing
after a driver, TensorRT or GPU change.

FP16, and why there are two paths:
- TensorRT 10 builds "weakly typed" networks from an FP32 graph and may pick FP16
  kernels when `BuilderFlag.FP16` is set (we first ask `platform_has_fast_fp16`).
- TensorRT 11 removed that flag and the capability query: every network is
  strongly typed and precision comes from the graph itself. FP16 therefore needs
  an FP16 ONNX (`inspect-edge export onnx RUN --fp16`, float16 inside, float32
  inputs/outputs), built as a strongly typed network. TensorRT 10 builds such a
  graph strongly typed too (the STRONGLY_TYPED creation flag, no precision flags).

Only the documented TensorRT 10/11 Python API is used here: `OnnxParser`,
`set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`, one optimisation profile
over the batch dimension, a timing cache file, `build_serialized_network`.
`tensorrt` and `pycuda` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from inspect_edge.backends.base import BackendError
from inspect_edge.model_info import ModelInfo, ModelInfoError, file_sha256

SIDECAR_FORMAT = "inspect-edge-engine/1"


class EngineMismatch(BackendError):
    """An engine built for another GPU or TensorRT version; `source_onnx` says what to rebuild from."""

    def __init__(self, message: str, source_onnx: Path | None = None) -> None:
        super().__init__(message)
        self.source_onnx = source_onnx


class EngineLoadError(BackendError):
    """TensorRT refused to deserialize an engine file (truncated, corrupt, or from another build)."""


class EngineBuildError(BackendError):
    """TensorRT refused to parse or build the network."""


@dataclass(frozen=True)
class DeviceIdentity:
    """What an engine is tied to: the TensorRT version and the GPU model."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    def describe(self) -> str:
        return f"{self.gpu_name} (sm {self.compute_capability}) with TensorRT {self.tensorrt_version}"


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mib: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if self.workspace_mib < 16:
            raise ValueError(f"workspace_mib: at least 16, got {self.workspace_mib}")


@dataclass(frozen=True)
class EngineKey:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    precision: str  # what was asked for: "fp16" or "fp32"
    min_batch: int
    opt_batch: int
    max_batch: int

    @classmethod
    def for_build(cls, device: DeviceIdentity, onnx_sha256: str, opts: BuildOptions) -> EngineKey:
        return cls(device.tensorrt_version, device.gpu_name, device.compute_capability, onnx_sha256,
                   "fp16" if opts.fp16 else "fp32", opts.min_batch, opts.opt_batch, opts.max_batch)

    def file_stem(self) -> str:
        """A readable, filesystem-safe name that differs whenever the key does."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        trt = re.sub(r"[^0-9.]+", "", self.tensorrt_version) or "x"
        return (f"{self.onnx_sha256[:16]}_trt{trt}_{gpu}_sm{self.compute_capability.replace('.', '')}"
                f"_{self.precision}_b{self.min_batch}-{self.opt_batch}-{self.max_batch}")

    def device(self) -> DeviceIdentity:
        return DeviceIdentity(self.tensorrt_version, self.gpu_name, self.compute_capability)

    @classmethod
    def from_dict(cls, d: dict, source: str) -> EngineKey:
        try:
            return cls(**d)
        except TypeError as e:
            raise BackendError(f"{source}: malformed engine key ({e})") from None


# ---- sidecar JSON -----------------------------------------------------------
def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | Path, info: ModelInfo, key: EngineKey, source_onnx: str | Path = "") -> Path:
    doc = {"format": SIDECAR_FORMAT, "engine_key": asdict(key), "model_info": info.to_dict(),
           "source_onnx": str(source_onnx)}
    out = sidecar_path(engine_path)
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


def read_sidecar(engine_path: str | Path) -> tuple[ModelInfo, EngineKey, Path | None]:
    """(model info, engine key, source ONNX or None) from the JSON next to an engine."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise BackendError(f"{engine_path}: no sidecar {side.name} with the model metadata; "
                           "build engines with `inspect-edge export engine`")
    try:
        doc = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackendError(f"{side}: unreadable sidecar JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        raise BackendError(f"{side}: not an inspect-edge engine sidecar (format should be {SIDECAR_FORMAT!r})")
    for field in ("engine_key", "model_info"):
        if not isinstance(doc.get(field), dict):
            raise BackendError(f"{side}: missing field {field!r}")
    try:
        info = ModelInfo.from_dict(doc["model_info"], f"{side}: model_info")
    except ModelInfoError as e:
        raise BackendError(str(e)) from None
    key = EngineKey.from_dict(doc["engine_key"], str(side))
    source = Path(doc["source_onnx"]) if doc.get("source_onnx") else None
    return info, key, source


def check_engine_fits(engine_path: str | Path, key: EngineKey, here: DeviceIdentity,
                      source_onnx: Path | None = None) -> None:
    """Raise EngineMismatch (one line) when the engine was built for another device or TensorRT."""
    if key.device() != here:
        raise EngineMismatch(f"{engine_path}: engine built for {key.device().describe()}, "
                             f"this device is {here.describe()}; rebuild it with `inspect-edge export engine`",
                             source_onnx)


# ---- where engines live -----------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("INSPECT_EDGE_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inspect-edge" / "engines"


def timing_cache_path(engine_path: str | Path, device: DeviceIdentity) -> Path:
    """Beside the engine, one per TensorRT version and GPU (tactic timings are model-independent)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", device.gpu_name).strip("-").lower()
    cc = device.compute_capability.replace(".", "")
    return Path(engine_path).with_name(f"timing_trt{device.tensorrt_version}_{gpu}_sm{cc}.cache")


def cached_engine(onnx_path: str | Path, cache_dir: str | Path | None = None,
                  opts: BuildOptions | None = None, log: Callable[[str], None] = print,
                  rebuild: bool = False) -> Path:
    """The engine for `onnx_path` on this device, built (and cached) when missing, stale or `rebuild`."""
    onnx_path = Path(onnx_path)
    opts = opts or BuildOptions()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = EngineKey.for_build(current_device(), file_sha256(onnx_path), opts)
    engine = cache / f"{key.file_stem()}.engine"
    if engine.is_file() and sidecar_path(engine).is_file() and not rebuild:
        try:
            _, stored, _ = read_sidecar(engine)
            if stored == key:
                return engine
        except BackendError as e:
            log(f"rebuilding: {e}")
    cache.mkdir(parents=True, exist_ok=True)
    log(f"building TensorRT engine for {onnx_path.name} into {engine} (first run on this device)")
    build_engine(onnx_path, engine, opts, log=log)
    return engine


# ---- the TensorRT side (needs tensorrt + pycuda) ----------------------------
def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"TensorRT is not installed ({e}); install the `gpu` extra on the device "
                           "(tensorrt from NVIDIA's index, pycuda)") from None
    return trt


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def current_device(device: int = 0) -> DeviceIdentity:
    trt = import_tensorrt()
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise BackendError(f"pycuda is not installed ({e}); install the `gpu` extra") from None
    try:
        cuda.init()
        dev = cuda.Device(device)
        major, minor = dev.compute_capability()
        return DeviceIdentity(trt.__version__, dev.name(), f"{major}.{minor}")
    except cuda.Error as e:
        raise BackendError(f"no usable CUDA device {device}: {e}") from None


def _onnx_info(onnx_path: Path) -> ModelInfo:
    # ONNX Runtime reads the metadata without the `onnx` package (not an edge dependency).
    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, threads=1)
    try:
        return backend.info
    finally:
        backend.close()


def build_engine(onnx_path: str | Path, engine_path: str | Path, opts: BuildOptions | None = None,
                 log: Callable[[str], None] = print) -> EngineKey:
    """Parse `onnx_path`, build a serialized engine at `engine_path`, write its sidecar; return its key."""
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    opts = opts or BuildOptions()
    info = _onnx_info(onnx_path)  # also rejects files without our metadata, before TensorRT runs
    device = current_device()
    key = EngineKey.for_build(device, file_sha256(onnx_path), opts)
    graph_is_fp16 = info.precision == "fp16"
    major = tensorrt_major(trt)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    precision = "fp32"
    flags = 0
    if graph_is_fp16:
        # Types come from the graph; TRT 11 is always strongly typed, TRT 10 needs the flag.
        if major < 11:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        precision = "fp16"
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        for i in range(parser.num_errors):
            log(f"ONNX parser error {i + 1}/{parser.num_errors}: {parser.get_error(i)}")
        raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the ONNX graph "
                               f"({parser.num_errors} error(s) printed above)")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
    if opts.fp16 and not graph_is_fp16:
        if major >= 11:
            raise EngineBuildError(
                f"{onnx_path}: TensorRT {trt.__version__} takes precision from the graph and has no FP16 "
                "builder flag; export an FP16 graph (`inspect-edge export onnx RUN --fp16`) and build from it")
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            precision = "fp16"
        else:
            log(f"FP16 is not available on {device.gpu_name} (sm {device.compute_capability}): building FP32")

    inp = network.get_input(0)
    c, h, w = info.input_channels, info.input_height, info.input_width
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (opts.min_batch, c, h, w), (opts.opt_batch, c, h, w), (opts.max_batch, c, h, w))
    config.add_optimization_profile(profile)

    timing_path = timing_cache_path(engine_path, device)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, False)

    log(f"TensorRT {trt.__version__} on {device.gpu_name}: building {precision} engine, "
        f"batch {opts.min_batch}..{opts.max_batch}, workspace {opts.workspace_mib} MiB")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")

    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)  # never leave a half-written engine where the service looks
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    write_sidecar(engine_path, info.replace(precision=precision), key, onnx_path.resolve())
    log(f"wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB), timing cache {timing_path.name}")
    return key
