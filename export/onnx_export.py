"""PyTorch segmenter -> a single self-describing `.onnx` file.

Exporter: the torch.export-based ONNX exporter (`torch.onnx.export(..., dynamo=True)`).
Chosen deliberately, not by default: it *is* the default in torch 2.13, but we name
it so a future default change cannot silently switch exporters. Why this one:
- the TorchScript exporter (`dynamo=False`) is deprecated and receives no fixes;
- torch.export captures the graph without running Python control flow per
  sample, and refuses graphs it cannot capture faithfully (a loud failure instead
  of a silently traced wrong branch);
- the dynamic batch is stated as a `torch.export.Dim` and checked by the exporter,
  where `dynamic_axes` on the old path was only a renaming of dimensions.
The segmenter pads to a multiple of 32 with Python ints computed from the fixed
(H, W), so the exported graph has static spatial sizes and only the batch is dynamic.

Opset 18: the exporter's native opset (asking for 17 makes it run a version
converter over the graph, one more thing to go wrong); TensorRT 10 and ONNX
Runtime >= 1.14 both run it. The graph is checked with `onnx.checker` (full
check, including shape inference) before anything is written.

What the service needs travels in `metadata_props` (see `ModelInfo`), including
`content_hash`: SHA-256 of the serialized graph (weights and structure, without
the metadata), so two files with the same hash compute the same thing whatever
their metadata says. The file is written whole (no external data) and atomically.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from export.onnx_meta import content_hash_matches, graph_hash, read_metadata  # noqa: F401 (re-exported)
from inspect_edge.model_info import ModelInfo

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportError(RuntimeError):
    """The exporter or checker refused the model; the message says why, on one line."""


class Float32Boundary(torch.nn.Module):
    """Run a float16 copy of the model behind float32 inputs and outputs.

    The FP16 graph (for TensorRT 11, which takes precision from the graph) keeps
    float32 at its edges so every backend feeds it exactly what it feeds the FP32 one.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _check_io(model: onnx.ModelProto, info: ModelInfo) -> None:
    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    (inp,), (out,) = model.graph.input, model.graph.output
    i_dims, o_dims = dims(inp), dims(out)
    want_in = [info.input_channels, info.input_height, info.input_width]
    want_out = [info.num_classes, info.input_height, info.input_width]
    if i_dims[1:] != want_in or o_dims[1:] != want_out or not isinstance(i_dims[0], str):
        raise ExportError(f"exported graph has input {i_dims} and output {o_dims}; expected "
                          f"[batch, {', '.join(map(str, want_in))}] -> [batch, {', '.join(map(str, want_out))}]")
    for vi in (inp, out):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"graph {vi.name!r} is not float32")


def export_onnx(model: torch.nn.Module, info: ModelInfo, out: str | Path, *, opset: int = DEFAULT_OPSET,
                fp16: bool = False, source_run: str = "", model_version: str | None = None) -> ModelInfo:
    """Export `model` (eval mode, CPU) for `info`'s input size; return the ModelInfo written into the file."""
    if opset < 17:
        raise ExportError(f"opset {opset} is too old: 17 or later")
    out = Path(out)
    model = model.eval().cpu()
    if fp16:
        import copy

        model = Float32Boundary(copy.deepcopy(model)).eval()
    example = torch.zeros(2, info.input_channels, info.input_height, info.input_width)
    try:
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False, optimize=True, verbose=False,
        )
    except Exception as e:  # the exporter raises many kinds; the caller wants one line
        raise ExportError(f"torch.onnx.export failed: {_one_line(e)}") from e
    proto = program.model_proto
    _check_io(proto, info)

    written = info.replace(
        content_hash=graph_hash(proto),
        precision="fp16" if fp16 else "fp32",
        source_run=source_run or info.source_run,
        model_version=model_version or info.model_version,
    )
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, written.to_metadata_props())
    proto.producer_name, proto.doc_string = "inspect-edge", f"inspect-edge segmenter {written.arch or ''}".strip()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejected the exported graph: {_one_line(e)}") from None

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return written


def pytorch_vs_onnxruntime(model: torch.nn.Module, onnx_path: str | Path, images, tolerance=None, batch_size: int = 4):
    """Parity of `onnx_path` (on ONNX Runtime, CPU, read through the service's own backend) against `model`."""
    import numpy as np

    from export.parity import compare_logits
    from inspect_edge.preprocess import normalise
    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    from train.predict import predict_logits

    backend = OnnxRuntimeBackend(onnx_path)
    info = backend.info
    ref = predict_logits(model, images, info, batch_size=batch_size, tta=False)   # one pass each side
    cand = np.concatenate([backend.infer(normalise(images[i:i + batch_size], info))
                           for i in range(0, len(images), batch_size)])
    label = "onnxruntime-cpu" + ("-fp16" if info.precision == "fp16" else "")
    return compare_logits(ref, cand, info, reference="pytorch-fp32", candidate=label, tolerance=tolerance)
