"""The deploy files against a real Prometheus scraping a real `inspect-edge run` on 127.0.0.1.

The service plays a generated strip video in real time (ONNX Runtime, tiny model);
Prometheus (Debian's package) scrapes it every second with the project's own
config and rules, only targets, intervals and alert `for:` windows shortened.
Then: every dashboard query and every rule must return data, no rule may fail to
evaluate, camera-down must fire once the video ends, and service-down once the
service stops. The values Prometheus returned go to test-output/prometheus_check.md.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from helpers_deploy import (GRAFANA_VARIABLES, ROOT, TEST_RANGES, RULE_FILES, dashboard_targets, make_inputs, prometheus_config_for_test,
                            rules, start_service, stop_process, substitute_grafana_variables,
                            watched_series, with_short_windows)
from helpers_net import free_port, wait_until

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's `prometheus` on the PATH (tests/run.sh installs it as root)"),
    pytest.mark.timeout(120),
]
VIDEO_S = 14.0          # the source plays this long, then ends: camera down
TEST_FOR = "2s"         # alert `for:` in the test copy of the rules
REPORT = ROOT / "test-output" / "prometheus_check.md"


class Prom:
    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)

    def query(self, expr: str) -> list[dict]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        body = r.json()
        assert body.get("status") == "success", f"Prometheus refused {expr!r}: {body.get('error')}"
        result = body["data"]["result"]
        return [result] if body["data"]["resultType"] == "scalar" else result

    def alerts(self) -> dict[str, str]:
        """Alert name -> 'firing' or 'pending' (the most advanced of its instances)."""
        states: dict[str, str] = {}
        for a in self.http.get("/api/v1/alerts").json()["data"]["alerts"]:
            name = a["labels"]["alertname"]
            if states.get(name) != "firing":
                states[name] = a["state"]
        return states


def finite(result: list[dict]) -> list[dict]:
    return [s for s in result if not math.isnan(float(s["value"][1]))]


def show(result: list[dict], limit: int = 4) -> str:
    if not result:
        return "(no series)"
    parts = []
    for s in result[:limit]:
        labels = {k: v for k, v in s["metric"].items() if k not in ("job", "__name__", "line")}
        label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "instance")
        v = float(s["value"][1])
        parts.append(f"{label_text + ': ' if label_text else ''}{v:.4g}")
    more = f" (+{len(result) - limit})" if len(result) > limit else ""
    return "; ".join(parts) + more


@pytest.fixture
def stack(tmp_path):
    model, video = make_inputs(tmp_path / "inputs", VIDEO_S)
    svc_port, prom_port = free_port(), free_port()
    rule_paths = []
    for path in RULE_FILES:
        test_copy = tmp_path / path.name
        test_copy.write_text(yaml.safe_dump(with_short_windows(path.read_text(), TEST_FOR), sort_keys=False))
        rule_paths.append(test_copy)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config_for_test(svc_port, prom_port, rule_paths), sort_keys=False))
    tsdb = Path(tempfile.mkdtemp(prefix="inspect-edge-tsdb-"))
    prom_log = open(tmp_path / "prometheus.log", "wb")
    service = start_service(model, video, svc_port, tmp_path / "run")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                            stdout=prom_log, stderr=subprocess.STDOUT)
    try:
        yield {"service": service, "svc": httpx.Client(base_url=f"http://127.0.0.1:{svc_port}", timeout=5.0),
               "prom": Prom(prom_port), "rule_paths": rule_paths}
    finally:
        stop_process(service)
        stop_process(prom)
        prom_log.close()
        shutil.rmtree(tsdb, ignore_errors=True)


def test_dashboards_and_rules_on_a_real_prometheus(stack):
    svc, prom, service = stack["svc"], stack["prom"], stack["service"]
    t0 = time.monotonic()
    wait_until(lambda: svc.get("/readyz").status_code == 200, 20, "service ready (model loaded, video playing)")
    wait_until(lambda: prom.http.get("/-/ready").status_code == 200, 15, "Prometheus ready")
    targets = wait_until(
        lambda: [t for t in prom.http.get("/api/v1/targets").json()["data"]["activeTargets"]
                 if t["labels"]["job"] == "inspect-edge" and t["health"] == "up"], 10, "inspect-edge target up")
    assert targets[0]["labels"]["line"] == "line-1"

    panels = [{**t, "query": substitute_grafana_variables(t["expr"])} for t in dashboard_targets()]
    all_rules = rules(stack["rule_paths"])   # the test copies: what Prometheus evaluates
    recordings = [r for r in all_rules if "record" in r]
    alerts = [r for r in all_rules if "alert" in r]

    # Every query must show something: wait until all do and the rates have caught up
    # with the line (the first scrapes of a counter under-read its rate).
    def processed_fps() -> float:
        return float(prom.query("instance_camera:inspect_edge_frames_processed:rate1m")[0]["value"][1])

    def still_empty() -> list[str]:
        missing = [p["panel"] for p in panels if not finite(prom.query(p["query"]))]
        missing += [r["record"] for r in recordings if not finite(prom.query(r["expr"]))]
        missing += [a["alert"] for a in alerts if not finite(prom.query(watched_series(a["expr"])))]
        return missing

    deadline = t0 + VIDEO_S - 2   # before the video ends
    needed = float(prom.query("inspect_edge:line_required_fps")[0]["value"][1])
    while (missing := still_empty()) or processed_fps() <= needed:
        assert time.monotonic() < deadline, (
            f"while the line runs, queries without data: {missing}; processed {processed_fps():.1f} frames/s")
        time.sleep(1.0)
    # Alerts pending from the first scrapes (rates under-read) clear within a few evaluations.
    quiet = ("InspectEdgeCameraDown", "InspectEdgeServiceDown", "InspectEdgeProcessingTooSlow")
    wait_until(lambda: not set(quiet) & set(prom.alerts()), 5, f"{quiet} inactive while the line runs")
    steady = {
        "panels": [(p, prom.query(p["query"])) for p in panels],
        "recordings": [(r, prom.query(r["expr"])) for r in recordings],
        "alerts": [(a, prom.query(watched_series(a["expr"])), prom.query(a["expr"])) for a in alerts],
        "states": prom.alerts(),
    }
    vars_ok = prom.http.get("/api/v1/label/instance/values",
                            params={"match[]": "inspect_edge_camera_up"}).json()["data"]
    assert vars_ok, "the dashboard's instance variable would list no box"
    groups = prom.http.get("/api/v1/rules").json()["data"]["groups"]
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] == "err"]
    assert not broken, f"rules failing to evaluate: {broken}"
    assert len([r for g in groups for r in g["rules"]]) == len(all_rules)
    for name in quiet:
        assert name not in steady["states"], f"{name} is {steady['states'][name]} while the line runs normally"
    processed = processed_fps()
    captured = float(prom.query("instance_camera:inspect_edge_frames_captured:rate1m")[0]["value"][1])
    assert needed < processed < 30 and abs(processed - captured) < 0.2 * captured, (processed, captured)

    # The video ends: the camera is down; the alert must go pending, then fire.
    wait_until(lambda: svc.get("/api/stats").json()["source"]["finished"], VIDEO_S + 10, "end of the video")
    source_end = time.monotonic()
    wait_until(lambda: prom.alerts().get("InspectEdgeCameraDown") == "firing", 10, "InspectEdgeCameraDown firing")
    camera_fired_s = time.monotonic() - source_end
    after_end = prom.alerts()
    camera_up = prom.query("inspect_edge_camera_up")

    # The service stops: Prometheus sees the target down and service-down fires.
    stop_process(service)
    stopped = time.monotonic()
    wait_until(lambda: prom.alerts().get("InspectEdgeServiceDown") == "firing", 10, "InspectEdgeServiceDown firing")
    service_fired_s = time.monotonic() - stopped

    write_report(steady, after_end, camera_up, camera_fired_s, service_fired_s, time.monotonic() - t0)
    assert float(camera_up[0]["value"][1]) == 0


def write_report(steady, after_end, camera_up, camera_fired_s, service_fired_s, total_s) -> None:
    prod = {r.get("alert") or r["record"]: r for r in rules()}
    lines = ["# Prometheus check of deploy/ against a running inspect-edge", "",
             f"Prometheus scraping `inspect-edge run` (ONNX Runtime, 25 frames/s video of {VIDEO_S:.0f} s) every 1 s; "
             f"rules evaluated every 1 s; alert `for:` shortened to {TEST_FOR}, rule range windows "
             f"shortened as {TEST_RANGES} (dashboard: {GRAFANA_VARIABLES}). Run took {total_s:.1f} s.", "",
             "## Alerts", "",
             "| alert | for (prod) | watched series | value while running | condition | state while running |"
             " state after the video ended |", "|---|---|---|---|---|---|---|"]
    for a, watched, full in steady["alerts"]:
        name = a["alert"]
        lines.append(f"| {name} | {prod[name].get('for', '0s')} | `{watched_series(prod[name]['expr'])}` | {show(watched)} | "
                     f"{'true: ' + show(full) if full else 'false'} | {steady['states'].get(name, 'inactive')} | "
                     f"{after_end.get(name, 'inactive')} |")
    lines += ["", f"- InspectEdgeCameraDown fired {camera_fired_s:.1f} s after the source ended "
                  f"(inspect_edge_camera_up = {show(camera_up)}).",
              f"- InspectEdgeServiceDown fired {service_fired_s:.1f} s after the service was stopped.", "",
              "## Recording rules", "", "| rule | value |", "|---|---|"]
    lines += [f"| `{r['record']}` | {show(v)} |" for r, v in steady["recordings"]]
    lines += ["", "## Dashboard panels", "", "| panel | ref | query (variables filled in) | value |", "|---|---|---|---|"]
    lines += [f"| {p['panel']} | {p['ref']} | `{p['query']}` | {show(v)} |" for p, v in steady["panels"]]
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
