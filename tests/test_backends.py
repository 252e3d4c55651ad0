"""ONNX Runtime backend and `open_backend`: real ONNX files built here with onnx.helper (no torch)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inspect_edge.backends import BackendError, BackendName, open_backend
from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from inspect_edge.model_info import ModelInfo

H, W = 32, 64
INFO = ModelInfo(classes=("pits", "cracks"), input_height=H, input_width=W,
                 thresholds=(0.4, 0.6), min_areas=(3, 5), model_version="1.2.3", source_run="runs/x")
# A 1x1 convolution: logit_k = WEIGHTS[k] * x + BIAS[k], easy to check by hand.
WEIGHTS = np.array([2.0, -1.5], np.float32)
BIAS = np.array([0.25, 1.0], np.float32)


def conv_onnx(path, info=INFO, fp16=False, batch="batch", with_metadata=True, height=H):
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    dtype = np.float16 if fp16 else np.float32
    k = len(WEIGHTS)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", elem, [batch, 1, height, W])],
        [helper.make_tensor_value_info("logits", elem, [batch, k, height, W])],
        [numpy_helper.from_array(WEIGHTS.reshape(k, 1, 1, 1).astype(dtype), "w"),
         numpy_helper.from_array(BIAS.astype(dtype), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        helper.set_model_props(model, info.to_metadata_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def expected(x):
    return WEIGHTS[None, :, None, None] * x + BIAS[None, :, None, None]


@pytest.fixture()
def model_path(tmp_path):
    return conv_onnx(tmp_path / "model.onnx")


def test_reads_metadata_and_runs_a_dynamic_batch(model_path):
    with open_backend(model_path, threads=1) as b:
        assert isinstance(b, OnnxRuntimeBackend) and b.name == "onnxruntime"
        assert b.info == INFO and b.info.thresholds == (0.4, 0.6) and b.precision == "fp32"
        for n in (1, 3):
            x = np.random.default_rng(n).normal(size=(n, 1, H, W)).astype(np.float32)
            y = b.infer(x)
            assert y.dtype == np.float32 and y.shape == (n, 2, H, W)
            np.testing.assert_allclose(y, expected(x), rtol=1e-6, atol=1e-6)
        b.warmup()


def test_session_options_threads_and_no_spinning(model_path):
    b = OnnxRuntimeBackend(model_path, threads=2)
    opts = b.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert b.session.get_providers() == ["CPUExecutionProvider"]
    assert (b.input_name, b.output_name) == ("image", "logits")


def test_fp16_graph_takes_and_returns_float32(tmp_path):
    path = conv_onnx(tmp_path / "half.onnx", info=INFO.replace(precision="fp16"), fp16=True)
    b = open_backend(path, backend="onnxruntime")
    x = np.linspace(-2, 2, 2 * H * W, dtype=np.float32).reshape(2, 1, H, W)
    y = b.infer(x)
    assert y.dtype == np.float32 and b.precision == "fp16"
    np.testing.assert_allclose(y, expected(x), atol=1e-2)


def test_wrong_batch_shape_is_a_clear_error(model_path):
    b = open_backend(model_path)
    with pytest.raises(ValueError, match=r"does not match the model input"):
        b.infer(np.zeros((1, 1, H, W + 32), np.float32))


def test_fixed_batch_export_caps_max_batch(tmp_path):
    b = open_backend(conv_onnx(tmp_path / "fixed.onnx", batch=2))
    assert b.max_batch == 2
    assert b.infer(np.ones((2, 1, H, W), np.float32)).shape == (2, 2, H, W)


def test_backend_names_are_a_str_enum():
    assert [b.value for b in BackendName] == ["auto", "onnxruntime", "tensorrt"]
    assert BackendName("tensorrt") == "tensorrt"


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.onnx", r"absent\.onnx: no such ONNX file"),
        (lambda d: _write(d / "empty.onnx", b""), r"empty file"),
        (lambda d: _write(d / "junk.onnx", b"not a protobuf at all" * 10), r"junk\.onnx: not a loadable ONNX model"),
        (lambda d: conv_onnx(d / "bare.onnx", with_metadata=False), r"bare\.onnx: no inspect-edge metadata"),
        (lambda d: conv_onnx(d / "odd.onnx", height=64), r"odd\.onnx: input shape .* does not match the metadata"),
        (lambda d: d / "model.pt", r"model\.pt: unknown model file type '\.pt'"),
        (lambda d: d / "model.engine", r"model\.engine: no such TensorRT engine file"),
    ],
)
def test_bad_files_get_one_line_reasons(tmp_path, make, message):
    with pytest.raises(BackendError, match=message) as e:
        open_backend(make(tmp_path))
    assert "\n" not in str(e.value)


def test_truncated_onnx_is_rejected(model_path):
    data = model_path.read_bytes()
    model_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match=r"not a loadable ONNX model") as e:
        open_backend(model_path)
    assert "\n" not in str(e.value)


def test_backend_choice_errors(tmp_path, model_path):
    with pytest.raises(BackendError, match=r"unknown backend 'openvino'"):
        open_backend(model_path, backend="openvino")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(BackendError, match=r"cannot run on onnxruntime"):
        open_backend(engine, backend="onnxruntime")
    # An engine without its sidecar fails on the metadata before TensorRT is even needed.
    with pytest.raises(BackendError, match=r"no sidecar m\.engine\.json"):
        open_backend(engine)


def test_usable_from_another_thread_than_the_constructor(model_path):
    # ONNX Runtime sessions are thread-safe for `run`; the service builds in one
    # thread and may infer in another, so make sure that works.
    b = open_backend(model_path)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("y", b.infer(np.zeros((1, 1, H, W), np.float32))))
    t.start()
    t.join()
    np.testing.assert_allclose(out["y"][0, :, 0, 0], BIAS)
