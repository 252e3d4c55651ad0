"""TensorRT's ONNX operator table, checked on graphs exported here: runs on any machine, no TensorRT.

The graph under test is our own U-Net (train.model, the nano size) exported by our
own exporter, so a change to the model or the exporter that brings in an operator
TensorRT's parser does not take fails in CI, not at the plant.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export.onnx_export import export_onnx
from inspect_edge.backends.tensorrt_onnx_ops import (
    MAX_OPSET,
    SOURCE,
    SUPPORTED_OPS,
    UnsupportedOnnxOps,
    check_onnx_ops,
    onnx_op_problems,
)
from inspect_edge.model_info import ModelInfo
from train.model import UNetConfig, build_model

torch.set_num_threads(1)
INFO = ModelInfo(classes=("pits", "cracks"), input_height=64, input_width=96, arch="unet-nano")


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(UNetConfig(size="nano", num_classes=2)).eval()
    path = tmp_path_factory.mktemp("ops") / "unet.onnx"
    export_onnx(model, INFO, path)
    return path


def test_our_exported_unet_uses_only_supported_operators(unet_onnx):
    proto = onnx.load(str(unet_onnx))
    used = {n.op_type for n in proto.graph.node}
    assert {"Conv", "Resize"} <= used, used  # the test really looks at a U-Net graph
    assert onnx_op_problems(proto) == []
    check_onnx_ops(unet_onnx)  # the export command's call: no exception


def test_the_table_names_its_source_and_holds_the_basics():
    assert "onnx-tensorrt" in SOURCE and "6d0ab7be" in SOURCE
    assert {"Conv", "Relu", "Concat", "Resize", "Add", "Pad", "Shape", "Cast"} <= SUPPORTED_OPS
    assert not {"LayerNormalization", "Hardmax", "ConvInteger"} & SUPPORTED_OPS


def _edit(path, out, mutate):
    proto = onnx.load(str(path))
    mutate(proto)
    onnx.save(proto, str(out))
    return out


def test_an_unsupported_operator_is_named_with_the_table_source(unet_onnx, tmp_path):
    def add_hardmax(p):
        last = p.graph.output[0].name
        p.graph.node.append(helper.make_node("Hardmax", [last], ["hm"], axis=1))
        p.graph.output.append(helper.make_tensor_value_info("hm", TensorProto.FLOAT, None))

    bad = _edit(unet_onnx, tmp_path / "hardmax.onnx", add_hardmax)
    with pytest.raises(UnsupportedOnnxOps) as e:
        check_onnx_ops(bad)
    text = str(e.value)
    assert "Hardmax x1" in text and "onnx-tensorrt" in text and "\n" not in text


def test_foreign_domain_and_opset_out_of_range_are_refused(unet_onnx, tmp_path):
    def foreign(p):
        p.graph.node[0].domain = "com.microsoft"
        p.opset_import.append(helper.make_opsetid("com.microsoft", 1))

    problems = onnx_op_problems(onnx.load(str(_edit(unet_onnx, tmp_path / "ms.onnx", foreign))))
    assert any("com.microsoft::" in p for p in problems), problems

    def new_opset(p):
        for o in p.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = MAX_OPSET + 1

    proto = onnx.load(str(_edit(unet_onnx, tmp_path / "op.onnx", new_opset)))
    assert any(f"opset {MAX_OPSET + 1} outside" in p for p in onnx_op_problems(proto))


def test_resize_modes_outside_the_parser_restrictions_are_refused(unet_onnx, tmp_path):
    def cubic(p):
        for n in p.graph.node:
            if n.op_type == "Resize":
                for a in n.attribute:
                    if a.name == "mode":
                        a.s = b"cubic"
                        break
                else:
                    n.attribute.append(helper.make_attribute("mode", "cubic"))

    problems = onnx_op_problems(onnx.load(str(_edit(unet_onnx, tmp_path / "cubic.onnx", cubic))))
    assert any("Resize" in p and "mode=cubic" in p for p in problems), problems


def test_nodes_inside_subgraphs_are_checked():
    then = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "else", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert any("Hardmax" in p for p in onnx_op_problems(model))


def test_export_command_runs_the_check(tmp_path, monkeypatch):
    """`export onnx` refuses (exit 2) a graph with an unsupported operator, before its parity check."""
    from typer.testing import CliRunner

    import export.cli as cli
    import inspect_edge.backends.tensorrt_onnx_ops as ops

    monkeypatch.setattr(ops, "SUPPORTED_OPS", SUPPORTED_OPS - {"Conv"})  # pretend Conv were unsupported
    torch.manual_seed(0)
    model = build_model(UNetConfig(size="nano", num_classes=2)).eval()
    monkeypatch.setattr("train.checkpoint.load_run", lambda run: (model, INFO))
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(cli.app, ["onnx", str(tmp_path), "--out", str(out), "--images", "1"])
    assert r.exit_code == 2 and "Conv x" in r.output, r.output
    assert not out.exists()
