"""`inspect-edge export onnx`: real torch.onnx exports of small models, checked through ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from export.cli import app
from export.onnx_export import ExportError, content_hash_matches, export_onnx, graph_hash, pytorch_vs_onnxruntime
from export.parity import ParityError, Tolerance, compare_logits, textured_images
from inspect_edge.backends import open_backend
from inspect_edge.model_info import ONNX_METADATA_KEY, ModelInfo

torch.set_num_threads(1)
H, W = 64, 96
INFO = ModelInfo(classes=("pits", "cracks"), input_height=H, input_width=W, mean=0.4, std=0.2,
                 thresholds=(0.45, 0.6), min_areas=(4, 9), model_version="2.0.1", source_run="runs/a", arch="tiny")


class TwoConvs(torch.nn.Module):
    """A stand-in segmenter: (N, 1, H, W) -> (N, 2, H, W), with the same pad-to-32 habit as ours."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32))
        return 4 * self.b(torch.relu(self.a(x)))[..., :h, :w]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    model = TwoConvs().eval()
    written = export_onnx(model, INFO, path, source_run="/runs/tiny", model_version="2.0.2")
    return model, path, written


def test_export_writes_a_checked_single_file_graph_with_dynamic_batch(exported):
    _, path, written = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    assert not list(path.parent.glob("*.data")), "weights must live inside the .onnx"
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 1, H, W]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 2, H, W]
    # What the service needs is inside the file and round-trips exactly.
    props = {p.key: p.value for p in proto.metadata_props}
    back = ModelInfo.from_metadata_props(props)
    assert back == written and back.thresholds == (0.45, 0.6) and back.min_areas == (4, 9)
    assert (back.source_run, back.model_version, back.mean, back.std) == ("/runs/tiny", "2.0.2", 0.4, 0.2)
    assert back.content_hash == graph_hash(proto) and len(back.content_hash) == 64
    assert content_hash_matches(path)


def test_service_runs_from_the_onnx_alone_and_matches_pytorch(exported):
    model, path, _ = exported
    backend = open_backend(path, threads=1)
    assert backend.info.classes == ("pits", "cracks")
    x = torch.randn(3, 1, H, W)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(backend.infer(x.numpy()), want, atol=1e-4)

    images = textured_images(INFO, 4)
    report = pytorch_vs_onnxruntime(model, path, images)
    assert report.passed, report.lines()
    assert report.max_abs_logit_diff < 1e-4 and set(report.per_class_dice) == {"pits", "cracks"}
    assert all(d == 1.0 for d in report.per_class_dice.values())
    assert sum(sum(v) for v in report.positive_pixels.values()) > 0, "the check must compare non-empty masks"


def test_tampered_weights_break_the_content_hash(exported, tmp_path):
    _, path, _ = exported
    proto = onnx.load(str(path))
    w = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(proto, str(tmp_path / "tampered.onnx"))
    assert not content_hash_matches(tmp_path / "tampered.onnx")


def test_fp16_graph_keeps_float32_io_and_stays_close(tmp_path):
    model = TwoConvs().eval()
    path = tmp_path / "tiny_fp16.onnx"
    written = export_onnx(model, INFO, path, fp16=True)
    proto = onnx.load(str(path))
    assert written.precision == "fp16"
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in proto.graph.initializer if i.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}
    report = pytorch_vs_onnxruntime(model, path, textured_images(INFO, 3))
    assert report.tolerance == Tolerance.for_precision("fp16")
    assert 0 < report.max_abs_logit_diff < 0.1 and report.passed, report.lines()
    assert model.a.weight.dtype == torch.float32, "exporting FP16 must not convert the caller's model"


def test_parity_fails_loudly_on_disagreement():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 2, H, W)).astype(np.float32)
    report = compare_logits(ref, ref + 0.5, INFO, reference="a", candidate="b")
    assert not report.passed
    assert any("max |logit diff| 0.5" in f for f in report.failures)
    assert any("mask Dice below" in f for f in report.failures)
    assert report.lines()[-1].startswith("FAILED")
    with pytest.raises(ParityError, match="gave logits"):
        compare_logits(ref, ref[:1], INFO, reference="a", candidate="b")


