"""What a benchmark contender is, the torch-free ones, and the plugin seam for the rest.

A contender runs a normalised float32 batch (N, C, H, W) and returns logits
(N, K, H, W), like a `Backend`. ONNX Runtime (CPU) and TensorRT (FP16, on an
NVIDIA device) live here; PyTorch eager comes from a plugin registered under the
entry point group `inspect_edge.bench_contenders` (see `export/bench_torch.py`),
so this package never imports torch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np

from inspect_edge.model_info import ModelInfo

log = logging.getLogger(__name__)

PLUGIN_GROUP = "inspect_edge.bench_contenders"


class Contender(ABC):
    name: str = "?"            # e.g. onnxruntime-cpu, tensorrt-fp16 (its built precision), pytorch-eager-cpu
    device: str = "cpu"        # cpu | cuda
    precision: str = "fp32"
    threads: int | None = None  # CPU threads it was given (None: not applicable)
    max_batch: int = 64

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K, H, W) float32 logits."""

    def close(self) -> None:
        pass


class BackendContender(Contender):
    """Any `Backend` of the edge runtime, as the service itself would call it."""

    def __init__(self, backend, name: str, device: str, threads: int | None) -> None:
        self.backend, self.name, self.device, self.threads = backend, name, device, threads
        # The backend's own precision: for TensorRT, what the build produced (the sidecar's
        # ModelInfo), so an FP32 fallback is labelled fp32, never fp16 by assumption.
        self.precision = backend.precision
        self.max_batch = backend.max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.backend.infer(batch)

    def close(self) -> None:
        self.backend.close()


@dataclass
class BenchModel:
    """One model under test: its ONNX file (what every contender can run) and where it came from."""
    label: str                 # e.g. "nano", or the file name
    onnx: Path
    info: ModelInfo
    random_weights: bool
    origin: str                # "built by size" | "ONNX file" | "checkpoint"
    notes: list[str] = field(default_factory=list)


class ContenderPlugin(Protocol):
    """What an `inspect_edge.bench_contenders` entry point must provide."""
    name: str

    def models_for_sizes(self, sizes: list[str], height: int, width: int, out_dir: Path) -> list[BenchModel]: ...

    def model_from_weights(self, path: Path, out_dir: Path) -> BenchModel: ...

    def contenders(self, model: BenchModel, threads: int) -> tuple[list[Contender], list[str]]: ...


def load_plugins() -> tuple[list[ContenderPlugin], list[str]]:
    """The installed contender plugins, and one line per plugin that could not load (e.g. no torch)."""
    plugins, problems = [], []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            plugins.append(obj() if isinstance(obj, type) else obj)
        except Exception as e:  # ImportError for a missing torch, or a broken plugin: say which
            problems.append(f"{ep.name}: not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return plugins, problems


def builtin_contenders(model: BenchModel, threads: int, *, tensorrt: bool = True,
                       engine_cache: Path | None = None) -> tuple[list[Contender], list[str]]:
    """ONNX Runtime on the CPU always; TensorRT when it can be opened here (else a reason).

    The TensorRT contender is named after the precision its engine was really built
    with (tensorrt-fp16, or tensorrt-fp32 after a fallback)."""
    from inspect_edge.backends import open_backend
    from inspect_edge.flip_average import flips_label

    tta = flips_label(model.info.tta_flips)  # a model's flip views are timed too
    found: list[Contender] = [BackendContender(open_backend(model.onnx, "onnxruntime", threads),
                                               f"onnxruntime-cpu{tta}", "cpu", threads)]
    skipped: list[str] = []
    if tensorrt:
        try:
            trt = open_backend(model.onnx, "tensorrt", engine_cache=engine_cache)
            found.append(BackendContender(trt, f"tensorrt-{trt.precision}{tta}", "cuda", None))
        except Exception as e:  # no tensorrt/pycuda/GPU: the reason goes into the record
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            skipped.append(f"tensorrt: not measured ({reason[:200]})")
    return found, skipped
