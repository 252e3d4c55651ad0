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
    # On frames it has never seen, through the service's own backend, masks still agree.
    fresh = np.stack([strip_frame(1000 + 3 * i) for i in range(6)])
    a = OnnxRuntimeBackend(fp32).infer(normalise(fresh, info))
    q = OnnxRuntimeBackend(out)
    assert q.precision == "int8"
    dice, positive = mask_dice_between(a, q.infer(normalise(fresh, info)), info)
    assert all(v >= 0.98 for v in dice.values()) and all(p[0] > 0 for p in positive.values())


def test_int8_that_moves_masks_is_refused_and_not_written(tmp_path, fp32):
    info = read_metadata(fp32)
    # Gradients that cross both cutoffs everywhere: pixels sit on the threshold, 8 bits move some.
    ramp = np.tile(np.linspace(20, 120, 320).astype(np.uint8), (96, 1))
    frames = np.stack([np.roll(ramp, 7 * i, axis=1) for i in range(8)])
    out = tmp_path / "refused.onnx"
    result = quantize_int8(fp32, out, frames, frames, max_drift=0.0, max_rounds=0, log=lambda *_: None)
    assert not result.passed and not out.exists()
    assert min(result.per_class_dice.values()) < 1.0


def test_export_int8_command_writes_a_verified_model(tmp_path, fp32, data):
    out = tmp_path / "cli_int8.onnx"
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "export", "int8", str(fp32), "--calibration-data",
                        str(data), "--out", str(out), "--calibration-images", "16", "--check-images", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "calibrating on 16 frames" in r.stdout and "verified:" in r.stdout and out.is_file()
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "export", "int8", str(fp32), "--calibration-data",
                        str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
