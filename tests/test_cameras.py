"""Many cameras in one service: one model serves them all fairly, each camera is counted,
labelled and reported on its own, and a camera that dies costs only itself."""

from __future__ import annotations

import json
import time

import pytest
from helpers_mjpeg import FlakyMjpegCamera
from helpers_net import wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video
from helpers_service import metrics, serving

from inspect_edge.backends import open_backend
from inspect_edge.config import ServiceConfig
from inspect_edge.pipeline import CameraFeed, InspectionPipeline
from inspect_edge.sources.capture import LatestFrameCapture
from inspect_edge.sources.images import ImageFolderSource

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "dark.onnx"
    build_dark_spot_model(path)
    return path


def test_three_cameras_keep_running_while_a_fourth_dies_and_comes_back(tmp_path, model):
    videos = [write_strip_video(tmp_path / f"v{k}.avi", 40, height=96, width=320, fps=10) for k in range(3)]
    flaky = FlakyMjpegCamera(fps=10).start()
    cams = [{"name": f"cam{k}", "spec": str(v), "loop": True} for k, v in enumerate(videos)]
    cams.append({"name": "flaky", "spec": flaky.url, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5})
    try:
        with serving(tmp_path, None, model, cameras=cams, server={"ready_recover_s": 0.5}) as (service, client):
            names = ["cam0", "cam1", "cam2", "flaky"]

            def processed() -> dict[str, int]:
                return {c["name"]: c["frames"]["processed"] for c in client.get("/api/stats").json()["cameras"]}

            wait_until(lambda: min(processed().values()) >= 5, 30, "every camera processed")
            wait_until(lambda: client.get("/readyz").status_code == 200, 10, "ready")
            flaky.drop(outage_s=3.0)
            wait_until(lambda: not next(c for c in client.get("/api/stats").json()["cameras"] if c["name"] == "flaky")["delivering"],
                       10, "the flaky camera reported down")
            during = processed()
            m = metrics(client)
            assert m[("inspect_edge_camera_up", (("camera", "flaky"),))] == 0
            assert all(m[("inspect_edge_camera_up", (("camera", n),))] == 1 for n in names[:3])
            r = client.get("/readyz")  # one camera down does not make the line unready
            assert r.status_code == 200 and "flaky" in r.json()["reason"] and "1 of 4" in r.json()["reason"], r.json()
            assert not r.json()["cameras"]["flaky"]["delivering"] and r.json()["cameras"]["cam0"]["delivering"]
            time.sleep(1.0)
            later = processed()
            assert all(later[n] > during[n] for n in names[:3]), (during, later)  # the others keep being processed

            wait_until(lambda: metrics(client)[("inspect_edge_camera_reconnects_total", (("camera", "flaky"),))] >= 1, 20,
                       "the flaky camera reconnecting")
            wait_until(lambda: processed()["flaky"] > later["flaky"], 10, "frames from the reconnected camera")
            stats = client.get("/api/stats").json()
            assert [c["name"] for c in stats["cameras"]] == names
            assert stats["frames"]["processed"] == sum(c["frames"]["processed"] for c in stats["cameras"])
            # Every per-camera series is labelled; the model's is not.
            m = metrics(client)
            for n in names:
                assert m[("inspect_edge_frames_processed_total", (("camera", n),))] > 0
                assert ("inspect_edge_capture_to_result_seconds_count", (("camera", n),)) in m
            # Each camera's own view; an unknown camera is a 404 that lists the real ones.
            for n in names:
                snap = client.get("/snapshot.jpg", params={"camera": n})
                assert snap.status_code == 200 and snap.content[:2] == b"\xff\xd8"
            bad = client.get("/snapshot.jpg", params={"camera": "nope"})
            assert bad.status_code == 404 and "cam0" in bad.json()["detail"]
            health = client.get("/healthz").json()
            assert {"capture:cam0", "capture:flaky", "inference"} <= set(health["threads"])
        # Events name their camera; defect ids are unique across cameras.
        events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
        assert events and {e["camera"] for e in events} <= set(names) and len({e["camera"] for e in events}) >= 2
        assert len({e["defect_id"] for e in events}) == len(events)
        assert all(e["evidence"] is None or e["evidence"].endswith("-" + e["camera"]) for e in events)
    finally:
        flaky.stop()


def test_a_fast_camera_does_not_starve_a_slow_one(tmp_path, model):
    from helpers_onnx_model import strip_frame
    import cv2

    folders = []
    for name in ("fast", "slow"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(30):
            cv2.imwrite(str(folder / f"{i:03d}.png"), strip_frame(i))
        folders.append(folder)
    fast = LatestFrameCapture(ImageFolderSource(str(folders[0]), loop=True, fps=None), name="capture:fast")
    slow = LatestFrameCapture(ImageFolderSource(str(folders[1]), loop=True, fps=4), name="capture:slow")
    seen: list[str] = []
    pipe = InspectionPipeline([CameraFeed("fast", fast), CameraFeed("slow", slow)],
                              lambda: open_backend(model, "onnxruntime", 1), sinks=[lambda r: seen.append(r.camera)])
    pipe.start()
    assert pipe.ready.wait(30)
    fast.start()
    slow.start()
    time.sleep(2.5)
    slow.stop()
    fast.stop()
    pipe.stop()
    s_cap, f_cap = slow.counts(), fast.counts()
    assert f_cap.dropped["stale"] > 0                      # the fast camera outruns the model ...
    assert pipe.counts("slow").processed >= s_cap.captured - 1 >= 8  # ... yet every slow frame is served
    assert seen.count("slow") == pipe.counts("slow").processed and seen.count("fast") == pipe.counts("fast").processed
    assert pipe.counts().processed == pipe.counts("fast").processed + pipe.counts("slow").processed


def test_camera_config_errors_name_their_key():
    from inspect_edge.config_file import ConfigFileError, build_config

    with pytest.raises(ConfigFileError) as e:
        build_config(None, {"cameras": [{"name": "top", "spec": "synthetic", "roi": [0, 0, 0, 10]},
                                        {"name": "bad name!", "spec": "synthetic:1"}]}, environ={})
    text = str(e.value)
    assert "cameras.0" in text and "roi" in text and "cameras.1.name" in text
    with pytest.raises(ConfigFileError, match="repeated: top"):
        build_config(None, {"cameras": [{"name": "top"}, {"name": "top"}]}, environ={})
    with pytest.raises(ConfigFileError, match="not both"):
        build_config(None, {"source": {"spec": "0"}, "cameras": [{"name": "top"}]}, environ={})
    cfg = ServiceConfig.model_validate({"cameras": [{"name": "top", "spec": "synthetic:3", "fps": 2}]})
    assert [c.name for c in cfg.camera_list()] == ["top"] and ServiceConfig().camera_list()[0].name == "main"


def test_roi_keeps_only_the_region(tmp_path):
    import cv2
    import numpy as np

    img = np.zeros((100, 200), np.uint8)
    img[10:40, 50:150] = 200
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cap = LatestFrameCapture(ImageFolderSource(str(tmp_path), fps=None), roi=(50, 10, 100, 30))
    cap.start()
    frame = wait_until(lambda: cap.take(timeout=0.2), 5, "a frame")
    cap.stop()
    assert frame.image.shape == (30, 100) and frame.image.min() == 200
