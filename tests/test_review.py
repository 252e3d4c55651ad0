"""Review on a real service: decisions posted, kept across a restart, exported as training data."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers_net import wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video
from helpers_service import serving

from inspect_edge.data import open_dataset
from inspect_edge.review import ReviewLog

pytestmark = pytest.mark.timeout(120)


def test_review_decisions_are_checked_kept_and_exported(tmp_path):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    video = write_strip_video(tmp_path / "strip.avi", 50, fps=25)
    with serving(tmp_path, str(video), model, events={"evidence_min_interval_s": 0.0}) as (service, client):
        def four_with_evidence():
            r = client.get("/api/review")
            return r.status_code == 200 and len(r.json()["items"]) >= 4  # 503 until the model is loaded
        wait_until(four_with_evidence, 40, "4 defects with evidence")
        q = client.get("/api/review").json()
        assert q["classes"] == ["dark", "very_dark"]
        items = q["items"][:4]
        assert all(it["review"] is None and it["evidence"] for it in items)
        overlay = client.get(f"/api/review/{items[0]['defect_id']}/overlay.jpg")
        assert overlay.status_code == 200 and overlay.content[:2] == b"\xff\xd8"
        other = {"dark": "very_dark", "very_dark": "dark"}
        posts = [dict(defect_id=items[0]["defect_id"], decision="confirm", reviewer="ana"),
                 dict(defect_id=items[1]["defect_id"], decision="reject"),
                 {"defect_id": items[2]["defect_id"], "decision": "reclass", "class": other[items[2]["class"]]},
                 dict(defect_id=items[3]["defect_id"], decision="missed")]
        for body in posts:
            r = client.post("/api/review", json=body)
            assert r.status_code == 200 and r.json()["decision"] == body["decision"], r.text
        # Bad requests get a 4xx that names the field.
        bad = client.post("/api/review", json={"defect_id": items[0]["defect_id"], "decision": "maybe"})
        assert bad.status_code == 400 and bad.json()["detail"].startswith("decision:")
        assert client.post("/api/review", json={"defect_id": 10**6, "decision": "confirm"}).status_code == 404
        wrong = client.post("/api/review", json={"defect_id": items[0]["defect_id"], "decision": "reclass", "class": "rust"})
        assert wrong.status_code == 400 and "class:" in wrong.json()["detail"]
        assert client.post("/api/review", json={"defect_id": 1, "decision": "confirm", "extra": 1}).status_code == 422
        assert client.get("/review").status_code == 200
        events = {e["defect_id"]: e for e in client.get("/api/review?limit=500").json()["items"]}
    # Kept in the run folder: a new log (as after a restart) reads the same decisions.
    decided = ReviewLog(tmp_path / "run", ("dark", "very_dark")).decisions()
    assert [decided[b["defect_id"]]["decision"] for b in posts] == ["confirm", "reject", "reclass", "missed"]
    assert decided[posts[0]["defect_id"]]["reviewer"] == "ana"

    out = tmp_path / "reviewed"
    r = subprocess.run([sys.executable, "-m", "inspect_edge.cli", "review", "export", str(tmp_path / "run"),
                        "--out", str(out), "--format", "cvat"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "3 reviewed frame(s) (1 confirmed, 1 rejected, 1 reclassed), 1 to label" in r.stdout
    ds = open_dataset(out)
    assert ds.classes == ("dark", "very_dark") and len(ds) == 3
    classes = ds.classes
    for body in posts[:3]:
        e = events[body["defect_id"]]
        got = ds[ds.ids.index(f"d{body['defect_id']:08d}")].masks
        evidence = cv2.imread(str(tmp_path / "run" / e["evidence"] / "mask.png"), cv2.IMREAD_UNCHANGED)
        c = classes.index(e["class"])
        x, y, w, h = e["bbox_at_peak"]
        predicted = ((evidence >> c) & 1).astype(bool)[y:y + h, x:x + w]
        mine = got[c, y:y + h, x:x + w]
        if body["decision"] == "confirm":
            assert predicted.any() and np.array_equal(mine, predicted)
        elif body["decision"] == "reject":
            assert predicted.any() and not mine.any()  # a negative example for this defect now
        else:
            new = classes.index(body["class"])
            assert not mine.any() and got[new, y:y + h, x:x + w][predicted].all()
    assert (out / "to_label.txt").read_text().split() == [f"d{posts[3]['defect_id']:08d}"]
    to_label = open_dataset(out / "to_label")
    assert len(to_label) == 1 and not to_label[0].masks.any()  # no invented masks
    assert json.loads((out / "review_export.json").read_text())["to_label"] == 1
