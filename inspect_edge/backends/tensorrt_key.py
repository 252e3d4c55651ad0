"""What describes a TensorRT engine, and the build decisions, without TensorRT: tested on any machine.

`EngineKey` (what an engine is tied to), `BuildOptions`, the sidecar JSON, the GPU
index setting, and the choices `tensorrt_build.build_engine` makes from plain
values: the optimisation profile (`profile_shapes`), the precision rules of
TensorRT 10 and 11 (`choose_precision`), a fixed batch (`effective_options`) and
the tiles per frame (`tiles_per_frame`). See `tensorrt_build` for why each exists.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from inspect_edge.backends.base import BackendError
from inspect_edge.backends.tensorrt_cache import atomic_write_bytes
from inspect_edge.model_info import ModelInfo, ModelInfoError

SIDECAR_FORMAT = "inspect-edge-engine/1"
# Bump whenever build_engine would produce a different engine from the same inputs
# (flags, profile, precision rules): cached engines of the old recipe are then rebuilt.
BUILDER_VERSION = "2"
GPU_ENV = "INSPECT_EDGE_GPU"


class EngineMismatch(BackendError):
    """An engine built for another GPU or TensorRT version; `source_onnx` says what to rebuild from."""

    def __init__(self, message: str, source_onnx: Path | None = None) -> None:
        super().__init__(message)
        self.source_onnx = source_onnx


class EngineLoadError(BackendError):
    """TensorRT refused to deserialize an engine file (truncated, corrupt, or from another build)."""


class EngineBuildError(BackendError):
    """TensorRT refused to parse or build the network."""


class EngineRefused(BackendError):
    """The engine built, but its masks drift from ONNX Runtime's beyond MAX_DICE_DRIFT."""


def gpu_index(device: int | None = None) -> int:
    """The CUDA device to use: `device` if given, else $INSPECT_EDGE_GPU, else 0."""
    if device is None:
        raw = os.environ.get(GPU_ENV, "0").strip() or "0"
        if not raw.isdigit():
            raise BackendError(f"{GPU_ENV}={raw!r}: expected a CUDA device index (0, 1, ...)")
        device = int(raw)
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise BackendError(f"GPU index must be an integer >= 0, got {device!r}")
    return device


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

    @classmethod
    def for_tiles(cls, tiles_per_frame: int, fp16: bool = True, max_batch: int | None = None,
                  workspace_mib: int = 1024) -> BuildOptions:
        """Tuned for the batch the pipeline sends: all tiles of one frame (see `tiles_per_frame`)."""
        if tiles_per_frame < 1:
            raise ValueError(f"tiles_per_frame: at least 1, got {tiles_per_frame}")
        return cls(fp16=fp16, min_batch=1, opt_batch=tiles_per_frame,
                   max_batch=max(max_batch or tiles_per_frame, tiles_per_frame), workspace_mib=workspace_mib)


def tiles_per_frame(info: ModelInfo, frame_height: int, frame_width: int, fit: str = "tile",
                    overlap: int = 32) -> int:
    """How many model inputs one frame becomes: the batch the pipeline sends per frame."""
    from inspect_edge.preprocess import Preprocessor

    return Preprocessor(info, fit, overlap).plan((frame_height, frame_width)).num_tiles


def effective_options(opts: BuildOptions, fixed_batch: int | None, log: Callable[[str], None] = print) -> BuildOptions:
    """A graph with a fixed batch N builds exactly N (no profile); the key must say so."""
    if fixed_batch is None:
        return opts
    if (opts.min_batch, opts.opt_batch, opts.max_batch) != (fixed_batch,) * 3:
        log(f"the ONNX graph has a fixed batch of {fixed_batch}: building for batch {fixed_batch} "
            f"(asked {opts.min_batch}..{opts.max_batch}, opt {opts.opt_batch})")
    return replace(opts, min_batch=fixed_batch, opt_batch=fixed_batch, max_batch=fixed_batch)


