"""TensorRT engines: cache keys, sidecars and error paths everywhere; real builds where a GPU is.

Tests marked `gpu` need `tensorrt`, `pycuda` and a CUDA device; elsewhere they
skip and say which one is missing.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from inspect_edge.backends import BackendError, open_backend
from inspect_edge.backends.tensorrt_build import (
    BuildOptions,
    DeviceIdentity,
    EngineKey,
    EngineMismatch,
    check_engine_fits,
    default_cache_dir,
    read_sidecar,
    sidecar_path,
    timing_cache_path,
    write_sidecar,
)
from inspect_edge.model_info import ModelInfo


def _gpu_missing() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "needs TensorRT (`tensorrt` is not installed; it comes from NVIDIA's index or the device image)"
    try:
        import pycuda.driver as cuda
    except ImportError:
        return "needs pycuda (not installed)"
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            return "needs an NVIDIA GPU (CUDA sees none)"
    except Exception as e:  # driver missing or broken
        return f"needs a working CUDA driver ({str(e).splitlines()[0]})"
    return None


GPU_MISSING = _gpu_missing()

H, W = 32, 64
INFO = ModelInfo(classes=("pits", "cracks"), input_height=H, input_width=W, thresholds=(0.5, 0.3), min_areas=(2, 0))
ORIN = DeviceIdentity("10.3.0", "Orin (nvgpu)", "8.7")
H100 = DeviceIdentity("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")
KEY = EngineKey.for_build(ORIN, "ab" * 32, BuildOptions(fp16=True, max_batch=4))


def conv_onnx(path, fp16=False):
    """Two small convolutions with our metadata, built with onnx.helper (no torch needed)."""
    rng = np.random.default_rng(0)
    dtype = np.float16 if fp16 else np.float32
    inits = [numpy_helper.from_array((rng.normal(size=s) * 0.5).astype(dtype), n)
             for n, s in (("w1", (4, 1, 3, 3)), ("b1", (4,)), ("w2", (2, 4, 3, 3)), ("b2", (2,)))]
    nodes = [helper.make_node("Conv", ["x16" if fp16 else "image", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y16" if fp16 else "logits"], pads=[1, 1, 1, 1])]
    if fp16:
        nodes = ([helper.make_node("Cast", ["image"], ["x16"], to=TensorProto.FLOAT16)] + nodes
                 + [helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT)])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, H, W])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, INFO.replace(precision="fp16" if fp16 else "fp32").to_metadata_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# ---- everywhere: keys, sidecars, mismatch messages ---------------------------
def test_engine_key_names_differ_whenever_the_key_does():
    variants = [KEY,
                EngineKey.for_build(H100, KEY.onnx_sha256, BuildOptions(fp16=True, max_batch=4)),
                EngineKey.for_build(DeviceIdentity("10.4.0", ORIN.gpu_name, "8.7"), KEY.onnx_sha256, BuildOptions(max_batch=4)),
                EngineKey.for_build(DeviceIdentity("10.3.0", ORIN.gpu_name, "8.6"), KEY.onnx_sha256, BuildOptions(max_batch=4)),
                EngineKey.for_build(ORIN, "cd" * 32, BuildOptions(max_batch=4)),
                EngineKey.for_build(ORIN, KEY.onnx_sha256, BuildOptions(fp16=False, max_batch=4)),
                EngineKey.for_build(ORIN, KEY.onnx_sha256, BuildOptions(max_batch=8))]
    stems = [k.file_stem() for k in variants]
    assert len(set(stems)) == len(stems)
    assert all(set(s) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-.") for s in stems), stems
    assert stems[0] == "abababababababab_trt10.3.0_orin-nvgpu_sm87_fp16_b1-1-4"


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "model.engine"
    side = write_sidecar(engine, INFO.replace(precision="fp16"), KEY, tmp_path / "model.onnx")
    assert side == sidecar_path(engine) == tmp_path / "model.engine.json"
    info, key, source = read_sidecar(engine)
    assert info == INFO.replace(precision="fp16") and key == KEY and source == tmp_path / "model.onnx"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"no sidecar model\.engine\.json"),
        ("{not json", r"unreadable sidecar JSON"),
        (json.dumps({"format": "something-else"}), r"not an inspect-edge engine sidecar"),
        (json.dumps({"format": "inspect-edge-engine/1", "model_info": {}}), r"missing field 'engine_key'"),
        (json.dumps({"format": "inspect-edge-engine/1", "engine_key": {"gpu": 1}, "model_info": INFO.to_dict()}),
         r"malformed engine key"),
        (json.dumps({"format": "inspect-edge-engine/1", "engine_key": {},
                     "model_info": {**INFO.to_dict(), "input_height": 33}}), r"input_height: must be a positive multiple of 32"),
    ],
)
def test_bad_sidecars_get_one_line_reasons(tmp_path, content, message):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 32)
    if content is not None:
        sidecar_path(engine).write_text(content)
    with pytest.raises(BackendError, match=message) as e:
        read_sidecar(engine)
    assert "\n" not in str(e.value)


def test_engine_for_another_gpu_is_named_in_one_line(tmp_path):
    check_engine_fits("e.engine", KEY, ORIN)  # same device: fine
    with pytest.raises(EngineMismatch) as e:
        check_engine_fits("e.engine", KEY, H100, tmp_path / "model.onnx")
    text = str(e.value)
    assert "\n" not in text and "Orin (nvgpu) (sm 8.7) with TensorRT 10.3.0" in text and "NVIDIA H100" in text
    assert e.value.source_onnx == tmp_path / "model.onnx"


def test_timing_cache_sits_beside_the_engine_per_device(tmp_path):
    a, b = timing_cache_path(tmp_path / "x.engine", ORIN), timing_cache_path(tmp_path / "y.engine", ORIN)
    assert a == b and a.parent == tmp_path
    assert timing_cache_path(tmp_path / "x.engine", H100) != a


def test_cache_dir_and_build_options(monkeypatch, tmp_path):
    monkeypatch.setenv("INSPECT_EDGE_ENGINE_CACHE", str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"
    with pytest.raises(ValueError, match="batch range"):
        BuildOptions(min_batch=4, opt_batch=2, max_batch=8)


@pytest.mark.skipif(GPU_MISSING is None, reason="TensorRT and a GPU are present: the missing-TensorRT path cannot happen")
def test_without_tensorrt_engines_fail_with_a_clear_reason(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    write_sidecar(engine, INFO, KEY)
    with pytest.raises(BackendError) as e:
        open_backend(engine)
    assert ("TensorRT is not installed" in str(e.value) or "pycuda" in str(e.value)
            or "CUDA" in str(e.value)) and "\n" not in str(e.value)
    onnx_path = conv_onnx(tmp_path / "model.onnx")
    with pytest.raises(BackendError):
        open_backend(onnx_path, backend="tensorrt", engine_cache=tmp_path / "cache")

    from export.cli import app

    r = CliRunner().invoke(app, ["engine", str(onnx_path)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output


def test_engine_command_rejects_onnx_without_metadata_before_tensorrt(tmp_path):
    from export.cli import app

    proto = onnx.load(str(conv_onnx(tmp_path / "m.onnx")))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    r = CliRunner().invoke(app, ["engine", str(tmp_path / "bare.onnx")])
    assert r.exit_code == 2 and "no inspect-edge metadata" in r.output, r.output


# ---- with TensorRT and a GPU ------------------------------------------------
@pytest.fixture()
def onnx_model(tmp_path):
    return conv_onnx(tmp_path / "model.onnx")


def _frames(n):
    return np.random.default_rng(n).normal(size=(n, 1, H, W)).astype(np.float32)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
@pytest.mark.parametrize("fp16", [False, True])
def test_build_run_and_match_onnxruntime(tmp_path, onnx_model, fp16):
    from inspect_edge.backends.tensorrt_build import build_engine

    engine = tmp_path / "model.engine"
    key = build_engine(onnx_model, engine, BuildOptions(fp16=fp16, max_batch=4), log=lambda s: None)
    info, stored, source = read_sidecar(engine)
    assert stored == key and source == onnx_model.resolve() and info.classes == INFO.classes
    assert any(tmp_path.glob("timing_*.cache"))
    ref = open_backend(onnx_model)
    with open_backend(engine) as trt_backend:
        assert trt_backend.max_batch == 4
        for n in (1, 3, 3):  # the second 3 reuses the pinned buffers
            x = _frames(n)
            np.testing.assert_allclose(trt_backend.infer(x), ref.infer(x), atol=2e-2 if fp16 else 1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_fp16_graph_builds_strongly_typed(tmp_path):
    path = conv_onnx(tmp_path / "model_fp16.onnx", fp16=True)
    from inspect_edge.backends.tensorrt_build import build_engine

    build_engine(path, tmp_path / "h.engine", BuildOptions(fp16=True, max_batch=2), log=lambda s: None)
    with open_backend(tmp_path / "h.engine") as b:
        assert b.precision == "fp16"
        np.testing.assert_allclose(b.infer(_frames(2)), open_backend(path).infer(_frames(2)), atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_cache_builds_once_and_rebuilds_engines_from_another_device(tmp_path, onnx_model):
    from inspect_edge.backends.tensorrt_build import cached_engine

    cache = tmp_path / "cache"
    first = cached_engine(onnx_model, cache, log=lambda s: None)
    stamp = first.stat().st_mtime_ns
    assert cached_engine(onnx_model, cache, log=lambda s: None) == first and first.stat().st_mtime_ns == stamp
    # Pretend the engine came from an Orin: the service rebuilds from the source ONNX instead of failing.
    info, key, source = read_sidecar(first)
    foreign = tmp_path / "foreign.engine"
    foreign.write_bytes(first.read_bytes())
    write_sidecar(foreign, info, EngineKey(**{**key.__dict__, "gpu_name": "Orin (nvgpu)", "compute_capability": "8.7"}), source)
    with open_backend(foreign, engine_cache=cache) as b:
        assert b.path == first
    # A damaged cache entry is rebuilt once, not served.
    first.write_bytes(first.read_bytes()[:500])
    with open_backend(onnx_model, backend="tensorrt", engine_cache=cache) as b:
        assert b.infer(_frames(1)).shape == (1, 2, H, W)
    source.unlink()
    with pytest.raises(EngineMismatch, match="engine built for Orin"):
        open_backend(foreign, engine_cache=cache)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_truncated_engine_and_wrong_thread_are_clear_errors(tmp_path, onnx_model):
    from inspect_edge.backends.tensorrt_build import build_engine

    engine = tmp_path / "model.engine"
    build_engine(onnx_model, engine, BuildOptions(fp16=False, max_batch=2), log=lambda s: None)
    b = open_backend(engine)
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(BackendError, b.infer, _frames(1))))
    t.start()
    t.join()
    assert errors and "another thread" in str(errors[0].value)
    b.close()
    cut = tmp_path / "cut.engine"
    cut.write_bytes(engine.read_bytes()[:1000])
    sidecar_path(cut).write_text(sidecar_path(engine).read_text())
    with pytest.raises(BackendError, match="could not load this engine"):
        open_backend(cut)


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_engine_command_builds_and_reports_parity(tmp_path, onnx_model):
    from export.cli import app

    r = CliRunner().invoke(app, ["engine", str(onnx_model), "--max-batch", "4", "--images", "3"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "model.engine.parity.json").read_text())
    assert report["passed"] and report["reference"] == "onnxruntime-cpu"
    assert set(report["per_class_dice"]) == {"pits", "cracks"}
    assert (tmp_path / "model.engine").is_file() and (tmp_path / "model.engine.json").is_file()
