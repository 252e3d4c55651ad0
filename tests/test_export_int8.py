"""INT8 for the CPU: calibrated on real frames of a data set, gated on mask Dice against FP32."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers_onnx_model import build_dark_spot_model, strip_frame

pytest.importorskip("onnx", reason="INT8 export needs the onnx package (the train extra)")

from export.int8 import frames_from_data, quantize_int8  # noqa: E402
from export.onnx_meta import read_metadata  # noqa: E402
from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from inspect_edge.data import Sample, write_severstal  # noqa: E402
from inspect_edge.postprocess import mask_dice_between  # noqa: E402
from inspect_edge.preprocess import normalise  # noqa: E402


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "dark.onnx"
    build_dark_spot_model(path, height=96, width=320)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "strips"
    write_severstal(root, [Sample(f"s{i:03d}.jpg", strip_frame(i * 5), np.zeros((4, 96, 320), bool))
                           for i in range(40)], ("c1", "c2", "c3", "c4"))
    return root


def test_int8_passes_the_gate_and_runs_in_the_service_backend(tmp_path, fp32, data):
    info = read_metadata(fp32)
    used, calib = frames_from_data(data, info, 16, seed=0)
    _, check = frames_from_data(data, info, 12, seed=1, skip=set(used))
    out = tmp_path / "dark_int8.onnx"
    result = quantize_int8(fp32, out, calib, check, log=lambda *_: None)
    assert result.passed and out.is_file()
    meta = read_metadata(out)
    assert meta.precision == "int8" and meta.classes == info.classes and meta.content_hash != info.content_hash
    report = json.loads(out.with_name(out.name + ".int8.json").read_text())
    assert report["passed"] and min(report["per_class_dice_vs_fp32"].values()) >= 0.995
    assert set(report["median_ms_batch1_this_machine"]) == {"fp32", "int8"} and min(report["median_ms_batch1_this_machine"].values()) > 0
    # On frames it has never seen, through the service's own backend, masks still agree.
    fresh = np.stack([strip_frame(1000 + 3 * i) for i in range(6)])
    a = OnnxRuntimeBackend(fp32).infer(normalise(fresh, info))
    q = OnnxRuntimeBackend(out)
    assert q.precision == "int8"
    dice, positive = mask_dice_between(a, q.infer(normalise(fresh, info)), info)
    assert all(v >= 0.98 for v in dice.values()) and all(p[0] > 0 for p in positive.values())


def test_int8_that_moves_masks_is_refused_and_not_written_but_its_figures_are(tmp_path, fp32):
    info = read_metadata(fp32)
    # Gradients that cross both cutoffs everywhere: pixels sit on the threshold, 8 bits move some.
    ramp = np.tile(np.linspace(20, 120, 320).astype(np.uint8), (96, 1))
    frames = np.stack([np.roll(ramp, 7 * i, axis=1) for i in range(8)])
    out = tmp_path / "refused.onnx"
    result = quantize_int8(fp32, out, frames, frames, max_drift=0.0, max_rounds=0, log=lambda *_: None)
    assert not result.passed and not out.exists()
    assert min(result.per_class_dice.values()) < 1.0
    report = json.loads(out.with_name(out.name + ".int8.json").read_text())
    assert not report["passed"] and report["per_class_dice_vs_fp32"] == result.per_class_dice
    noise = report["fp32_dice_under_one_grey_level_of_noise"]
    assert set(noise) == set(info.classes) and all(0.0 < v < 1.0 for v in noise.values())  # ramps sit on the cutoffs


def test_export_int8_command_writes_a_verified_model(tmp_path, fp32, data):
    out = tmp_path / "cli_int8.onnx"
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "export", "int8", str(fp32), "--calibration-data",
                        str(data), "--out", str(out), "--calibration-images", "16", "--check-images", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "calibrating on 16 frames" in r.stdout and "verified:" in r.stdout and "batch 1 on this machine" in r.stdout and out.is_file()
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "export", "int8", str(fp32), "--calibration-data",
                        str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def _pad_conv_conv(path, height=32, width=64):
    """Replicate-pad, Conv, Relu, Conv (the shape of the U-Net's two ends), with metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from inspect_edge.model_info import ModelInfo

    rng = np.random.default_rng(0)
    info = ModelInfo(classes=("a", "b"), input_height=height, input_width=width, mean=0.5, std=0.25,
                     thresholds=(0.5, 0.5), min_areas=(1, 1), model_version="t", arch="pad-conv-conv", source_run="tests")
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b2"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    nodes = [helper.make_node("Pad", ["image", "pads"], ["padded"], mode="edge", name="pad"),
             helper.make_node("Conv", ["padded", "w1", "b1"], ["c1"], kernel_shape=[3, 3], name="stem"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["logits"], kernel_shape=[1, 1], name="head")]
    graph = helper.make_graph(nodes, "pcc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, height, width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, height, width])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in info.to_metadata_props().items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return info


def test_every_node_the_quantiser_touches_can_go_back_to_float(tmp_path):
    """The gate's last resort is all-float; a node it cannot list (a Pad at the input, say) would
    keep 8-bit rounding the gate can never remove."""
    import onnx

    from export.int8 import _quantize, end_nodes, quantisable_nodes

    fp32 = tmp_path / "pcc.onnx"
    info = _pad_conv_conv(fp32)
    frames = np.stack([strip_frame(3 * i)[:32, :64] for i in range(4)])
    calib = normalise(frames, info).astype(np.float32)
    assert "pad" in quantisable_nodes(fp32) and end_nodes(fp32) == ["pad", "stem", "head"]
    everything_float = tmp_path / "q.onnx"
    _quantize(fp32, everything_float, calib, exclude=quantisable_nodes(fp32))
    assert not [n for n in onnx.load(str(everything_float)).graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    _quantize(fp32, everything_float, calib)
    assert [n for n in onnx.load(str(everything_float)).graph.node if n.op_type == "QuantizeLinear"]
