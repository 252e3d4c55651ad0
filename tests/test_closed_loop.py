"""The closed loop end to end on a small synthetic line: evidence -> review -> export -> fit ->
candidate -> shadow -> promote, with the frame counters showing nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers_net import wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video
from helpers_service import metrics, serving

pytest.importorskip("torch", reason="the loop retrains a model: needs the train extra")
pytestmark = pytest.mark.timeout(240)


def run(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_the_line_reviews_retrains_and_swaps_in_its_own_model(tmp_path):
    prod = tmp_path / "prod.onnx"
    build_dark_spot_model(prod, height=96, width=320, model_version="line-1.0")  # the camera's 96x320 frame
    video = write_strip_video(tmp_path / "strip.avi", 50, fps=25)
    with serving(tmp_path, str(video), prod, events={"evidence_min_interval_s": 0.0},
                 model={"shadow_every": 2}) as (service, client):
        def evidence(n):
            r = client.get("/api/review?limit=500")
            return r.status_code == 200 and len(r.json()["items"]) >= n
        wait_until(lambda: evidence(6), 60, "6 defects with evidence")
        items = client.get("/api/review?limit=500").json()["items"]
        for i, it in enumerate(items[:6]):  # the reviewer confirms most, rejects one
            r = client.post("/api/review", json={"defect_id": it["defect_id"], "decision": "reject" if i == 1 else "confirm"})
            assert r.status_code == 200

        run("inspect_edge.cli", "review", "export", str(tmp_path / "run"), "--out", str(tmp_path / "reviewed"))
        run("train.cli", "fit", "--data", str(tmp_path / "reviewed"), "--out", str(tmp_path / "retrain"), "--epochs", "1",
            "--batch-size", "2", "--crop-width", "64", "--threads", "1", "--val-fraction", "0.34")
        run("inspect_edge.cli", "export", "onnx", str(tmp_path / "retrain"), "--out", str(tmp_path / "cand.onnx"),
            "--model-version", "line-1.1", "--images", "2", "--no-tensorrt-ops-check")

        r = client.post("/api/model", json={"path": str(tmp_path / "cand.onnx")})
        assert r.status_code == 200, r.text
        wait_until(lambda: (client.get("/api/model").json()["shadow"] or {}).get("frames", 0) >= 4, 30, "shadowed frames")
        m = metrics(client)
        assert m[("inspect_edge_shadow_frames_total", ())] >= 4
        assert ("inspect_edge_shadow_dice", (("candidate", "line-1.1"), ("class", "dark"))) in m
        before = client.get("/api/stats").json()["frames"]
        assert client.post("/api/model/promote").json()["production"] == "line-1.1"
        wait_until(lambda: client.get("/api/stats").json()["frames"]["processed"] > before["processed"] + 10, 20, "frames after")
        assert service.live.latest.model_version == "line-1.1"  # frames after the swap come from the new model
    f = json.loads((tmp_path / "run" / "summary.json").read_text())["frames"]
    assert f["captured"] == f["processed"] + sum(f["dropped"].values()) and f["dropped"]["error"] == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert {e["model_version"] for e in lines if e["first_seq"] > before["captured"]} <= {"line-1.1"}
