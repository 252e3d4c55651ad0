"""TensorRT engines: cache keys, sidecars and error paths everywhere; real builds where a GPU is.

Tests marked `gpu` need `tensorrt`, `pycuda` and a CUDA device; elsewhere they
skip and say which one is missing.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from inspect_edge.backends import BackendError, open_backend
from inspect_edge.backends.tensorrt_backend import TensorSpec, check_engine_io
from inspect_edge.backends.tensorrt_build import (
    BUILDER_VERSION,
    BuildOptions,
    DeviceIdentity,
    EngineKey,
    EngineMismatch,
    EngineBuildError,
    check_engine_fits,
    choose_precision,
    default_cache_dir,
    effective_options,
    gpu_index,
    profile_shapes,
    read_sidecar,
    sidecar_path,
    tiles_per_frame,
    timing_cache_path,
    write_sidecar,
)
from inspect_edge.backends.tensorrt_cache import (
    MAX_DICE_DRIFT,
    TIMING_MAGIC,
    active_build,
    atomic_write_bytes,
    build_once,
    builds_in_flight,
    file_lock,
    load_timing_cache,
    parity_failures,
    reset_shutdown,
    save_timing_cache,
    shutdown_requested,
    stop_builds,
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


def conv_onnx(path, fp16=False, batch="batch"):
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
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 1, H, W])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 2, H, W])], inits)
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
    assert stems[0] == f"abababababababab_trt10.3.0_orin-nvgpu_sm87_fp16_b1-1-4_ws1024_v{BUILDER_VERSION}"


def test_cache_key_includes_workspace_and_builder_version():
    a = EngineKey.for_build(ORIN, KEY.onnx_sha256, BuildOptions(max_batch=4, workspace_mib=512))
    assert a != KEY and a.file_stem() != KEY.file_stem() and a.workspace_mib == 512
    assert KEY.builder_version == BUILDER_VERSION
    older = EngineKey(**{**KEY.__dict__, "builder_version": "1"})
    assert older != KEY and older.file_stem() != KEY.file_stem()


def test_sidecar_from_before_the_key_grew_asks_for_a_rebuild(tmp_path):
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"\0" * 32)
    key = {k: v for k, v in KEY.__dict__.items() if k not in ("workspace_mib", "builder_version")}
    sidecar_path(engine).write_text(json.dumps({"format": "inspect-edge-engine/1", "engine_key": key,
                                                "model_info": INFO.to_dict()}))
    with pytest.raises(BackendError, match="malformed engine key.*rebuild"):
        read_sidecar(engine)


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


# ---- everywhere: engine I/O against the sidecar (plain values, no TensorRT) --
F32, F16, I32 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int32)
IN = TensorSpec("image", (-1, 1, H, W), F32)
OUT = TensorSpec("logits", (-1, 2, H, W), F32)


def test_engine_io_matching_the_sidecar_is_accepted():
    io = check_engine_io("e", INFO, [IN], [OUT])
    assert io.input == IN and io.logits == OUT and io.fixed_batch is None
    fixed = check_engine_io("e", INFO, [TensorSpec("image", (4, 1, H, W), F16)], [TensorSpec("logits", (4, 2, H, W), F16)])
    assert fixed.fixed_batch == 4
    # An extra output (e.g. a debug head) is allowed: it gets a buffer, the logits are found by shape and name.
    aux = TensorSpec("aux", (-1, 7), F32)
    assert check_engine_io("e", INFO, [IN], [aux, OUT]).logits == OUT


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ([IN, IN], [OUT], r"expected one input"),
        ([IN], [], r"expected one input and at least one output"),
        ([TensorSpec("image", (-1, 3, H, W), F32)], [OUT], r"input 'image' has shape \(-1, 3, 32, 64\), the sidecar says \(N, 1, 32, 64\)"),
        ([TensorSpec("image", (-1, 1, H, W), I32)], [OUT], r"is int32, expected float32 or float16"),
        ([IN], [TensorSpec("logits", (-1, 3, H, W), F32)], r"no engine output has shape \(N, 2, 32, 64\)"),
        ([IN], [TensorSpec("logits", (-1, 2, H, W), I32)], r"output 'logits' is int32"),
        ([TensorSpec("image", (2, 1, H, W), F32)], [TensorSpec("logits", (4, 2, H, W), F32)], r"output batch 4 differs"),
    ],
)
def test_engine_io_disagreeing_with_the_sidecar_is_a_clear_error(inputs, outputs, message):
    with pytest.raises(BackendError, match=message) as e:
        check_engine_io("model.engine", INFO, inputs, outputs)
    assert "\n" not in str(e.value) and str(e.value).startswith("model.engine: ")


# ---- everywhere: build decisions from plain values ---------------------------
def test_profile_only_for_dynamic_dimensions():
    opts = BuildOptions(min_batch=1, opt_batch=3, max_batch=8)
    assert profile_shapes((-1, 1, H, W), INFO, opts) == ((1, 1, H, W), (3, 1, H, W), (8, 1, H, W))
    assert profile_shapes((4, 1, H, W), INFO, opts) is None  # fixed batch: no profile at all
    assert profile_shapes((2, 1, -1, -1), INFO, opts) == ((2, 1, H, W),) * 3  # spatial pinned to the metadata
    with pytest.raises(EngineBuildError, match="disagrees with the metadata"):
        profile_shapes((-1, 1, H, W + 32), INFO, opts)
    with pytest.raises(EngineBuildError, match=r"expected \(N, C, H, W\)"):
        profile_shapes((-1, H, W), INFO, opts)


def test_fixed_batch_graph_builds_its_batch_and_the_key_says_so():
    said = []
    opts = effective_options(BuildOptions(max_batch=8), 4, said.append)
    assert (opts.min_batch, opts.opt_batch, opts.max_batch) == (4, 4, 4) and "fixed batch of 4" in said[0]
    assert effective_options(BuildOptions(max_batch=8), None) == BuildOptions(max_batch=8)


def test_optimisation_batch_is_the_tiles_per_frame():
    info = ModelInfo(classes=("a",), input_height=256, input_width=512)
    tiles = tiles_per_frame(info, 256, 1600)
    assert tiles == 4  # the preprocess docstring's example: a 256x1600 frame on a 256x512 model
    opts = BuildOptions.for_tiles(tiles, max_batch=2)
    assert (opts.min_batch, opts.opt_batch, opts.max_batch) == (1, 4, 4)
    assert BuildOptions.for_tiles(1).opt_batch == 1


@pytest.mark.parametrize(
    ("major", "graph_fp16", "want_fp16", "fast", "precision", "strong", "flag"),
    [
        (10, False, True, True, "fp16", False, True),    # TRT 10: the FP16 builder flag
        (10, False, True, False, "fp32", False, False),  # no fast FP16: FP32 fallback
        (10, False, False, True, "fp32", False, False),
        (10, True, True, None, "fp16", True, False),     # FP16 graph: strongly typed, no flag
        (11, False, True, None, "fp32", True, False),    # TRT 11: no flag exists; FP32 fallback, not an error
        (11, True, True, None, "fp16", True, False),
        (11, False, False, None, "fp32", True, False),
    ],
)
def test_precision_rules_of_tensorrt_10_and_11(major, graph_fp16, want_fp16, fast, precision, strong, flag):
    plan = choose_precision(major, graph_fp16, want_fp16, fast)
    assert (plan.precision, plan.strongly_typed, plan.fp16_flag) == (precision, strong, flag)
    if major >= 11 and want_fp16 and not graph_fp16:
        assert "FP32" in plan.note and "_fp16.onnx" in plan.note


def test_gpu_index_is_a_setting(monkeypatch):
    monkeypatch.delenv("INSPECT_EDGE_GPU", raising=False)
    assert gpu_index() == 0 and gpu_index(2) == 2
    monkeypatch.setenv("INSPECT_EDGE_GPU", "1")
    assert gpu_index() == 1 and gpu_index(0) == 0  # an explicit index wins over the environment
    monkeypatch.setenv("INSPECT_EDGE_GPU", "cuda:1")
    with pytest.raises(BackendError, match="INSPECT_EDGE_GPU='cuda:1'"):
        gpu_index()
    with pytest.raises(BackendError, match=">= 0"):
        gpu_index(-1)
    from pydantic import ValidationError

    from inspect_edge.config import ModelConfig

    assert ModelConfig(gpu=1).gpu == 1 and ModelConfig().gpu is None  # `inspect-edge run --gpu N`
    with pytest.raises(ValidationError):
        ModelConfig(gpu=-1)


# ---- everywhere: files, locks, timing cache, parity decision -----------------
def test_timing_cache_round_trip_and_corrupt_one_discarded_with_a_warning(tmp_path):
    path = tmp_path / "timing.cache"
    warnings = []
    assert load_timing_cache(path, warnings.append) == b"" and warnings == []  # absent: no warning
    save_timing_cache(path, b"tactics" * 100)
    assert path.read_bytes().startswith(TIMING_MAGIC)
    assert load_timing_cache(path, warnings.append) == b"tactics" * 100 and warnings == []
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped byte in the payload
    path.write_bytes(bytes(raw))
    assert load_timing_cache(path, warnings.append) == b""
    assert "corrupt" in warnings[0] and not path.exists()
    path.write_bytes(b"raw TensorRT bytes from an older writer")
    assert load_timing_cache(path, warnings.append) == b"" and len(warnings) == 2


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "engine.bin"
    atomic_write_bytes(target, b"x" * 10)
    atomic_write_bytes(target, b"y" * 5)
    assert target.read_bytes() == b"y" * 5 and os.listdir(target.parent) == ["engine.bin"]


def test_concurrent_builds_of_one_engine_build_once(tmp_path):
    target = tmp_path / "model.engine"
    calls, temps = [], []

    def is_current(p):
        return p.is_file() and (p.with_name(p.name + ".json")).is_file()

    def build(tmp):
        calls.append(tmp)
        temps.append(tmp.name)
        time.sleep(0.3)  # long enough that every other thread arrives while the lock is held
        tmp.write_bytes(b"engine" * 1000)
        side = tmp.with_name(tmp.name + ".json")
        side.write_text("{}")
        return [side]

    results = []
    threads = [threading.Thread(target=lambda: results.append(build_once(target, is_current, build, lambda s: None)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True] and len(calls) == 1
    assert target.read_bytes() == b"engine" * 1000 and (tmp_path / "model.engine.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["model.engine", "model.engine.json", "model.engine.lock"]
    assert temps[0].startswith(".model.engine.") and temps[0].endswith(".tmp")


def test_failed_build_leaves_nothing_behind_and_releases_the_lock(tmp_path):
    target = tmp_path / "model.engine"

    def build(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("builder ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build_once(target, lambda p: False, build, lambda s: None)
    assert sorted(os.listdir(tmp_path)) == ["model.engine.lock"]
    with file_lock(tmp_path / "model.engine.lock", timeout_s=1):
        pass  # free again


def test_lock_waits_for_the_holder_and_times_out(tmp_path):
    lock = tmp_path / "x.lock"
    said = []
    with file_lock(lock):
        from inspect_edge.backends.tensorrt_cache import LockTimeout

        with pytest.raises(LockTimeout):
            with file_lock(lock, timeout_s=0.3, log=said.append, poll_s=0.05):
                pass
    assert said and "waiting for another build" in said[0]


def test_shutdown_cancels_and_waits_for_builds_in_flight():
    reset_shutdown()
    seen, release = [], threading.Event()

    def fake_build():  # a stand-in for the builder loop: polls the flag as the progress monitor does
        with active_build():
            release.set()
            while not shutdown_requested():
                time.sleep(0.01)
            time.sleep(0.1)  # cancelling takes a moment; the context must still be there
            seen.append("returned")

    t = threading.Thread(target=fake_build)
    t.start()
    release.wait(2)
    assert builds_in_flight() == 1
    assert stop_builds(timeout_s=5) is True and seen == ["returned"] and builds_in_flight() == 0
    t.join()
    reset_shutdown()


def test_parity_refusal_decision():
    assert MAX_DICE_DRIFT == 0.005
    assert parity_failures({"pits": 1.0, "cracks": 0.996}) == []
    assert parity_failures({"pits": 1.0, "cracks": 0.995}) == []  # exactly at the limit passes
    bad = parity_failures({"pits": 0.994, "cracks": 1.0})
    assert len(bad) == 1 and "pits" in bad[0] and "cracks" not in bad[0] and "0.005" in bad[0]
    assert parity_failures({"pits": float("nan")})  # NaN is never accepted


def test_parity_decision_on_real_logits():
    """Masks from our post-processing on two logit arrays: a small shift passes, a large one is refused."""
    from inspect_edge.postprocess import mask_dice_between

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 2, H, W)).astype(np.float32) * 4
    near = ref + np.float32(1e-4)
    far = ref.copy()
    far[:, 0, :8] += 6.0  # a band of pixels flips class 0
    assert parity_failures(mask_dice_between(ref, near, INFO)[0]) == []
    assert "pits" in parity_failures(mask_dice_between(ref, far, INFO)[0])[0]


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
def test_cache_builds_once_and_rebuilds_engines_from_another_device(tmp_path, onnx_model, monkeypatch):
    from inspect_edge.backends import tensorrt_build
    from inspect_edge.backends.tensorrt_build import cached_engine

    # The service tunes for a 256x1600 frame: thousands of 32x64 tiles; one frame = one tile here.
    monkeypatch.setattr(tensorrt_build, "DEFAULT_FRAME", (H, W))

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


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_fixed_batch_onnx_builds_without_a_profile_and_pads_smaller_batches(tmp_path):
    from inspect_edge.backends.tensorrt_build import build_engine

    path = conv_onnx(tmp_path / "fixed.onnx", batch=4)
    key = build_engine(path, tmp_path / "f.engine", BuildOptions(fp16=False, max_batch=8), log=lambda s: None)
    assert (key.min_batch, key.opt_batch, key.max_batch) == (4, 4, 4)
    ref = open_backend(path)
    with open_backend(tmp_path / "f.engine") as b:
        assert b.max_batch == 4
        x = _frames(4)
        want = ref.infer(x)
        np.testing.assert_allclose(b.infer(x), want, atol=1e-3)
        np.testing.assert_allclose(b.infer(x[:3]), want[:3], atol=1e-3)  # padded to 4, extra row dropped


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_close_from_another_thread_frees_with_the_context_current(tmp_path, onnx_model):
    from inspect_edge.backends.tensorrt_build import build_engine

    build_engine(onnx_model, tmp_path / "m.engine", BuildOptions(fp16=False, max_batch=2), log=lambda s: None)
    b = open_backend(tmp_path / "m.engine")
    b.infer(_frames(1))
    errors = []
    t = threading.Thread(target=lambda: errors.extend([] if b.close() is None else ["?"]))
    t.start()
    t.join()
    assert errors == [] and b._ctx is None


@pytest.mark.gpu
@pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
def test_first_build_through_the_service_path_writes_a_parity_report(tmp_path, onnx_model):
    from inspect_edge.backends.tensorrt_build import cached_engine, refusal_path

    engine = cached_engine(onnx_model, tmp_path / "cache", BuildOptions(fp16=False, max_batch=2), log=lambda s: None)
    report = json.loads(engine.with_name(engine.name + ".parity.json").read_text())
    assert report["failures"] == [] and report["reference"] == "onnxruntime-cpu"
    assert not refusal_path(engine).exists()
