"""The model that ships inside the package, and the README's run command that serves it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest
from helpers_deploy import stop_process
from helpers_net import free_port, wait_until

from inspect_edge.backends import open_backend
from inspect_edge.config import DEFAULT_MODEL
from inspect_edge.data.synthetic import SYNTH_CLASSES

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason=f"no built-in model at {DEFAULT_MODEL}")


def test_built_in_model_is_small_and_carries_calibrated_metadata():
    assert DEFAULT_MODEL.stat().st_size < 5 * 2**20
    with open_backend(DEFAULT_MODEL) as backend:
        info = backend.info
        assert info.classes == SYNTH_CLASSES
        assert (info.input_height, info.input_width) == (256, 1600)
        assert info.source_run and info.content_hash and info.model_version
        assert all(0 < t < 1 for t in info.thresholds)


def test_inspect_edge_run_with_no_arguments_serves_the_synthetic_strip(tmp_path):
    port = free_port()
    log = open(tmp_path / "service.log", "wb")
    # The README command is `inspect-edge run`; only the port and run folder differ here
    # so the test cannot collide with a service a developer already has on 8000.
    proc = subprocess.Popen([sys.executable, "-m", "inspect_edge.cli", "run", "--port", str(port),
                             "--out", str(tmp_path / "run")], stdout=log, stderr=subprocess.STDOUT)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
        wait_until(lambda: http.get("/readyz").status_code == 200, 60, "built-in model ready")
        stats = wait_until(lambda: (s := http.get("/api/stats").json())["frames"]["processed"] >= 5 and s, 60,
                           "five frames processed")
        assert stats["model"]["backend"] == "onnxruntime"
        # The synthetic strip carries defects; the shipped model must find some within a short run.
        wait_until(lambda: sum(http.get("/api/stats").json()["defects"]["total"].values()) > 0, 60,
                   "a defect reported")
        assert http.get("/snapshot.jpg").content[:2] == b"\xff\xd8"
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
    finally:
        stop_process(proc)
        log.close()
    assert (tmp_path / "run" / "config.json").exists()