def test_opset_too_old_is_refused(tmp_path):
    with pytest.raises(ExportError, match="opset 16 is too old"):
        export_onnx(TwoConvs(), INFO, tmp_path / "x.onnx", opset=16)


# ---- the command, on a real (tiny, untrained) segmenter checkpoint ----------
@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from train.checkpoint import save_checkpoint
    from train.model import UNetConfig, build_model

    run = tmp_path_factory.mktemp("run")
    cfg = UNetConfig(size="nano", in_channels=1, num_classes=2)
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    info = INFO.replace(arch=cfg.arch, input_width=128)
    save_checkpoint(run / "best.pt", model_config=cfg.to_dict(), state_dict=model.state_dict(), model_info=info.to_dict())
    info.save(run / "model_info.json")
    return run


def test_cli_exports_verifies_and_saves_parity(run_folder, tmp_path):
    out = tmp_path / "model.onnx"
    r = CliRunner().invoke(app, ["onnx", str(run_folder), "--out", str(out), "--images", "2", "--fp16"])
    assert r.exit_code == 0, r.output
    assert "max |logit diff|" in r.output and "verified:" in r.output
    parity = json.loads((tmp_path / "model.onnx.parity.json").read_text())
    assert parity["passed"] and parity["reference"] == "pytorch-fp32" and parity["max_abs_logit_diff"] < 1e-3
    assert set(parity["per_class_dice"]) == {"pits", "cracks"}
    assert open_backend(out).info.source_run == str(run_folder.resolve())
    half = tmp_path / "model_fp16.onnx"
    assert open_backend(half).info.precision == "fp16"
    assert json.loads((tmp_path / "model_fp16.onnx.parity.json").read_text())["passed"]
    assert not list(tmp_path.glob("*.unverified.onnx"))
    info_out = CliRunner().invoke(app, ["info", str(out)])
    assert info_out.exit_code == 0 and ONNX_METADATA_KEY not in info_out.output and '"pits"' in info_out.output


def test_cli_parity_failure_keeps_the_file_away_from_the_output(run_folder, tmp_path):
    out = tmp_path / "model.onnx"
    # An impossible tolerance: any float difference at all fails.
    r = CliRunner().invoke(app, ["onnx", str(run_folder), "--out", str(out), "--images", "1", "--max-diff", "-1"])
    assert r.exit_code == 1, r.output
    assert "FAILED" in r.output and not out.exists() and (tmp_path / "model.unverified.onnx").exists()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "nothing", r"no such checkpoint file"),
        (lambda d: (d / "empty_run").mkdir() or d / "empty_run", r"not a run folder \(no best\.pt\)"),
        (lambda d: torch.save({"weights": 1}, d / "other.pt") or d / "other.pt", r"not an inspect-edge segmenter"),
        (lambda d: (d / "cut.pt").write_bytes(b"PK\x03\x04 truncated") and d / "cut.pt", r"not a readable torch checkpoint"),
    ],
)
def test_cli_bad_checkpoints_get_one_line_and_exit_2(tmp_path, setup, message):
    r = CliRunner().invoke(app, ["onnx", str(setup(tmp_path)), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")
    import re

    assert re.search(message, r.output), r.output


def test_cli_info_rejects_onnx_without_our_metadata(tmp_path):
    proto = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    r = CliRunner().invoke(app, ["info", str(tmp_path / "plain.onnx")])
    assert r.exit_code == 2 and "no inspect-edge metadata" in r.output and r.output.count("\n") == 1


def test_a_model_with_flip_tta_exports_checks_one_pass_and_serves_the_average(tmp_path):
    from train.predict import predict_logits

    model = TwoConvs().eval()
    path = tmp_path / "tta.onnx"
    written = export_onnx(model, INFO.replace(tta_flips=("h",)), path)
    assert written.tta_flips == ("h",)
    images = textured_images(INFO, 3)
    report = pytorch_vs_onnxruntime(model, path, images)   # engine against model, one pass each
    assert report.passed, report.lines()
    # What the service runs is what `train evaluate` scores: the flip-averaged logits.
    from inspect_edge.preprocess import normalise

    with open_backend(path, threads=1) as served:
        got = served.infer(normalise(np.stack(images), written))
    want = predict_logits(model, images, written)
    plain = predict_logits(model, images, written, tta=False)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want - plain).max() > 1e-3    # the flips change the answer of this model
