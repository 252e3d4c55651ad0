"""ONNX Runtime on the CPU: the backend every machine has.

The model's `ModelInfo` is read from the ONNX file's own metadata_props, so the
`.onnx` alone is enough to run the service.

Threading choices, for a box that also runs a camera capture thread:
- `intra_op_num_threads` is configurable (None lets ONNX Runtime use all cores);
- one inter-op thread, because the graph is a single chain of convolutions;
- busy-wait spinning off for both pools: a spinning pool keeps cores at 100 %
  between frames and starves the capture thread on 2- and 4-core machines.

An FP16 graph exported with `float16` inputs/outputs still takes and returns
float32 here: the cast happens at this boundary, so callers never see fp16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspect_edge.backends.base import Backend, BackendError
from inspect_edge.model_info import ModelInfo, ModelInfoError

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def check_model_file(path: Path, kind: str) -> None:
    """One-line errors for the usual ways a model path is wrong, before any runtime sees it."""
    if not path.exists():
        raise BackendError(f"{path}: no such {kind} file")
    if not path.is_file():
        raise BackendError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise BackendError(f"{path}: empty file (an interrupted copy or export?)")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        check_model_file(self.path, "ONNX")
        if threads is not None and threads < 1:
            raise BackendError(f"threads: must be >= 1 or None, got {threads}")

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only; warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises several private exception types
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{self.path}: not a loadable ONNX model (truncated or not ONNX?): {reason}") from None

        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.info = ModelInfo.from_metadata_props(props, source=str(self.path))
        except ModelInfoError as e:
            raise BackendError(str(e)) from None

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise BackendError(f"{self.path}: expected one input and at least one output, "
                               f"got {len(inputs)} input(s) and {len(outputs)} output(s)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        if inputs[0].type not in _ORT_TYPES:
            raise BackendError(f"{self.path}: input {self.input_name!r} has type {inputs[0].type}, "
                               "expected float or float16")
        self._input_dtype = _ORT_TYPES[inputs[0].type]
        self._check_input_shape(inputs[0].shape)

    def _check_input_shape(self, shape: list) -> None:
        i = self.info
        want = [i.input_channels, i.input_height, i.input_width]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != want:
            raise BackendError(f"{self.path}: input shape {shape} does not match the metadata "
                               f"(N, {i.input_channels}, {i.input_height}, {i.input_width})")
        # A fixed batch dimension (an export without a dynamic axis) caps the batch size.
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None

    @property
    def max_batch(self) -> int:
        return self._fixed_batch or super().max_batch

    def infer(self, batch: np.ndarray) -> np.ndarray:
        i = self.info
        if batch.ndim != 4 or batch.shape[1:] != (i.input_channels, i.input_height, i.input_width):
            raise ValueError(f"batch shape {batch.shape} does not match the model input "
                             f"(N, {i.input_channels}, {i.input_height}, {i.input_width})")
        if self._fixed_batch and batch.shape[0] != self._fixed_batch:
            raise ValueError(f"this model was exported with a fixed batch of {self._fixed_batch}, got {batch.shape[0]}")
        x = np.ascontiguousarray(batch, dtype=self._input_dtype)
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.session = None
