"""What the deploy tests share: the deploy files, the queries in them, and a running service.

Queries are taken from the files themselves (every dashboard target, every rule),
so a panel or alert added later is checked without touching the tests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from helpers_onnx_model import build_dark_spot_model, write_strip_video

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.rules.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# What Grafana would put in for its variables, for a Prometheus scraping every second.
GRAFANA_VARIABLES = {"__rate_interval": "5s", "__interval": "1s", "__range": "1m", "instance": ".*", "camera": ".*"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


# ---- queries in the deploy files ---------------------------------------------
def dashboard_targets() -> list[dict]:
    """[{dashboard, panel, ref, expr}] for every target of every panel (rows included)."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        panels = list(dash["panels"])
        for p in list(panels):
            panels.extend(p.get("panels", []))     # collapsed rows keep their panels inside
        for p in panels:
            for t in p.get("targets", []):
                out.append({"dashboard": path.name, "panel": p["title"], "ref": t["refId"], "expr": t["expr"]})
    return out


def rules(paths: list[Path] | None = None) -> list[dict]:
    """Every rule of every rule file (the project's, or `paths`), with its group name."""
    out = []
    for path in paths or RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend({**r, "group": group["name"]} for r in group["rules"])
    return out


def substitute_grafana_variables(expr: str) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"dashboard query uses ${name}, which the tests do not know how to fill in: {expr}")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def watched_series(expr: str) -> str:
    """The left side of an alert's first top-level comparison: the series the alert watches."""
    depth, quote, i = 0, None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = None if c == quote and expr[i - 1] != "\\" else quote
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "<>=!" and (c in "<>" or expr[i + 1:i + 2] == "="):
            return expr[:i].strip()
        i += 1
    return expr.strip()


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (ours and `up`)."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "", no_strings)
    return {n for n in _NAME.findall(no_matchers) if "inspect_edge" in n or n == "up"}


# Production range windows -> the test's, for a Prometheus scraping every second
# for a few seconds. Order is kept (1m < 5m < 15m < 1h) so comparisons between
# windows (defect spike: 5m against 1h) still mean the same.
TEST_RANGES = {"1m": "5s", "5m": "8s", "15m": "10s", "1h": "12s"}


def with_short_windows(rule_text: str, for_s: str = "2s") -> dict:
    """A copy of a rule file with alerts waiting `for_s` and range windows per TEST_RANGES."""
    doc = yaml.safe_load(rule_text)

    def short(m: re.Match) -> str:
        if m.group(1) not in TEST_RANGES:
            raise KeyError(f"range [{m.group(1)}] has no test equivalent in TEST_RANGES")
        return f"[{TEST_RANGES[m.group(1)]}]"

    for group in doc["groups"]:
        for r in group["rules"]:
            r["expr"] = re.sub(r"\[(\w+)\]", short, r["expr"])
            if "alert" in r and "for" in r:
                r["for"] = for_s
    return doc


def prometheus_config_for_test(service_port: int, prom_port: int, rule_paths: list[Path]) -> dict:
    """The production config with only intervals, targets and rule file paths changed."""
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(p) for p in rule_paths]
    targets = {"inspect-edge": f"127.0.0.1:{service_port}", "prometheus": f"127.0.0.1:{prom_port}"}
    for job in cfg["scrape_configs"]:
        if job["job_name"] not in targets:
            raise KeyError(f"{PROM_CONFIG}: job {job['job_name']!r} has no test target; add one here")
        for sc in job["static_configs"]:
            sc["targets"] = [targets[job["job_name"]]]
    return cfg


# ---- the service ---------------------------------------------------------------
def make_inputs(folder: Path, seconds: float, fps: float = 25.0) -> tuple[Path, Path]:
    """A tiny ONNX model and a strip video of `seconds` at `fps`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.onnx"
    build_dark_spot_model(model)
    video = write_strip_video(folder / "strip.avi", int(seconds * fps), fps=fps)
    return model, video


def start_service(model: Path, video: Path, port: int, run_dir: Path) -> subprocess.Popen:
    """`inspect-edge run` as a plant would run it, playing the video in real time, no loop."""
    log = open(run_dir.parent / "service.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "inspect_edge.cli", "run", "--source", str(video), "--model", str(model),
         "--backend", "onnxruntime", "--threads", "1", "--port", str(port), "--out", str(run_dir),
         "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen, timeout_s: float = 8.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
