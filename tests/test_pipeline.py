"""Pre-processing, the inference pipeline on a real ONNX Runtime model, events, metrics."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers_onnx_model import build_dark_spot_model, strip_frame
from inspect_edge.backends import open_backend
from inspect_edge.config import EventsConfig
from inspect_edge.events import EventRecorder
from inspect_edge.metrics import LATENCY_BUCKETS, ServiceMetrics
from inspect_edge.model_info import ModelInfo
from inspect_edge.pipeline import InspectionPipeline
from inspect_edge.preprocess import Preprocessor, tile_starts
from inspect_edge.sources import ImageFolderSource, LatestFrameCapture

INFO = ModelInfo(classes=("a", "b"), input_height=64, input_width=128)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "dark.onnx"
    build_dark_spot_model(path)
    return path


@pytest.mark.parametrize("length, tile, overlap", [(100, 128, 32), (128, 128, 32), (300, 128, 32),
                                                   (1600, 512, 32), (129, 128, 0)])
def test_tiles_cover_the_axis_with_the_overlap_asked_for(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(starts)
    assert starts[-1] + tile >= length and (length < tile or starts[-1] + tile == length)
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap


@pytest.mark.parametrize("shape", [(64, 128), (40, 100), (96, 320), (256, 1600), (200, 90)])
def test_tiling_then_stitching_gives_back_every_frame_pixel(shape):
    # With "logits" equal to the model input, stitching must reproduce the normalised frame exactly.
    pre = Preprocessor(INFO, "tile", overlap=32)
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    batch, plan = pre.to_batch(frame)
    assert batch.shape[1:] == (1, 64, 128) and batch.dtype == np.float32
    back = pre.stitch(np.repeat(batch, 2, axis=1), plan)
    assert back.shape == (2, *shape)
    np.testing.assert_allclose(back[1], (frame / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_resize_mode_squeezes_the_frame_and_maps_back():
    pre = Preprocessor(INFO, "resize")
    frame = np.tile(np.linspace(0, 255, 640).astype(np.uint8), (128, 1))
    batch, plan = pre.to_batch(frame)
    assert batch.shape == (1, 1, 64, 128) and plan.num_tiles == 1
    back = pre.stitch(np.repeat(batch, 2, axis=1), plan)
    assert back.shape == (2, 128, 640)
    np.testing.assert_allclose(back[0], (frame / 255.0 - 0.5) / 0.25, atol=0.05)


def test_three_channel_models_get_the_gray_frame_repeated():
    info3 = INFO.replace(input_channels=3)
    batch, _ = Preprocessor(info3).to_batch(np.full((64, 128), 255, np.uint8))
    assert batch.shape == (1, 3, 64, 128) and np.allclose(batch, 2.0)


def run_pipeline_over(folder: Path, model: Path, sinks=(), threads: int = 1, fps: float | None = None):
    cap = LatestFrameCapture(ImageFolderSource(str(folder), fps=fps))
    results = []
    pipe = InspectionPipeline(cap, lambda: open_backend(model, "onnxruntime", threads),
                              sinks=[results.append, *sinks], on_model_loaded=lambda b: cap.start())
    pipe.start()
    try:
        assert pipe.ready.wait(20), pipe.load_error
        end = time.monotonic() + 20
        while time.monotonic() < end and not (cap.counts().finished and
                                              pipe.counts().processed + sum(cap.counts().dropped.values())
                                              >= cap.counts().captured):
            time.sleep(0.02)
    finally:
        pipe.stop()
        cap.stop()
    return results, pipe, cap


def test_pipeline_finds_the_drawn_discs_with_right_classes_and_boxes(tmp_path, model):
    frame = np.full((96, 320), 190, np.uint8)
    cv2.circle(frame, (50, 30), 8, 5, -1)      # very dark: both classes
    cv2.circle(frame, (250, 60), 6, 70, -1)    # mid dark: "dark" only
    cv2.imwrite(str(tmp_path / "f0.png"), frame)
    results, pipe, cap = run_pipeline_over(tmp_path, model)
    assert len(results) == 1 and pipe.counts().processed == 1
    r = results[0]
    assert r.tiles == 6 and r.image.shape == (96, 320) and r.masks.shape == (2, 96, 320)
    found = sorted((d.class_name, d.bbox) for d in r.defects)
    assert [f[0] for f in found] == ["dark", "dark", "very_dark"]
    boxes = {(name, round(x + w / 2), round(y + h / 2)) for name, (x, y, w, h) in found}
    assert boxes == {("dark", 50, 30), ("dark", 250, 60), ("very_dark", 50, 30)}
    assert all(0.5 <= d.peak_prob <= 1 for d in r.defects)
    assert r.latency_s > 0 and set(r.stage_s) == {"preprocess", "inference", "postprocess"}
    assert 0 < r.area_share[1] < r.area_share[0] < 0.05
    assert r.area_share == tuple(np.count_nonzero(m) / m.size for m in r.masks)
    assert pipe.counts().defects == {"dark": 2, "very_dark": 1}


def test_model_with_a_fixed_batch_of_one_still_takes_multi_tile_frames(tmp_path):
    model1 = build_dark_spot_model(tmp_path / "b1.onnx", fixed_batch=1) and tmp_path / "b1.onnx"
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "f.png"), strip_frame(0))
    results, pipe, _ = run_pipeline_over(tmp_path / "frames", model1)
    assert pipe.counts().errors == 0 and len(results) == 1 and results[0].tiles == 6
    assert {d.class_name for d in results[0].defects} == {"dark", "very_dark"}


def test_a_model_that_cannot_load_is_reported_not_raised(tmp_path):
    cap = LatestFrameCapture(ImageFolderSource(str(tmp_path), fps=None))
    pipe = InspectionPipeline(cap, lambda: open_backend(tmp_path / "nope.onnx"))
    pipe.start()
    pipe.stop()
    assert not pipe.ready.is_set() and "nope.onnx" in pipe.load_error


def test_failing_sink_does_not_stop_inspection(tmp_path, model):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), strip_frame(i))

    def broken(_result):
        raise RuntimeError("sink bug")

    results, pipe, cap = run_pipeline_over(tmp_path, model, sinks=[broken])
    c = cap.counts()
    assert pipe.counts().processed == len(results) == c.captured - c.dropped["stale"]


# ---- events ------------------------------------------------------------------
def frame_results(model: Path, tmp_path: Path, n: int, blank_after: int = 0):
    d = tmp_path / "frames"
    d.mkdir()
    for i in range(n):
        cv2.imwrite(str(d / f"f{i:03d}.png"), strip_frame(i * 7))
    for i in range(n, n + blank_after):  # the strip after the discs have passed
        cv2.imwrite(str(d / f"f{i:03d}.png"), np.full((96, 320), 185, np.uint8))
    # Paced so that (almost) every frame is processed rather than dropped as stale.
    results, _, _ = run_pipeline_over(d, model, fps=10)
    assert len(results) >= 2
    return results


class WebhookReceiver:
    def __init__(self):
        self.bodies = []
        receiver = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_events_log_each_physical_defect_once_and_rate_limit_evidence_and_webhook(tmp_path, model):
    results = frame_results(model, tmp_path, 4, blank_after=6)
    with_defects = [r for r in results if r.defects]
    # Each closes once the strip has carried it out of view, or after 5 frames unseen.
    assert len(with_defects) == 4 and sum(len(r.closed) for r in results[4:]) == 3
    hook = WebhookReceiver()
    rec = EventRecorder(tmp_path / "run", EventsConfig(evidence_min_interval_s=3600, webhook_url=hook.url,
                                                       webhook_cooldown_s=3600))
    rec.start()
    for r in results:
        rec(r)
    end = time.monotonic() + 10
    while not hook.bodies and time.monotonic() < end:
        time.sleep(0.02)
    rec.stop()
    hook.server.shutdown()
    lines = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    # Two discs moving 42 px a frame: the very dark one is both classes, the other "dark" only.
    assert sorted(e["class"] for e in lines) == ["dark", "dark", "very_dark"]
    for e in lines:  # all closed before the stop
        assert e["frames"] == 4 and e["first_seq"] == results[0].seq and e["last_seq"] == results[3].seq
        assert "open_at_stop" not in e and 0.5 <= e["peak_prob"] <= 1
        # Its own width along the strip, not the 126 px it travelled through the view.
        assert abs(e["length_px"] - e["bbox_at_peak"][2]) <= 3, e
    assert lines[0]["evidence"] and all(e["evidence"] is None for e in lines[1:])
    c = rec.counts()
    assert c["events"] == 3 and c["evidence"]["saved"] == 1 and c["evidence"]["rate_limited"] == 2
    assert c["webhook"] == {"sent": 1, "failed": 0, "cooldown": 2, "backlog": 0, "shutdown": 0}
    assert hook.bodies[0]["defect_id"] == lines[0]["defect_id"] and hook.bodies[0]["source"] == "inspect-edge"
    ev = tmp_path / "run" / lines[0]["evidence"]
    assert sorted(p.name for p in ev.iterdir()) == ["event.json", "frame.jpg", "mask.png", "overlay.jpg"]
    peak = next(r for r in results if r.seq == lines[0]["peak_seq"])  # evidence is the frame of the peak score
    mask = cv2.imread(str(ev / "mask.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal((mask & 1) > 0, peak.masks[0])
    np.testing.assert_array_equal((mask & 2) > 0, peak.masks[1])


def test_evidence_quota_removes_the_oldest_first(tmp_path, model):
    results = frame_results(model, tmp_path, 6)
    rec = EventRecorder(tmp_path / "run", EventsConfig(evidence_min_interval_s=0, evidence_quota_mb=0.05))
    rec.start()
    for r in results:
        rec(r)
        time.sleep(0.05)  # let the worker keep up: this test is about the quota, not the backlog
    rec.stop()
    kept = sorted(p.name for p in (tmp_path / "run" / "evidence").iterdir())
    c = rec.counts()
    n = c["events"]
    assert n >= 3 and c["evidence"]["saved"] == n and c["evidence"]["evicted"] == n - len(kept) > 0
    assert c["evidence_bytes"] <= 0.05 * 1024 * 1024
    lines = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    written = [e["evidence"].removeprefix("evidence/") for e in lines]
    assert kept == written[-len(kept):] == sorted(written)[-len(kept):]  # the newest stay


def test_full_disk_and_unwritable_evidence_never_reach_the_pipeline(tmp_path, model):
    results = frame_results(model, tmp_path, 3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").symlink_to("/dev/full")   # every write fails with ENOSPC
    (run / "evidence").write_text("a file where the evidence folder should be")
    rec = EventRecorder(run, EventsConfig(evidence_min_interval_s=0))
    rec.start()
    for r in results:
        rec(r)
        time.sleep(0.05)
    rec.stop()
    c = rec.counts()
    assert c["events"] == c["log_errors"] == c["evidence"]["write_error"] == len(results)
    assert c["evidence"]["saved"] == 0


# ---- metrics -----------------------------------------------------------------
def test_metrics_follow_prometheus_naming_and_use_histograms(tmp_path, model):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), strip_frame(i))
    metrics = ServiceMetrics()
    cap = LatestFrameCapture(ImageFolderSource(str(tmp_path), fps=None))
    pipe = InspectionPipeline(cap, lambda: open_backend(model, threads=1),
                              sinks=[lambda r: metrics.observe(r, pipe.info.classes)],
                              on_model_loaded=lambda b: (metrics.set_model(b.info.model_version, b.name,
                                                                           b.precision), cap.start()))
    metrics.bind({"main": cap}, pipe)
    pipe.start()
    assert pipe.ready.wait(20)
    assert_eventually = time.monotonic() + 10
    while cap.counts().captured < 3 or not cap.counts().finished:
        assert time.monotonic() < assert_eventually
        time.sleep(0.02)
    time.sleep(0.3)
    body, content_type = metrics.render()
    pipe.stop()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert all(name.startswith("inspect_edge_") for name in families)
    assert families["inspect_edge_capture_to_result_seconds"].type == "histogram"
    assert families["inspect_edge_stage_duration_seconds"].type == "histogram"
    assert not any(f.type == "summary" for f in families.values())
    buckets = sorted({float(s.labels["le"]) for s in families["inspect_edge_capture_to_result_seconds"].samples
                      if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"})
    assert buckets == list(LATENCY_BUCKETS) and buckets[0] == 0.001 and buckets[-1] >= 2
    stages = {s.labels["stage"] for s in families["inspect_edge_stage_duration_seconds"].samples}
    assert stages == {"preprocess", "inference", "postprocess"}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    processed = value[("inspect_edge_frames_processed_total", (("camera", "main"),))]
    assert processed == pipe.counts().processed >= 1
    assert value[("inspect_edge_frames_captured_total", (("camera", "main"),))] == 3
    assert processed + sum(v for (n, _), v in value.items() if n == "inspect_edge_frames_dropped_total") == 3
    assert value[("inspect_edge_defects_total", (("camera", "main"), ("class", "very_dark")))] >= 1
    assert value[("inspect_edge_model_info", (("backend", "onnxruntime"), ("model_version", "test-1.0"),
                                              ("precision", "fp32")))] == 1
    assert 0 < value[("inspect_edge_defect_area_ratio", (("camera", "main"), ("class", "dark")))] < 1
    assert families["inspect_edge_camera_reconnects"].type == "counter"
    # A second service in the same process gets its own registry.
    assert ServiceMetrics().registry is not metrics.registry


def test_live_stream_preview_is_scaled_down_and_the_snapshot_is_not():
    from inspect_edge.pipeline import STAGES, FrameResult
    from inspect_edge.postprocess import Defect
    from inspect_edge.server.live import LiveView

    image = np.full((256, 1600), 120, np.uint8)
    masks = np.zeros((2, 256, 1600), bool)
    masks[0, 100:140, 800:1000] = True
    image[masks[0]] = 30
    d = Defect(class_index=0, class_name="dark", area_px=8000, bbox=(800, 100, 200, 40), peak_prob=0.9, frame_time=0.0)
    live = LiveView(preview_max_width=800)
    live(FrameResult(seq=1, capture_time=0.0, image=image, masks=masks, defects=[d], stage_s=dict.fromkeys(STAGES, 0.0),
                     latency_s=0.01, area_share=(0.0, 0.0), tiles=1, track_ids=[1]))
    preview = cv2.imdecode(np.frombuffer(live.latest_jpeg("main", preview=True)[1], np.uint8), cv2.IMREAD_COLOR)
    full = cv2.imdecode(np.frombuffer(live.latest_jpeg("main")[1], np.uint8), cv2.IMREAD_COLOR)
    assert preview.shape[:2] == (128, 800) and full.shape[:2] == (256, 1600)
    # The defect is drawn where it is, at the preview's scale: its tint and box sit at half the coordinates.
    inside, outside = preview[55:65, 420:480].astype(int), preview[10:20, 100:200].astype(int)
    assert abs(inside[..., 2] - inside[..., 0]).mean() > 40 and abs(outside[..., 2] - outside[..., 0]).mean() < 10
    assert live.encodes == 2
    live.latest_jpeg("main", preview=True)
    assert live.encodes == 2  # cached per frame and kind
