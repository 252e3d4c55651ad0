"""The PyTorch side of `inspect-edge bench`: eager contenders, and models to time by size.

Registered under the entry point group `inspect_edge.bench_contenders`, so the
torch-free bench finds it at run time. Each ONNX file it makes is exported from
a torch model it keeps, so PyTorch eager and ONNX Runtime run the very same
weights. A plain `.onnx` given to the bench has no torch weights: no eager
contender for it (the record says so).

Contenders: `pytorch-eager-cpu` (FP32, `torch.set_num_threads(threads)`, no
grad) always; `pytorch-cuda-fp16` when CUDA is available (a GPU reference where
TensorRT is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspect_edge.bench.contenders import BenchModel, Contender
from inspect_edge.flip_average import flip_average, flips_label
from inspect_edge.model_info import ModelInfo

DEFAULT_CLASSES = ("pits", "cracks", "scratches", "patches")


class TorchContender(Contender):
    def __init__(self, model, threads: int | None, device: str = "cpu", fp16: bool = False,
                 flips: tuple[str, ...] = ()) -> None:
        import torch

        self.torch, self.flips = torch, tuple(flips)
        self.device, self.threads = device, threads
        self.precision = "fp16" if fp16 else "fp32"
        self.name = "pytorch-eager-cpu" if device == "cpu" else f"pytorch-cuda-{self.precision}"
        self.name += flips_label(self.flips)   # the same flip views the edge backends run for this model
        self.model = model.to(device).eval()
        if fp16:
            self.model = self.model.half()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return flip_average(self._forward, batch, self.flips, self.max_batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.precision == "fp16":
                x = x.half()
            y = self.model(x)
            if self.device != "cpu":
                torch.cuda.synchronize()
            return y.float().cpu().numpy()


class TorchBenchPlugin:
    name = "torch"

    def __init__(self) -> None:
        import torch  # noqa: F401  (fail at load when torch is missing: the bench reports why)

        self._weights: dict[Path, object] = {}

    def _export(self, model, info: ModelInfo, out: Path, label: str, origin: str, random_weights: bool) -> BenchModel:
        from export.onnx_export import export_onnx

        written = export_onnx(model, info, out)
        self._weights[out.resolve()] = model
        return BenchModel(label=label, onnx=out, info=written, random_weights=random_weights, origin=origin)

    def models_for_sizes(self, sizes: list[str], height: int, width: int, out_dir: Path) -> list[BenchModel]:
        import torch

        from train.model import UNetConfig, build_model

        out_dir.mkdir(parents=True, exist_ok=True)
        models = []
        for size in sizes:
            cfg = UNetConfig(size=size, num_classes=len(DEFAULT_CLASSES))  # ValueError lists valid sizes
            torch.manual_seed(0)
            model = build_model(cfg).eval()
            info = ModelInfo(classes=DEFAULT_CLASSES, input_height=height, input_width=width, arch=cfg.arch,
                             model_version="random-weights", source_run="inspect-edge bench")
            models.append(self._export(model, info, out_dir / f"{size}.onnx", size, "built by size", True))
        return models

    def model_from_weights(self, path: Path, out_dir: Path) -> BenchModel:
        from train.checkpoint import load_run

        model, info = load_run(path)
        out_dir.mkdir(parents=True, exist_ok=True)
        label = path.name if path.is_dir() else path.stem
        return self._export(model, info, out_dir / f"{label}.onnx", label, f"checkpoint {path}", False)

    def contenders(self, model: BenchModel, threads: int) -> tuple[list[Contender], list[str]]:
        import torch

        weights = self._weights.get(Path(model.onnx).resolve())
        if weights is None:
            return [], [f"pytorch-eager-cpu: not measured ({model.onnx} is a plain ONNX file; "
                        "pass its run folder or checkpoint to time PyTorch on the same weights)"]
        flips = model.info.tta_flips
        found: list[Contender] = [TorchContender(weights, threads, flips=flips)]
        skipped = []
        if torch.cuda.is_available():
            import copy

            found.append(TorchContender(copy.deepcopy(weights), None, "cuda", fp16=True, flips=flips))
        else:
            skipped.append("pytorch-cuda-fp16: not measured (no CUDA device)")
        return found, skipped


plugin = TorchBenchPlugin
