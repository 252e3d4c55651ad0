"""Hot swap on a real service: a broken candidate is refused, a good one is shadowed, promoted
between two frames with no frame lost, and rolled back."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers_net import wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video
from helpers_service import metrics, serving

pytestmark = pytest.mark.timeout(120)


def test_candidate_refused_shadowed_promoted_and_rolled_back_without_losing_a_frame(tmp_path):
    prod, cand, wrong = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "wrong.onnx"
    build_dark_spot_model(prod, model_version="a-1.0")
    build_dark_spot_model(cand, model_version="b-2.0", cutoffs=(95, 45))  # a little more eager
    build_dark_spot_model(wrong, model_version="w-9", classes=("rust", "dent"))
    video = write_strip_video(tmp_path / "strip.avi", 50, fps=25)
    with serving(tmp_path, str(video), prod, model={"shadow_every": 2}) as (service, client):
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "ready")
        before = client.get("/api/stats").json()["frames"]["processed"]
        r = client.post("/api/model", json={"path": str(wrong)})
        assert r.status_code == 400 and "classes ['rust', 'dent'] differ" in r.json()["detail"]
        r = client.post("/api/model", json={"path": str(tmp_path / "missing.onnx")})
        assert r.status_code == 400 and "cannot load" in r.json()["detail"]
        assert client.post("/api/model/promote").status_code == 409  # nothing to promote yet
        wait_until(lambda: client.get("/api/stats").json()["frames"]["processed"] > before + 5, 10, "production on")

        r = client.post("/api/model", json={"path": str(cand)})
        assert r.status_code == 200 and r.json()["candidate"] == "b-2.0"
        wait_until(lambda: (client.get("/api/model").json()["shadow"] or {}).get("frames", 0) >= 5, 20, "shadow frames")
        status = client.get("/api/model").json()
        assert status["production"] == "a-1.0" and status["candidate"] == "b-2.0"
        dice = status["shadow"]["dice_vs_production"]
        assert 0.5 < min(dice.values()) < 1.0  # similar, not identical: the cutoffs differ
        # Shadow frames keep arriving, so the gauge and the API are compared on a quiet moment:
        # the gauge read twice with the same value around the API read.
        gauge = ("inspect_edge_shadow_dice", (("candidate", "b-2.0"), ("class", "dark")))

        def gauge_matches_api() -> bool:
            first = metrics(client)[gauge]
            api = client.get("/api/model").json()["shadow"]["dice_vs_production"]["dark"]
            return metrics(client)[gauge] == first and first == pytest.approx(api)

        wait_until(gauge_matches_api, 10, "the shadow Dice gauge to equal the API's")
        if shutil.which("chromium"):  # the live page says which candidate is in shadow, and how it agrees
            dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                                  "--dump-dom", str(client.base_url) + "/"], capture_output=True, text=True, timeout=60).stdout
            assert "candidate b-2.0 in shadow" in dom and "Dice vs production dark" in dom

        r = client.post("/api/model/promote")
        assert r.status_code == 200 and r.json() == {"done": "promote", "production": "b-2.0", "previous": "a-1.0"}
        assert service.pipeline.info.model_version == "b-2.0"
        swapped_at = client.get("/api/stats").json()["frames"]["processed"]
        wait_until(lambda: client.get("/api/stats").json()["frames"]["processed"] > swapped_at + 10, 10, "frames after")
        m = metrics(client)
        assert m[("inspect_edge_model_info", (("backend", "onnxruntime"), ("model_version", "b-2.0"),
                                              ("precision", "fp32")))] == 1
        r = client.post("/api/model/rollback")
        assert r.status_code == 200 and r.json()["production"] == "a-1.0"
        assert client.get("/api/model").json()["swaps"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    f = summary["frames"]
    # Every captured frame was processed or dropped for a stated reason; none for an error.
    assert f["captured"] == f["processed"] + sum(f["dropped"].values()) and f["dropped"]["error"] == 0
    versions = {json.loads(x)["model_version"] for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()}
    assert "b-2.0" in versions and "a-1.0" in versions  # events name the model that found them


@pytest.mark.parametrize("min_dice, promoted", [(0.5, True), (0.9999, False)])
def test_a_candidate_promotes_itself_only_when_it_agrees_with_production(tmp_path, min_dice, promoted):
    prod, cand = tmp_path / "a.onnx", tmp_path / "b.onnx"
    build_dark_spot_model(prod, model_version="a-1.0")
    build_dark_spot_model(cand, model_version="b-2.0", cutoffs=(95, 45))
    video = write_strip_video(tmp_path / "strip.avi", 50, fps=25)
    model = {"shadow_every": 1, "auto_promote_after": 4, "auto_promote_min_dice": min_dice}
    with serving(tmp_path, str(video), prod, model=model) as (service, client):
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "ready")
        assert client.post("/api/model", json={"path": str(cand)}).status_code == 200
        wait_until(lambda: client.get("/api/model").json()["swaps"] == 1 or
                   ((client.get("/api/model").json()["shadow"] or {}).get("frames", 0) >= 8), 20, "a decision")
        status = client.get("/api/model").json()
        assert (status["production"] == "b-2.0") is promoted and status["swaps"] == int(promoted)
