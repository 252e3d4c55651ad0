"""The service for real: `inspect-edge run` as a process, uvicorn on 127.0.0.1, ONNX Runtime.

Fed by a generated video file and by an HTTP camera that dies and comes back.
Each test bounds its own time and stops the server itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from helpers_mjpeg import FlakyMjpegCamera
from helpers_net import free_port, wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video
from prometheus_client.parser import text_string_to_metric_families

from inspect_edge.config import ServiceConfig
from inspect_edge.server.app import InspectionServer, create_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "dark.onnx"
    build_dark_spot_model(path)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_strip_video(tmp_path_factory.mktemp("video") / "strip.avi", 50, fps=25)


class ServiceProcess:
    """`inspect-edge run ...` in a child process, with its log kept for failure messages."""

    def __init__(self, args: list[str], tmp_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.run_dir = tmp_path / "run"
        self.log = open(tmp_path / "service.log", "w+")
        cmd = [sys.executable, "-m", "inspect_edge.cli", "run", *args, "--port", str(self.port),
               "--out", str(self.run_dir), "--threads", "1"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.client = httpx.Client(base_url=self.base, timeout=5)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 40) -> None:
        def ready():
            assert self.proc.poll() is None, f"service exited early:\n{self.output()}"
            return self.client.get("/readyz").status_code == 200
        wait_until(ready, timeout, "/readyz")

    def stats(self) -> dict:
        return self.client.get("/api/stats").json()

    def metrics(self) -> dict:
        text = self.client.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def stop(self, sig=signal.SIGTERM) -> tuple[int, float]:
        self.client.close()
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"service did not stop within 10 s:\n{self.output()}")
        return rc, time.monotonic() - t0


def read_mjpeg_parts(url: str, n: int, timeout: float = 15) -> list[bytes]:
    """The first n JPEG parts of a multipart stream, parsed by their Content-Length."""
    parts, buf = [], b""
    with httpx.stream("GET", url, timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("multipart/x-mixed-replace")
        for chunk in r.iter_bytes():
            buf += chunk
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                headers = buf[:head_end].decode("latin-1")
                length = int(next(h.split(":")[1] for h in headers.split("\r\n")
                                  if h.lower().startswith("content-length")))
                if len(buf) < head_end + 4 + length + 2:
                    break
                parts.append(buf[head_end + 4: head_end + 4 + length])
                buf = buf[head_end + 4 + length + 2:]
            if len(parts) >= n:
                return parts
    return parts


def test_service_end_to_end_on_a_video_file(tmp_path, model, video):
    svc = ServiceProcess(["--model", str(model), "--source", str(video), "--loop",
                          "--evidence-interval", "0.5"], tmp_path)
    try:
        svc.wait_ready()
        assert svc.client.get("/healthz").json()["status"] == "alive"
        wait_until(lambda: svc.stats()["frames"]["processed"] >= 30, 30, "30 processed frames")

        # Defects are reported, with classes, boxes and thumbnails.
        defects = svc.client.get("/api/defects", params={"limit": 5}).json()
        assert 1 <= len(defects) <= 5
        assert {d["class_name"] for d in defects} <= {"dark", "very_dark"}
        assert all(len(d["bbox"]) == 4 and d["area_px"] > 0 and 0.5 <= d["peak_prob"] <= 1 for d in defects)
        thumb = svc.client.get(defects[0]["thumbnail"])
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"

        # /metrics parses and its counters agree with /api/stats (read before and after it).
        before, m, after = svc.stats(), svc.metrics(), svc.stats()
        for key in ("captured", "processed"):
            got = m[(f"inspect_edge_frames_{key}_total", (("camera", "main"),))]
            assert before["frames"][key] <= got <= after["frames"][key], key
        for reason, n in after["frames"]["dropped"].items():
            got = m[("inspect_edge_frames_dropped_total", (("camera", "main"), ("reason", reason)))]
            assert before["frames"]["dropped"][reason] <= got <= n
        for name in ("dark", "very_dark"):
            got = m[("inspect_edge_defects_total", (("camera", "main"), ("class", name)))]
            assert before["defects"]["total"][name] <= got <= after["defects"]["total"][name]
            assert got > 0
            # Each disc is in view for dozens of frames but counts once per pass through the view.
            seen = m[("inspect_edge_defect_detections_total", (("camera", "main"), ("class", name)))]
            assert seen >= 10 * got, (name, seen, got)
        assert m[("inspect_edge_camera_up", (("camera", "main"),))] == 1
        assert m[("inspect_edge_camera_reconnects_total", (("camera", "main"),))] == after["source"]["reconnects"] == 0
        assert m[("inspect_edge_capture_to_result_seconds_count", (("camera", "main"),))] >= 30
        assert m[("inspect_edge_model_info", (("backend", "onnxruntime"), ("model_version", "test-1.0"),
                                              ("precision", "fp32")))] == 1
        assert after["fps"]["processed"] > 5 and after["latency_ms"]["p50"] > 0

        # The stream delivers real, decodable JPEG frames; so does the snapshot.
        parts = read_mjpeg_parts(svc.base + "/stream.mjpg", 3)
        assert len(parts) == 3
        for p in parts:
            img = cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (96, 320, 3)
        snap = svc.client.get("/snapshot.jpg")
        assert snap.status_code == 200 and cv2.imdecode(np.frombuffer(snap.content, np.uint8), 1).shape[:2] == (96, 320)
        page = svc.client.get("/")
        assert page.status_code == 200 and "/stream.mjpg" in svc.client.get("/static/app.js").text
    finally:
        rc, took = svc.stop(signal.SIGTERM)
    assert rc == 0, svc.output()
    assert took < 5, f"SIGTERM took {took:.1f} s"
    # The run folder holds the config, the events and evidence, and the final numbers.
    cfg = json.loads((svc.run_dir / "config.json").read_text())
    assert cfg["source"]["spec"] == str(video) and cfg["server"]["host"] == "127.0.0.1"
    events = [json.loads(x) for x in (svc.run_dir / "events.jsonl").read_text().splitlines()]
    summary_defects = json.loads((svc.run_dir / "summary.json").read_text())["defects"]["total"]
    assert len(events) == sum(summary_defects.values()) >= 3  # one line per physical defect
    assert all(e["class"] in ("dark", "very_dark") and e["frames"] >= 1 for e in events)
    assert max(e["frames"] for e in events) >= 10
    assert any((svc.run_dir / "evidence").iterdir())
    summary = json.loads((svc.run_dir / "summary.json").read_text())
    assert summary["frames"]["processed"] >= after["frames"]["processed"]
    assert "Traceback" not in svc.output()


def test_lost_camera_is_reconnected_and_metrics_say_so(tmp_path, model):
    with FlakyMjpegCamera(fps=20) as camera:
        svc = ServiceProcess(["--model", str(model), "--source", camera.url], tmp_path)
        try:
            svc.wait_ready()
            wait_until(lambda: svc.stats()["frames"]["processed"] >= 5, 20, "frames")
            camera.drop(outage_s=2.0)
            wait_until(lambda: svc.metrics()[("inspect_edge_camera_up", (("camera", "main"),))] == 0, 10, "camera_up 0")
            assert svc.client.get("/readyz").status_code == 503
            processed = svc.stats()["frames"]["processed"]
            wait_until(lambda: svc.metrics()[("inspect_edge_camera_reconnects_total", (("camera", "main"),))] >= 1, 20, "reconnect")
            wait_until(lambda: svc.stats()["frames"]["processed"] >= processed + 5, 20, "frames after reconnect")
            m, s = svc.metrics(), svc.stats()
            assert m[("inspect_edge_camera_up", (("camera", "main"),))] == 1 and s["source"]["up"]
            assert m[("inspect_edge_camera_reconnects_total", (("camera", "main"),))] == s["source"]["reconnects"] >= 1
            assert s["source"]["last_error"] == ""  # recovered: the outage's error is gone
            # Ready again once frames have flowed for ready_recover_s (2 s), not at the first frame.
            wait_until(lambda: svc.client.get("/readyz").status_code == 200, 10, "/readyz 200 after recovery")
        finally:
            rc, took = svc.stop(signal.SIGINT)
    assert rc == 0, svc.output()
    assert took < 5, f"Ctrl-C took {took:.1f} s"


def test_two_apps_in_one_process_stop_cleanly_with_a_viewer_attached(tmp_path, model, video):
    servers, threads, ports = [], [], []
    for i in range(2):
        cfg = ServiceConfig.model_validate({"source": {"spec": str(video), "loop": True},
                                            "model": {"path": str(model), "threads": 1}})
        app = create_app(cfg, run_dir=tmp_path / f"run{i}")
        ports.append(free_port())
        server = InspectionServer(app, "127.0.0.1", ports[-1])
        servers.append(server)
        threads.append(threading.Thread(target=server.run, daemon=True))
        threads[-1].start()
    try:
        for p in ports:
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{p}/readyz").status_code == 200, 40, "ready")
        # Each app has its own registry: counts differ per app, no duplicate-metric errors.
        assert servers[0].service.metrics.registry is not servers[1].service.metrics.registry
        got = []
        viewer = threading.Thread(target=lambda: got.extend(
            read_mjpeg_parts(f"http://127.0.0.1:{ports[0]}/stream.mjpg", 10_000, timeout=20)), daemon=True)
        viewer.start()
        wait_until(lambda: len(got) or servers[0].service.live.encodes, 10, "a streamed frame")
    finally:
        t0 = time.monotonic()
        for s in servers:
            s.request_stop()
        for t in threads:
            t.join(8)
        took = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads) and took < 5, f"stop took {took:.1f} s"
    for s in servers:
        assert s.service.threads_alive() == []
    viewer.join(5)
    assert not viewer.is_alive()  # the open stream ended with the service
    left = [t.name for t in threading.enumerate() if t.name in ("capture", "inference", "events")]
    assert left == []


def test_run_without_the_built_in_model_says_how_to_make_one(tmp_path):
    from inspect_edge.config import DEFAULT_MODEL

    if DEFAULT_MODEL.exists():
        pytest.skip("the built-in model is present")
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "run", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--model" in lines[0] and "export" in lines[0]


def test_bad_source_fails_at_start_with_a_clear_message(tmp_path, model):
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "run", "--model", str(model),
                        "--source", str(tmp_path / "missing.avi"), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing.avi" in r.stderr and "no such file" in r.stderr
