"""`inspect-edge run --config FILE`, `config check`, `config example`: one typed config, every problem named."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from helpers_net import free_port, wait_until
from helpers_onnx_model import build_dark_spot_model

from inspect_edge.config import ServiceConfig
from inspect_edge.config_file import ConfigFileError, build_config, check_file, example_yaml

pytestmark = pytest.mark.timeout(90)


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspect_edge.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_the_example_is_complete_valid_and_says_what_the_defaults_are(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text(example_yaml())
    assert check_file(path) == []
    assert build_config(path, environ={}) == ServiceConfig()
    text = path.read_text()
    for section in ("source:", "model:", "events:", "tracking:", "server:"):
        assert f"\n{section}\n" in text
    assert "# the rolling direction" in text and "max_viewers: 8" in text
    r = cli("config", "example")
    assert r.returncode == 0 and r.stdout == example_yaml()


def test_every_problem_is_reported_with_its_key_and_the_check_exits_2(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text("source:\n  spec: rtsp://cam-1/stream\n  fsp: 12\nmodel:\n  backend: tensorrtt\n"
                    "server:\n  port: 99999\n  max_viewers: many\nextra_section: {}\n")
    problems = check_file(path)
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["extra_section", "model.backend", "server.max_viewers", "server.port", "source.fsp"], problems
    assert any(p.startswith("source.fsp: unknown key") for p in problems)
    assert any("tensorrtt" in p for p in problems if p.startswith("model.backend"))
    r = cli("config", "check", str(path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 5 and "Traceback" not in r.stderr
    assert all(line.startswith(f"{path}: ") for line in r.stderr.strip().splitlines())


def test_broken_yaml_names_its_line(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text("source:\n  spec: synthetic\n  loop: [true\nmodel: {}\n")
    with pytest.raises(ConfigFileError, match=r"line \d+, column \d+: not valid YAML"):
        build_config(path, environ={})
    r = cli("run", "--config", str(path))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_flags_override_the_file_and_the_environment_fills_the_token(tmp_path):
    path = tmp_path / "line.yaml"
    path.write_text("source: {spec: synthetic, fps: 5}\nserver: {port: 9100, max_viewers: 3}\n")
    cfg = build_config(path, {"server": {"port": 9200}}, environ={"INSPECT_EDGE_AUTH_TOKEN": "t0k"})
    assert (cfg.server.port, cfg.server.max_viewers, cfg.source.fps) == (9200, 3, 5)
    assert cfg.server.auth_token.get_secret_value() == "t0k"
    r = cli("run", "--config", str(path), "--log-level", "verbose")
    assert r.returncode == 2 and "--log-level (log_level)" in r.stderr and "verbose" in r.stderr


def test_run_serves_what_the_file_says(tmp_path):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    port = free_port()
    path = tmp_path / "line.yaml"
    path.write_text(f"model: {{path: {model}, threads: 1}}\nserver: {{port: {port}}}\n"
                    f"tracking: {{strip_speed_m_s: 1.5, mm_per_px: 0.25}}\nout: {tmp_path / 'run'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "inspect_edge.cli", "run", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 40, "/readyz")
        assert "strip_metres" in httpx.get(f"http://127.0.0.1:{port}/api/stats").json()["defects"]
    finally:
        proc.terminate()
        proc.wait(10)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())  # the resolved config is kept
    assert saved["tracking"]["mm_per_px"] == 0.25 and saved["server"]["port"] == port
    assert saved["source"]["spec"] == "synthetic"
