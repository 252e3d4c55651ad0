"""Who may see the line, how many may watch, and one-line answers to wrong start-ups.

Real `inspect-edge run` processes on 127.0.0.1 with a real ONNX model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from helpers_net import free_port, wait_until
from helpers_onnx_model import build_dark_spot_model

from inspect_edge.cli import _is_loopback

pytestmark = pytest.mark.timeout(90)
TOKEN = "s3cret-line-1"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "dark.onnx"
    build_dark_spot_model(path)
    return path


def start(tmp_path, model, *args, env=None):
    port = free_port()
    log = open(tmp_path / "service.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "inspect_edge.cli", "run", "--model", str(model), "--port", str(port),
         "--out", str(tmp_path / "run"), "--threads", "1", *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.poll() is None and httpx.get(base + "/readyz").status_code == 200, 40, "/readyz")
    return proc, base


def stop(proc) -> None:
    proc.terminate()
    proc.wait(10)


def test_a_token_protected_service_refuses_requests_without_it(tmp_path, model):
    proc, base = start(tmp_path, model, "--metrics-need-token", env={"INSPECT_EDGE_AUTH_TOKEN": TOKEN})
    try:
        with httpx.Client(base_url=base, timeout=5) as anon:
            for path in ("/", "/api/stats", "/api/defects", "/snapshot.jpg", "/stream.mjpg", "/api/docs",
                         "/static/app.js", "/metrics"):
                r = anon.get(path)
                assert r.status_code == 401, (path, r.status_code)
                assert "Bearer" in r.headers["www-authenticate"] and "token" in r.json()["detail"]
            assert anon.get("/api/stats", headers={"Authorization": "Bearer wrong"}).json()["detail"].startswith("wrong token")
            assert anon.get("/healthz").status_code == 200 and anon.get("/readyz").status_code == 200
        with httpx.Client(base_url=base, timeout=5, headers={"Authorization": f"Bearer {TOKEN}"}) as machine:
            assert machine.get("/api/stats").json()["ready"] is True
            assert "inspect_edge_frames_processed_total" in machine.get("/metrics").text
        with httpx.Client(base_url=base, timeout=5) as browser:  # opens the link once, then rides the cookie
            page = browser.get(f"/?token={TOKEN}")
            assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
            assert browser.get("/api/stats").status_code == 200
            assert browser.get("/snapshot.jpg").headers["content-type"] == "image/jpeg"
    finally:
        stop(proc)
    saved = (tmp_path / "run" / "config.json").read_text()
    assert TOKEN not in saved and json.loads(saved)["server"]["auth_token"] == "**********"


def test_stream_viewers_beyond_the_limit_get_503_and_a_closed_viewer_frees_its_place(tmp_path, model):
    proc, base = start(tmp_path, model, "--max-viewers", "2")
    opened, stop_reading = [], threading.Event()

    def watch():
        with httpx.stream("GET", base + "/stream.mjpg", timeout=10) as r:
            opened.append(r.status_code)
            for _ in r.iter_bytes():
                if stop_reading.is_set():
                    return

    try:
        viewers = [threading.Thread(target=watch, daemon=True) for _ in range(2)]
        for v in viewers:
            v.start()
        wait_until(lambda: opened == [200, 200], 10, "two viewers")
        third = httpx.get(base + "/stream.mjpg", timeout=5)
        assert third.status_code == 503 and "limit 2" in third.json()["detail"]
        stop_reading.set()
        for v in viewers:
            v.join(10)

        def a_place_again():
            with httpx.stream("GET", base + "/stream.mjpg", timeout=5) as r:
                return r.status_code == 200
        wait_until(a_place_again, 10, "a free place after the viewers left")
    finally:
        stop(proc)


def run_cli(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspect_edge.cli", "run", *args], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)


def test_wrong_start_ups_get_one_line_and_status_2(tmp_path, model):
    r = run_cli(tmp_path, "--model", str(model), "--log-level", "verbose", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--log-level" in r.stderr, r.stderr

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run folder's parent should be")
    r = run_cli(tmp_path, "--model", str(model), "--out", str(blocker / "run"), "--port", str(free_port()))
    assert r.returncode == 2 and "cannot write the run folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli(tmp_path, "--model", str(model), "--out", str(tmp_path / "b"), "--port", str(port))
    assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "serving" not in r.stdout and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()  # refused before anything was loaded or written


def test_only_loopback_addresses_count_as_private():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.20") and not _is_loopback("line-1.local")