def profile_shapes(network_shape: tuple[int, ...], info: ModelInfo, opts: BuildOptions
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(min, opt, max) input shapes for the optimisation profile, or None when every dimension is fixed.

    `network_shape` is what TensorRT's parser reports (-1 for a dynamic dimension).
    Fixed dimensions must agree with the model metadata; dynamic spatial ones are
    pinned to it (the model runs at one size).
    """
    want = (info.input_channels, info.input_height, info.input_width)
    shape = tuple(int(d) for d in network_shape)
    if len(shape) != 4:
        raise EngineBuildError(f"network input has shape {shape}; expected (N, C, H, W)")
    for axis, (got, exp) in enumerate(zip(shape[1:], want), start=1):
        if got != -1 and got != exp:
            raise EngineBuildError(f"network input shape {shape} disagrees with the metadata (N, {want[0]}, "
                                   f"{want[1]}, {want[2]}) at axis {axis}")
    if -1 not in shape:
        return None
    if shape[0] != -1:
        return ((shape[0], *want),) * 3
    return ((opts.min_batch, *want), (opts.opt_batch, *want), (opts.max_batch, *want))


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str          # what the engine will run: "fp16" or "fp32"
    strongly_typed: bool    # create the network with types taken from the graph
    fp16_flag: bool         # set BuilderFlag.FP16 (TensorRT 10 only)
    note: str = ""          # why the plan differs from what was asked, for the log


def choose_precision(trt_major: int, graph_fp16: bool, want_fp16: bool, fast_fp16: bool | None) -> PrecisionPlan:
    """The precision rules of TensorRT 10 and 11 as one decision (see the module docstring)."""
    if graph_fp16:
        note = "" if want_fp16 else "the graph is FP16 (types come from the graph): building FP16"
        return PrecisionPlan("fp16", strongly_typed=True, fp16_flag=False, note=note)
    if not want_fp16:
        return PrecisionPlan("fp32", strongly_typed=trt_major >= 11, fp16_flag=False)
    if trt_major >= 11:
        return PrecisionPlan("fp32", strongly_typed=True, fp16_flag=False,
                             note=f"TensorRT {trt_major} takes precision from the graph and has no FP16 flag: "
                                  "building FP32 (for FP16 build the _fp16.onnx from `export onnx --fp16`)")
    if not fast_fp16:
        return PrecisionPlan("fp32", strongly_typed=False, fp16_flag=False,
                             note="this GPU has no fast FP16: building FP32")
    return PrecisionPlan("fp16", strongly_typed=False, fp16_flag=True)


@dataclass(frozen=True)
class EngineKey:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    precision: str  # what was asked for: "fp16" or "fp32" (the sidecar's ModelInfo has what was built)
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mib: int
    builder_version: str

    @classmethod
    def for_build(cls, device: DeviceIdentity, onnx_sha256: str, opts: BuildOptions) -> EngineKey:
        return cls(device.tensorrt_version, device.gpu_name, device.compute_capability, onnx_sha256,
                   "fp16" if opts.fp16 else "fp32", opts.min_batch, opts.opt_batch, opts.max_batch,
                   opts.workspace_mib, BUILDER_VERSION)

    def file_stem(self) -> str:
        """A readable, filesystem-safe name that differs whenever the key does."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        trt = re.sub(r"[^0-9.]+", "", self.tensorrt_version) or "x"
        return (f"{self.onnx_sha256[:16]}_trt{trt}_{gpu}_sm{self.compute_capability.replace('.', '')}"
                f"_{self.precision}_b{self.min_batch}-{self.opt_batch}-{self.max_batch}"
                f"_ws{self.workspace_mib}_v{re.sub(r'[^A-Za-z0-9.]+', '-', self.builder_version)}")

    def device(self) -> DeviceIdentity:
        return DeviceIdentity(self.tensorrt_version, self.gpu_name, self.compute_capability)

    @classmethod
    def from_dict(cls, d: dict, source: str) -> EngineKey:
        try:
            return cls(**d)
        except TypeError as e:
            raise BackendError(f"{source}: malformed engine key ({e}); an engine from an older "
                               "inspect-edge? rebuild it with `inspect-edge export engine`") from None


# ---- sidecar JSON -----------------------------------------------------------
def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | Path, info: ModelInfo, key: EngineKey, source_onnx: str | Path = "") -> Path:
    doc = {"format": SIDECAR_FORMAT, "engine_key": asdict(key), "model_info": info.to_dict(),
           "source_onnx": str(source_onnx)}
    return atomic_write_bytes(sidecar_path(engine_path), (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


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


def refusal_path(engine_path: str | Path) -> Path:
    """Where a refused engine's parity report is kept, so a restart does not rebuild it again and again."""
    p = Path(engine_path)
    return p.with_name(p.name + ".refused.json")


