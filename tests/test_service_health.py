"""A service that refuses what it cannot run, heals its threads and tells the process manager.

Each test runs the real app under uvicorn on 127.0.0.1 in this process (so a
fault can be injected into one thread), with a real ONNX model that breaks its
own metadata, a real MJPEG camera that freezes, or an evidence writer that raises.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from helpers_mjpeg import FlakyMjpegCamera
from helpers_net import free_port, wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video
from helpers_service import metrics, serving

from inspect_edge.config import ServiceConfig
from inspect_edge.server.app import InspectionServer, create_app

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_strip_video(tmp_path_factory.mktemp("video") / "strip.avi", 50, fps=25)


@pytest.mark.parametrize("broken, reason", [
    ({"output_channels": 2, "classes": ("a", "b", "c", "d"), "min_areas": (4,) * 4}, "has 2 channels but its metadata names 4 classes"),
    ({"output_stride": 2}, "output is 32x64 but its input is 64x128"),
    ({"nan": True}, "NaN or infinite"),
])
def test_a_model_that_breaks_its_metadata_is_refused_at_warm_up(tmp_path, video, caplog, broken, reason):
    model = tmp_path / "broken.onnx"
    build_dark_spot_model(model, **broken)
    with caplog.at_level(logging.INFO), serving(tmp_path, str(video), model) as (service, client):
        wait_until(lambda: "refused" in client.get("/readyz").json()["reason"], 20, "the refusal")
        r = client.get("/readyz")
        assert r.status_code == 503 and reason in r.json()["reason"], r.json()
        assert metrics(client)[("inspect_edge_model_loaded", ())] == 0
        time.sleep(0.5)
        stats = client.get("/api/stats").json()
        # Refused before the camera opens: no frame is dropped as an error, one log line says why.
        assert stats["frames"]["captured"] == 0 and stats["frames"]["dropped"]["error"] == 0
        assert client.get("/healthz").status_code == 200  # a restart cannot fix the model: readiness says it
    refusals = [r for r in caplog.records if "model refused" in r.getMessage()]
    assert len(refusals) == 1 and reason in refusals[0].getMessage() and refusals[0].exc_info is None


def test_a_crashing_evidence_writer_is_restarted_counted_and_its_event_still_logged(tmp_path, video):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    with serving(tmp_path, str(video), model, events={"evidence_min_interval_s": 0.2}) as (service, client):
        store, calls = service.events.store, []
        real_save = store.save

        def save_that_fails_once(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected bug in the evidence writer")
            return real_save(*args, **kwargs)

        store.save = save_that_fails_once
        service.events.thread.backoff_initial_s = 0.05
        wait_until(lambda: len(calls) >= 3, 20, "evidence written after the crash")
        m = metrics(client)
        assert m[("inspect_edge_thread_restarts_total", (("thread", "events"),))] == 1
        assert m[("inspect_edge_thread_healthy", (("thread", "events"),))] == 1
        assert m[("inspect_edge_evidence_total", (("outcome", "error"),))] == 1
        assert m[("inspect_edge_evidence_total", (("outcome", "saved"),))] >= 1
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["threads"]["events"]["restarts"] == 1
    lines = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    failed = [e for e in lines if e.get("evidence_error")]
    assert len(failed) == 1 and failed[0]["evidence"] is None
    named = [e["evidence"] for e in lines if e["evidence"]]
    assert named and all((tmp_path / "run" / p / "frame.jpg").is_file() for p in named)  # never a missing folder
    ids = [e["defect_id"] for e in lines]
    assert len(ids) == len(set(ids))  # each physical defect logged once, the failed one included


def test_a_thread_past_its_restart_budget_turns_healthz_503(tmp_path, video):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    with serving(tmp_path, str(video), model, events={"evidence_min_interval_s": 0.0}) as (service, client):
        wait_until(lambda: client.get("/readyz").status_code == 200, 20, "ready")
        thread = service.events.thread
        thread.backoff_initial_s, thread.max_restarts = 0.01, 2

        def always_fails(*args, **kwargs):
            raise RuntimeError("disk driver bug")

        service.events.store.save = always_fails
        wait_until(lambda: client.get("/healthz").status_code == 503, 20, "/healthz 503")
        body = client.get("/healthz").json()
        assert body["status"] == "unhealthy" and "'events' failed" in body["reason"] and "disk driver bug" in body["reason"]
        assert metrics(client)[("inspect_edge_thread_healthy", (("thread", "events"),))] == 0
        assert metrics(client)[("inspect_edge_thread_restarts_total", (("thread", "events"),))] == 2


def test_a_frozen_camera_is_down_within_its_read_timeout_and_ready_does_not_flap(tmp_path):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    with FlakyMjpegCamera(fps=20) as camera, serving(
            tmp_path, camera.url, model, source={"read_timeout_s": 1.0, "loop": False}) as (service, client):
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "ready")
        camera.freeze(6.0)
        t0 = time.monotonic()
        wait_until(lambda: metrics(client)[("inspect_edge_camera_up", (("camera", "main"),))] == 0, 5, "camera_up 0")
        took = time.monotonic() - t0
        assert took < 1.0 + 1.5, f"camera_up fell after {took:.1f} s, read timeout 1 s"
        assert "no new frame" in client.get("/api/stats").json()["source"]["last_error"] or \
            client.get("/api/stats").json()["source"]["last_error"]
        # While frozen and for ready_recover_s after, /readyz stays 503: sampled, it never flips back.
        seen = []
        while time.monotonic() - t0 < 6.0:
            seen.append(client.get("/readyz").status_code)
            time.sleep(0.1)
        assert set(seen) == {503}, seen
        wait_until(lambda: client.get("/readyz").status_code == 200, 20, "ready after the freeze")
        assert client.get("/api/stats").json()["source"]["last_error"] == ""


def test_a_service_unhealthy_past_its_limit_ends_itself_so_systemd_restarts_it(tmp_path, video):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    cfg = ServiceConfig.model_validate({"source": {"spec": str(video), "loop": True},
                                        "model": {"path": str(model), "threads": 1},
                                        "server": {"unhealthy_exit_s": 1.0}})
    server = InspectionServer(create_app(cfg, run_dir=tmp_path / "run"), "127.0.0.1", free_port())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.service.pipeline.ready.is_set(), 20, "model loaded")
    t = server.service.events.thread
    t.backoff_initial_s, t.max_restarts = 0.01, 0
    server.service.events.store.save = lambda *a, **k: 1 / 0
    thread.join(20)
    assert not thread.is_alive() and server.exited_unhealthy


def test_an_unreadable_video_file_is_logged_once_with_its_path(tmp_path, caplog):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00AVI not really a video" * 10)
    with caplog.at_level(logging.INFO), serving(tmp_path, str(broken), model, source={"loop": False}) as (service, client):
        wait_until(lambda: "ended" in client.get("/readyz").json()["reason"], 20, "source ended")
        reason = client.get("/readyz").json()["reason"]
        assert str(broken) in reason and "cannot" in reason.split(":", 1)[1].lower(), reason
    said = [r.getMessage() for r in caplog.records if str(broken) in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(said) == 1, said


def test_evidence_masks_of_many_classes_are_kept_losslessly(tmp_path):
    import io

    import cv2
    import numpy as np

    from inspect_edge.overlay import encode_mask_png

    rng = np.random.default_rng(0)
    twelve = rng.random((12, 20, 30)) > 0.7
    packed = cv2.imdecode(np.frombuffer(encode_mask_png(twelve), np.uint8), cv2.IMREAD_UNCHANGED)
    assert packed.dtype == np.uint16
    assert np.array_equal(np.stack([(packed >> k) & 1 for k in range(12)]).astype(bool), twelve)
    with pytest.raises(ValueError, match="at most 16 classes, got 17"):
        encode_mask_png(np.zeros((17, 4, 4), bool))
    from inspect_edge.events import EvidenceStore
    from inspect_edge.pipeline import FrameResult

    many = rng.random((20, 20, 30)) > 0.5
    result = FrameResult(1, 0.0, np.zeros((20, 30), np.uint8), many, [], {}, 0.0, (0.0,) * 20, 1)
    path = EvidenceStore(tmp_path / "evidence", 10**7).save("e1", result, {"seq": 1})
    assert np.array_equal(np.load(io.BytesIO((path / "masks.npz").read_bytes()))["masks"], many)


def test_with_a_line_speed_the_service_reports_metres_inspected_and_defects_per_metre(tmp_path, video):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    with serving(tmp_path, str(video), model, tracking={"strip_speed_m_s": 2.0}) as (service, client):
        wait_until(lambda: client.get("/api/stats").json()["defects"].get("strip_metres", 0) > 2, 20, "2 m inspected")
        d = client.get("/api/stats").json()["defects"]
        m = metrics(client)
        metres = m[("inspect_edge_strip_metres_total", (("camera", "main"),))]
        assert metres > 2 and set(d["per_metre"]) == {"dark", "very_dark"}
        n_dark = m[("inspect_edge_defects_total", (("camera", "main"), ("class", "dark")))]
        assert abs(d["per_metre"]["dark"] - n_dark / d["strip_metres"]) < 0.05 + 1 / d["strip_metres"]
