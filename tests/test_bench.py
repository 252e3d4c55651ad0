"""inspect-edge bench on a tiny real ONNX model: records' structure, drop identity, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers_onnx_model import build_dark_spot_model, strip_frame  # noqa: E402

from inspect_edge.bench.contenders import PLUGIN_GROUP, BackendContender, BenchModel, builtin_contenders  # noqa: E402
from inspect_edge.bench.engines import TimingBudget, mask_agreement, time_model  # noqa: E402
from inspect_edge.bench.pipeline_bench import PipelineBenchConfig, run_pipeline_bench  # noqa: E402
from inspect_edge.bench.report import NO_GPU, evaluate_targets, to_markdown  # noqa: E402
from inspect_edge.bench.runner import BenchConfig, BenchError, run_bench  # noqa: E402
from inspect_edge.bench.timing import summarize, time_interleaved  # noqa: E402

FAST = TimingBudget(warmup=1, seconds_per_cell=0.05, min_iters=2, max_iters=3)
FAST_PIPE = PipelineBenchConfig(seconds=0.8, engine_seconds=0.2, rate_factor=2.0, viewer_fps=15.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    build_dark_spot_model(path, height=64, width=128)
    return path


def test_summary_numbers():
    s = summarize([0.010, 0.020, 0.030, 0.040], batch=2)
    assert s.n == 4 and s.median_ms == pytest.approx(25.0) and s.mean_ms == pytest.approx(25.0)
    assert s.fps == pytest.approx(2 * 4 / 0.1)
    assert 30.0 < s.p99_ms <= 40.0
    with pytest.raises(ValueError):
        summarize([])


def test_interleaved_timing_alternates_and_excludes_warmup():
    calls = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               warmup=2, seconds=0.0, min_iters=3, max_iters=10)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(v) for v in samples.values()] == [3, 3]


def test_engine_rows_and_agreement(tiny):
    from inspect_edge.backends import open_backend

    contenders, skipped = builtin_contenders(BenchModel("tiny", tiny, open_backend(tiny).info, False, "ONNX file"), 1)
    model = BenchModel("tiny", tiny, contenders[0].backend.info, False, "ONNX file")
    # TensorRT is absent here: it is named as not measured, with a reason, never faked.
    assert [c.name for c in contenders] == ["onnxruntime-cpu"]
    assert any(s.startswith("tensorrt: not measured") for s in skipped)
    rows = time_model(model, contenders, [1, 2], FAST, log=lambda s: None)
    assert [(r["contender"], r["batch"]) for r in rows] == [("onnxruntime-cpu", 1), ("onnxruntime-cpu", 2)]
    assert sum(r["best_batch"] for r in rows) == 1
    assert all(r["median_ms"] > 0 and r["fps"] > 0 and r["threads"] == 1 for r in rows)
    # Same engine twice: masks agree exactly; a shifted copy must not.
    other = BackendContender(contenders[0].backend, "same-again", "cpu", 1)
    (a,) = mask_agreement(model, contenders[0], [other], n_images=2)
    assert a["min_dice"] == 1.0 and a["max_abs_logit_diff"] == 0.0

    class Shifted(BackendContender):
        def run(self, batch):
            return np.roll(super().run(batch), 7, axis=-1) + 3.0

    (b,) = mask_agreement(model, contenders[0], [Shifted(contenders[0].backend, "shifted", "cpu", 1)], n_images=2)
    assert b["max_abs_logit_diff"] > 1.0
    contenders[0].close()


def test_pipeline_bench_drop_identity(tiny):
    frames = [strip_frame(i, 64, 320) for i in range(6)]
    r = run_pipeline_bench(tiny, frames, 1, FAST_PIPE, log=lambda s: None)
    f = r["frames"]
    assert f["processed"] > 0 and f["captured"] > f["processed"]   # source faster than inference
    assert f["dropped_total"] == f["captured"] - f["processed"]
    assert f["drop_identity_holds"] and f["dropped"]["stale"] > 0
    assert r["tiles_per_frame"] == 3 and r["pipeline_fps"] > 0 and r["ratio_pipeline_to_engine"] > 0
    assert set(r["per_frame_ms"]) >= {"preprocess", "inference", "postprocess", "metrics", "wall",
                                      "capture_read_other_thread", "live_view_encode_other_thread"}
    assert r["freshness"]["age_at_result_periods"]["p99"] >= r["freshness"]["age_at_result_periods"]["p50"] > 0


def test_run_bench_writes_json_and_markdown(tiny, tmp_path):
    cfg = BenchConfig(out=tmp_path / "run", models=[tiny], batches=[1, 2], threads=[1], budget=FAST,
                      agreement_images=2, plugins=False, pipeline_cfg=FAST_PIPE, frame_height=64,
                      frame_width=300, command="inspect-edge bench --model tiny.onnx")
    record = run_bench(cfg, log=lambda s: None)
    on_disk = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert on_disk["schema"] == "inspect-edge.bench/1"
    assert {"machine", "config", "models", "engine", "agreement", "pipeline", "targets", "skipped"} <= set(on_disk)
    assert on_disk["machine"]["cores"] >= 1 and "onnxruntime" in on_disk["machine"]["versions"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["threads"] == [1]
    assert on_disk["pipeline"]["frames"]["drop_identity_holds"]
    targets = {t["target"]: t for t in record["targets"]}
    assert targets["dropped == captured - processed"]["met"] is True
    # Without PyTorch the speed-up target is reported as not measured, not as met or missed.
    assert all(t["met"] is None for name, t in targets.items() if "PyTorch eager" in name)
    md = (tmp_path / "run" / "bench.md").read_text()
    assert md == to_markdown(on_disk)
    for heading in ("### Engines", "### Pipeline vs engine alone", "### Freshness", "### Targets"):
        assert heading in md
    assert "| tiny | onnxruntime-cpu | cpu | 1 |" in md
    assert NO_GPU in md   # no GPU rows: said so, no numbers invented


def test_targets_flag_a_miss():
    record = {"models": [{"label": "m"}], "engine": [
        {"model": "m", "contender": "onnxruntime-cpu", "batch": 1, "fps": 10.0, "device": "cpu", "threads": 2},
        {"model": "m", "contender": "pytorch-eager-cpu", "batch": 1, "fps": 8.0, "device": "cpu", "threads": 2}]}
    t = evaluate_targets(record)
    assert t[0]["met"] is False and t[0]["measured"].startswith("1.25x")


def test_bad_requests_are_refused(tmp_path, tiny):
    with pytest.raises(BenchError, match="nothing to time"):
        run_bench(BenchConfig(out=tmp_path / "a", plugins=False))
    with pytest.raises(BenchError, match="needs PyTorch"):
        run_bench(BenchConfig(out=tmp_path / "b", sizes=["nano"], plugins=False))
    with pytest.raises(BenchError, match="no such file"):
        run_bench(BenchConfig(out=tmp_path / "c", models=[tmp_path / "missing.onnx"], plugins=False))


def test_torch_contender_plugin_is_registered():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}
    assert names.get("torch") == "export.bench_torch:plugin"


def test_cli_bench_command_is_mounted(tiny, tmp_path):
    from typer.testing import CliRunner

    from inspect_edge.cli import _mount_plugins, app

    _mount_plugins()
    r = CliRunner().invoke(app, ["bench", "--help"])
    assert r.exit_code == 0 and "--sizes" in r.output
    r = CliRunner().invoke(app, ["bench", "--model", str(tmp_path / "nope.onnx"), "--no-plugins",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_torch_plugin_times_the_same_weights_it_exported(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from export.bench_torch import TorchBenchPlugin, TorchContender
    from inspect_edge.model_info import ModelInfo
    from train.model import build_model

    plugin = TorchBenchPlugin()
    info = ModelInfo(classes=("a", "b"), input_height=32, input_width=64)
    # A plain ONNX file has no torch weights: the eager contender is named as not measured.
    found, why = plugin.contenders(BenchModel("x", tmp_path / "x.onnx", info, False, "ONNX file"), 1)
    assert found == [] and "pytorch-eager-cpu: not measured" in why[0]
    model = build_model({"size": "nano", "num_classes": 2}).eval()
    plugin._weights[(tmp_path / "m.onnx").resolve()] = model
    (c, *_), _ = plugin.contenders(BenchModel("m", tmp_path / "m.onnx", info, True, "built by size"), 1)
    assert c.name == "pytorch-eager-cpu" and c.threads == 1
    out = c.run(np.zeros((2, 1, 32, 64), np.float32))
    assert out.shape == (2, 2, 32, 64) and out.dtype == np.float32
    assert isinstance(c, TorchContender)


def test_cameras_bench_serves_every_camera_and_accounts_for_every_frame(tiny, tmp_path):
    from typer.testing import CliRunner

    from inspect_edge.bench.cli import app as bench_app

    out = tmp_path / "cb"
    r = CliRunner().invoke(bench_app, ["--model", str(tiny), "--cameras", "1,2", "--camera-fps", "4",
                                       "--cameras-seconds", "1.5", "--threads", "1", "--frame", "96x320", "--out", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads((out / "cameras.json").read_text())
    assert [(row["cameras"], row["phase"]) for row in record["rows"]] == [(1, "aligned"), (2, "aligned"), (2, "staggered")]
    for row in record["rows"]:
        assert sorted(row["per_camera"]) == [f"cam{k}" for k in range(row["cameras"])]
        for cam in row["per_camera"].values():
            # Every captured frame is processed or dropped for a stated reason.
            assert cam["processed"] >= 3 and cam["captured"] == cam["processed"] + sum(cam["dropped"].values())
            assert cam["age_ms"]["p99"] >= cam["age_ms"]["p50"] > 0
    assert "| 2 | staggered |" in (out / "cameras.md").read_text()
