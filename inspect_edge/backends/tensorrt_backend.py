"""TensorRT 10/11 runtime on an NVIDIA device, with pycuda for memory and streams.

Construct it inside the inference thread, and call `infer` only from that
thread: the CUDA context is made current there, and the engine, execution
context, stream and buffers all belong to it. `infer` from another thread
raises instead of failing somewhere inside CUDA.

I/O is by tensor name (`set_input_shape`, `set_tensor_address`,
`execute_async_v3`), the TensorRT 10 API that 11 keeps. Device buffers are
allocated once for the engine's largest batch; pinned host buffers are
allocated once per batch size seen and reused, so the steady state allocates
nothing. `tensorrt` and `pycuda` are imported when a backend is built, never
when this module is imported.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from inspect_edge.backends.base import Backend, BackendError
from inspect_edge.backends.onnxruntime_backend import check_model_file
from inspect_edge.backends.tensorrt_build import (
    EngineLoadError,
    check_engine_fits,
    current_device,
    import_tensorrt,
    read_sidecar,
)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        self.path = Path(engine_path)
        check_model_file(self.path, "TensorRT engine")
        self.info, self.key, source_onnx = read_sidecar(self.path)
        trt = import_tensorrt()
        check_engine_fits(self.path, self.key, current_device(device), source_onnx)
        import pycuda.driver as cuda

        self._cuda = cuda
        self._thread = threading.get_ident()
        self._ctx = cuda.Device(device).retain_primary_context()
        self._ctx.push()
        try:
            self._load(trt)
        except BaseException:
            self._ctx.pop()
            raise

    def _load(self, trt) -> None:
        cuda = self._cuda
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineLoadError(f"{self.path}: TensorRT could not load this engine (truncated, or built "
                               "by another TensorRT version or for another GPU)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) < 1:
            raise BackendError(f"{self.path}: expected one input and an output, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self._max_batch = int(max_shape[0])

        i = self.info
        self._frame = (i.input_channels, i.input_height, i.input_width)
        self._out_frame = (i.num_classes, i.input_height, i.input_width)
        per_in = int(np.prod(self._frame)) * self._in_dtype.itemsize
        per_out = int(np.prod(self._out_frame)) * self._out_dtype.itemsize
        self._dev_in = cuda.mem_alloc(self._max_batch * per_in)
        self._dev_out = cuda.mem_alloc(self._max_batch * per_out)
        self.context.set_tensor_address(self.input_name, int(self._dev_in))
        self.context.set_tensor_address(self.output_name, int(self._dev_out))
        self._stream = cuda.Stream()
        self._host: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def _host_buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n not in self._host:
            self._host[n] = (self._cuda.pagelocked_empty((n, *self._frame), self._in_dtype),
                             self._cuda.pagelocked_empty((n, *self._out_frame), self._out_dtype))
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
        host_in, host_out = self._host_buffers(n)
        np.copyto(host_in, batch, casting="same_kind")
        cuda = self._cuda
        self.context.set_input_shape(self.input_name, host_in.shape)
        cuda.memcpy_htod_async(self._dev_in, host_in, self._stream)
        if not self.context.execute_async_v3(self._stream.handle):
            raise BackendError(f"{self.path}: TensorRT execution failed (see the TensorRT log)")
        cuda.memcpy_dtoh_async(host_out, self._dev_out, self._stream)
        self._stream.synchronize()
        # A copy: the pinned buffer is overwritten by the next call.
        return host_out.astype(np.float32, copy=True)

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        # Free in reverse order of creation while our context is still current.
        self._host.clear()
        for name in ("_dev_in", "_dev_out"):
            buf = getattr(self, name, None)
            if buf is not None:
                buf.free()
        self.context = self.engine = self._runtime = self._stream = None
        self._ctx.pop()
        self._ctx = None
