"""deploy/ parses, refers only to things that exist, and passes promtool.

Every metric name used by the dashboards, the rules and the federation config
must appear in the real /metrics of a running service (built here in-process on
a generated video with a tiny ONNX model); every recording-rule name used must
be defined. The end-to-end run against a real Prometheus is
test_prometheus_integration.py.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import time

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from helpers_deploy import (DASHBOARDS, DATASOURCES, DEPLOY, PROM_CONFIG, ROOT, dashboard_targets, make_inputs,
                            metric_names, rules)
from inspect_edge.config import ModelConfig, ServiceConfig, SourceConfig
from inspect_edge.server.app import create_app

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs Debian's `promtool` (package prometheus)")
DATASOURCE_UID = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]


@pytest.fixture(scope="module")
def exposed_names(tmp_path_factory) -> set[str]:
    """Sample names in the /metrics of a service that has processed frames."""
    tmp = tmp_path_factory.mktemp("svc")
    model, video = make_inputs(tmp / "inputs", seconds=3.0)
    cfg = ServiceConfig(source=SourceConfig(spec=str(video)), model=ModelConfig(path=model, backend="onnxruntime"))
    with TestClient(create_app(cfg, run_dir=tmp / "run")) as client:
        deadline = time.monotonic() + 20
        while "inspect_edge_defect_area_ratio{" not in (text := client.get("/metrics").text):
            assert time.monotonic() < deadline, "the service processed no frame within 20 s"
            time.sleep(0.2)
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def all_queries() -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression in deploy/."""
    out = [(f"{t['dashboard']} / {t['panel']} {t['ref']}", t["expr"]) for t in dashboard_targets()]
    out += [(f"rule {r.get('alert') or r['record']}", r["expr"]) for r in rules()]
    fed = yaml.safe_load((DEPLOY / "prometheus" / "central-federation.yml").read_text())
    out += [("central-federation match[]", m) for job in fed["scrape_configs"] for m in job["params"]["match[]"]]
    return out


def test_every_metric_used_is_exposed_or_recorded(exposed_names):
    recorded = {r["record"] for r in rules() if "record" in r}
    unknown = []
    for where, expr in all_queries():
        for name in metric_names(expr):
            known = name in recorded if ":" in name else (name == "up" or name in exposed_names)
            if not known:
                unknown.append(f"{where}: {name}")
    assert not unknown, f"names not in the service's /metrics nor recorded: {unknown}"
    # The check has teeth: the service's families are all there under their exposed names.
    assert {"inspect_edge_frames_processed_total", "inspect_edge_model_info",
            "inspect_edge_capture_to_result_seconds_bucket"} <= exposed_names


def test_dashboard_is_in_provisioned_form():
    for path in DASHBOARDS:
        text = path.read_text()
        dash = json.loads(text)
        assert "__inputs" not in dash and "${DS_" not in text, f"{path.name}: 'export for sharing' form"
        assert dash["uid"] and dash["title"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in dash["panels"]:
            if p["type"] == "row":
                assert p.get("repeat") in {v["name"] for v in dash["templating"]["list"]} | {None}, p["title"]
                continue
            assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
            uids = {p["datasource"]["uid"]} | {t["datasource"]["uid"] for t in p["targets"]}
            assert uids == {DATASOURCE_UID}, f"{path.name}: {p['title']!r} uses data source {uids}"
        for var in dash["templating"]["list"]:
            assert var["datasource"]["uid"] == DATASOURCE_UID


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/inspect-edge.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert any(m.endswith(f":{path}:ro") and m.startswith("./grafana/dashboards") for m in mounts)
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert ds["url"].split("//")[1].split(":")[0] in compose["services"]


def test_compose_file():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"inspect-edge-gpu", "inspect-edge-cpu", "prometheus", "grafana"} <= set(services)
    scrape = yaml.safe_load(PROM_CONFIG.read_text())["scrape_configs"]
    target_host = next(j for j in scrape if j["job_name"] == "inspect-edge")["static_configs"][0]["targets"][0]
    for name in ("inspect-edge-gpu", "inspect-edge-cpu"):
        svc = services[name]
        assert target_host.split(":")[0] in svc["networks"]["default"]["aliases"]
        assert (ROOT / svc["build"]["dockerfile"]).is_file(), svc["build"]["dockerfile"]
        assert svc["profiles"]
    assert services["inspect-edge-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for svc in services.values():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./") and source != "./models":   # models are the site's own
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which deploy/ lacks"
            elif not source.startswith("./"):
                assert source in compose["volumes"], f"named volume {source} is not declared"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.jetson"])
def test_dockerfile(name):
    text = (DEPLOY / "docker" / name).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0].startswith("FROM ")
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0"), "the service must not run as root"
    assert any(line.startswith("HEALTHCHECK") for line in lines) and "/healthz" in text
    assert "EXPOSE 8000" in lines
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"{name}: COPY {src}, which the repository lacks"


def test_kubernetes_manifests():
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert {"Namespace", "DaemonSet", "Service", "ServiceMonitor"} <= set(docs)
    ds, svc, sm = docs["DaemonSet"], docs["Service"], docs["ServiceMonitor"]
    pod = ds["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu.present" in pod["spec"]["nodeSelector"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    # job label = Service name, which the rules' up{job="inspect-edge"} expects
    assert svc["metadata"]["name"] == "inspect-edge"


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / "inspect-edge.service")
    exec_start = unit["Service"]["ExecStart"]
    assert " run " in exec_start and unit["Service"]["User"] != "root"
    env = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "inspect-edge.env").read_text().splitlines()
               if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    assert used <= set(env), f"ExecStart uses {used - set(env)}, not set in inspect-edge.env"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@needs_promtool
def test_promtool_check_config_and_rules():
    for path in (PROM_CONFIG, DEPLOY / "prometheus" / "central-federation.yml"):
        r = promtool("check", "config", str(path))
        assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "rules", *[str(p) for p in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))])
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts():
    r = promtool("test", "rules", str(DEPLOY / "prometheus" / "rules-test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_kubernetes_scrape_config():
    r = promtool("check", "config", "--syntax-only", str(DEPLOY / "k8s" / "prometheus-scrape.yml"))
    if r.returncode != 0 and "kubernetes_sd_configs not found" in r.stdout + r.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's package is)")
    assert r.returncode == 0, r.stdout + r.stderr
