"""TensorRT 10/11 runtime on an NVIDIA device, with pycuda for memory and streams.

Construct it inside the inference thread, and call `infer` only from that
thread (the pipeline's contract; `infer` from another thread raises instead of
failing somewhere inside CUDA). `close` may be called from any thread.

What the engine says wins over what we assume: the I/O tensors, their shapes
and dtypes are read from the engine (`num_io_tensors`, `get_tensor_name`,
`get_tensor_mode`, `get_tensor_shape`, `get_tensor_dtype`) and checked against
the sidecar's ModelInfo by `check_engine_io`, a mismatch being an error as in
the ONNX Runtime backend. Every output tensor gets a device buffer and an
address (TensorRT 10 fails `execute_async_v3` when one has none), even outputs
the service does not read. `set_input_shape`'s result is checked.

CUDA context (as NVIDIA's samples do it): the backend retains the device's
primary context for its lifetime and makes it current only around its own
calls (`_current`), so buffers, streams and TensorRT objects are created and
freed with their context current, whichever thread closes the backend, and a
build holding its own retain (tensorrt_build.cuda_context) is never left
without one.

Batches: an engine with a dynamic batch takes 1..max (its profile's maximum);
one with a fixed batch N takes 1..N, padded up to N (the padding rows' outputs
are dropped). `tensorrt` and `pycuda` are imported when a backend is built,
never when this module is imported.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspect_edge.backends.base import Backend, BackendError
from inspect_edge.backends.onnxruntime_backend import check_model_file
from inspect_edge.backends.tensorrt_build import (
    EngineLoadError,
    check_engine_fits,
    current_device,
    gpu_index,
    import_cuda,
    import_tensorrt,
    read_sidecar,
)
from inspect_edge.model_info import ModelInfo

_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]   # as the engine reports it: -1 for a dynamic dimension
    dtype: np.dtype


@dataclass(frozen=True)
class EngineIO:
    input: TensorSpec
    logits: TensorSpec          # the output the service reads
    fixed_batch: int | None     # None: dynamic batch (optimisation profile)


def _agrees(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(shape) == 1 + len(want) and all(g in (-1, w) for g, w in zip(shape[1:], want))


def check_engine_io(source: str, info: ModelInfo, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> EngineIO:
    """The engine's own I/O against the sidecar: one float input (N, C, H, W), a float (N, K, H, W) output."""
    frame = (info.input_channels, info.input_height, info.input_width)
    out_frame = (info.num_classes, info.input_height, info.input_width)
    if len(inputs) != 1 or not outputs:
        raise BackendError(f"{source}: expected one input and at least one output, got inputs "
                           f"{[t.name for t in inputs]} and outputs {[t.name for t in outputs]}")
    inp = inputs[0]
    if not _agrees(inp.shape, frame):
        raise BackendError(f"{source}: engine input {inp.name!r} has shape {inp.shape}, the sidecar says "
                           f"(N, {frame[0]}, {frame[1]}, {frame[2]})")
    if inp.dtype not in _FLOATS:
        raise BackendError(f"{source}: engine input {inp.name!r} is {inp.dtype}, expected float32 or float16")
    matching = [t for t in outputs if _agrees(t.shape, out_frame)]
    logits = next((t for t in matching if t.name == "logits"), matching[0] if matching else None)
    if logits is None:
        raise BackendError(f"{source}: no engine output has shape (N, {out_frame[0]}, {out_frame[1]}, "
                           f"{out_frame[2]}) as the sidecar's {info.num_classes} classes need; outputs: "
                           f"{[(t.name, t.shape) for t in outputs]}")
    if logits.dtype not in _FLOATS:
        raise BackendError(f"{source}: engine output {logits.name!r} is {logits.dtype}, expected float32 or float16")
    batch = inp.shape[0]
    if batch != -1 and batch < 1:
        raise BackendError(f"{source}: engine input batch dimension {batch} is not usable")
    if logits.shape[0] not in (-1, batch):
        raise BackendError(f"{source}: output batch {logits.shape[0]} differs from input batch {batch}")
    return EngineIO(inp, logits, None if batch == -1 else batch)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int | None = None) -> None:
        self.path = Path(engine_path)
        check_model_file(self.path, "TensorRT engine")
        self.info, self.key, source_onnx = read_sidecar(self.path)
        trt = import_tensorrt()
        self.device = gpu_index(device)
        check_engine_fits(self.path, self.key, current_device(self.device), source_onnx)
        self._cuda = cuda = import_cuda()
        self._thread = threading.get_ident()
        self._ctx = cuda.Device(self.device).retain_primary_context()
        self._dev: dict[str, object] = {}
        try:
            with self._current():
                self._load(trt)
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def _current(self):
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _load(self, trt) -> None:
        cuda = self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineLoadError(f"{self.path}: TensorRT could not load this engine (truncated, or built "
                                  "by another TensorRT version or for another GPU)")
        e = self.engine
        specs = {"in": [], "out": []}
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            spec = TensorSpec(name, tuple(int(d) for d in e.get_tensor_shape(name)),
                              np.dtype(trt.nptype(e.get_tensor_dtype(name))))
            specs["in" if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "out"].append(spec)
        io = check_engine_io(str(self.path), self.info, specs["in"], specs["out"])
        self._io, self._outputs = io, specs["out"]
        if io.fixed_batch is not None:
            self._max_batch = io.fixed_batch
        else:
            _, _, max_shape = e.get_tensor_profile_shape(io.input.name, 0)
            self._max_batch = int(max_shape[0])
        self.context = e.create_execution_context()
        if self.context is None:
            raise BackendError(f"{self.path}: TensorRT could not create an execution context (GPU memory?)")
        self._frame = (self.info.input_channels, self.info.input_height, self.info.input_width)
        self._out_frame = (self.info.num_classes, self.info.input_height, self.info.input_width)
        # Size every buffer at the largest batch: the context reports each output's shape for it.
        self._set_batch(self._max_batch)
        for spec in [io.input, *self._outputs]:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.path}: tensor {spec.name!r} has a data-dependent shape {shape}; "
                                   "such outputs are not supported")
            self._dev[spec.name] = buf = cuda.mem_alloc(max(1, int(np.prod(shape))) * spec.dtype.itemsize)
            if not self.context.set_tensor_address(spec.name, int(buf)):
                raise BackendError(f"{self.path}: TensorRT refused the address for tensor {spec.name!r}")
        self._stream = cuda.Stream()
        self._host: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _set_batch(self, n: int) -> None:
        io = self._io
        if not self.context.set_input_shape(io.input.name, (n, *self._frame)):
            raise BackendError(f"{self.path}: TensorRT refused input shape {(n, *self._frame)} for "
                               f"{io.input.name!r} (outside the engine's profile?)")
        got = tuple(self.context.get_tensor_shape(io.logits.name))
        if got != (n, *self._out_frame):
            raise BackendError(f"{self.path}: for a batch of {n} the engine gives {io.logits.name!r} shape {got}, "
                               f"expected {(n, *self._out_frame)}")
        self._batch_set = n

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def _host_buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self._host:
            self._host[n] = (self._cuda.pagelocked_empty((n, *self._frame), self._io.input.dtype),
                             self._cuda.pagelocked_empty((n, *self._out_frame), self._io.logits.dtype))
        return self._host[n]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if threading.get_ident() != self._thread:
            raise BackendError("TensorRTBackend.infer called from another thread than the one that built it; "
                               "construct the backend inside the inference thread")
        n = batch.shape[0]
        if batch.ndim != 4 or batch.shape[1:] != self._frame:
            raise ValueError(f"batch shape {batch.shape} does not match the engine input (N, {self._frame})")
        if not 1 <= n <= self._max_batch:
            raise ValueError(f"batch of {n} outside this engine's range 1..{self._max_batch}")
        run = self._io.fixed_batch or n  # a fixed-batch engine always runs its batch; extra rows are dropped
        host_in, host_out = self._host_buffers(run)
        np.copyto(host_in[:n], batch, casting="same_kind")
        cuda = self._cuda
        with self._current():
            if self._batch_set != run:
                self._set_batch(run)
            cuda.memcpy_htod_async(self._dev[self._io.input.name], host_in, self._stream)
            if not self.context.execute_async_v3(self._stream.handle):
                raise BackendError(f"{self.path}: TensorRT execution failed (see the TensorRT log)")
            cuda.memcpy_dtoh_async(host_out, self._dev[self._io.logits.name], self._stream)
            self._stream.synchronize()
        # A copy: the pinned buffer is overwritten by the next call.
        return host_out[:n].astype(np.float32, copy=True)

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        # Free in reverse order of creation, with our context current whichever thread calls.
        with self._current():
            self._host = {}
            if getattr(self, "_stream", None) is not None:
                self._stream.synchronize()
            for buf in reversed(list(self._dev.values())):
                buf.free()
            self._dev = {}
            self.context = self.engine = self._runtime = self._stream = None
        self._ctx.detach()
        self._ctx = None
