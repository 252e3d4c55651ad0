"""Flip test-time augmentation: the averaging itself, and the edge backend that runs it for a
model whose metadata asks for it (a real ONNX file, no torch)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inspect_edge.backends import open_backend
from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from inspect_edge.flip_average import flip_average, views
from inspect_edge.model_info import ModelInfo, ModelInfoError

H, W = 32, 64


def test_views_are_every_combination_of_the_chosen_flips():
    assert views(()) == [()]
    assert views(("h",)) == [(), (-1,)]
    assert sorted(views(("h", "v"))) == sorted([(), (-1,), (-2,), (-1, -2)])


def test_average_mirrors_each_view_back_before_averaging():
    ramp = np.arange(W, dtype=np.float32)              # a model that is not mirror-symmetric
    calls = []

    def run(x):
        calls.append(len(x))
        return x + ramp

    x = np.random.default_rng(0).normal(size=(3, 1, H, W)).astype(np.float32)
    y = flip_average(run, x, ("h",))
    np.testing.assert_allclose(y, x + (ramp + ramp[::-1]) / 2, rtol=0, atol=1e-5)
    assert calls == [6]                                 # both views in one call
    calls.clear()
    y_split = flip_average(run, x, ("h", "v"), max_batch=4)
    assert calls == [3, 3, 3, 3]                        # too many for one call: one view per call
    np.testing.assert_allclose(y_split, x + (ramp + ramp[::-1]) / 2, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(flip_average(run, x, ()), x + ramp)   # no flips: one plain pass


def _left_neighbour_onnx(path, info):
    """logit(x)[j] = x[j - 1]: a 1x3 convolution with all its weight on the left tap."""
    w = np.zeros((1, 1, 1, 3), np.float32)
    w[0, 0, 0, 0] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"], pads=[0, 1, 0, 1], kernel_shape=[1, 3])], "shift",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, H, W])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, info.to_metadata_props())
    onnx.save(model, str(path))
    return path


def test_open_backend_runs_the_flips_the_model_asks_for(tmp_path):
    info = ModelInfo(classes=("mark",), input_height=H, input_width=W, tta_flips=("h",))
    path = _left_neighbour_onnx(tmp_path / "m.onnx", info)
    x = np.random.default_rng(1).normal(size=(2, 1, H, W)).astype(np.float32)
    with open_backend(path, threads=1) as b, OnnxRuntimeBackend(path, threads=1) as plain:
        assert b.name == "onnxruntime+flips-h" and b.info.tta_flips == ("h",) and b.precision == "fp32"
        assert plain.max_batch // 2 == b.max_batch
        y, one_pass = b.infer(x), plain.infer(x)
    np.testing.assert_allclose(one_pass[..., 1:], x[..., :-1], atol=1e-6)
    # Mirrored, the left neighbour becomes the right one: the average is their mean.
    np.testing.assert_allclose(y[..., 1:-1], (x[..., :-2] + x[..., 2:]) / 2, atol=1e-6)


def test_tta_flips_round_trip_through_onnx_metadata_and_bad_ones_are_refused(tmp_path):
    info = ModelInfo(classes=("a", "b"), input_height=H, input_width=W, tta_flips=("h", "v"))
    assert ModelInfo.from_metadata_props(info.to_metadata_props()) == info
    assert ModelInfo.from_dict({"classes": ["a"], "input_height": H, "input_width": W}).tta_flips == ()
    for bad in (("x",), ("h", "h")):
        with pytest.raises(ModelInfoError, match="tta_flips"):
            ModelInfo(classes=("a",), input_height=H, input_width=W, tta_flips=bad)
