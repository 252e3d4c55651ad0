"""The live page in a real headless Chromium, driven over the DevTools protocol.

Checks that the camera view shows decoded frames, that the counters update,
that recent defects appear with thumbnails, and keeps a screenshot in
test-output/live_page.png (repository root, git-ignored).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from helpers_net import free_port, wait_until
from helpers_onnx_model import build_dark_spot_model, write_strip_video

from inspect_edge.config import ServiceConfig
from inspect_edge.server.app import InspectionServer, create_app

pytestmark = pytest.mark.timeout(120)
CHROMIUM = shutil.which("chromium")
OUTPUT = Path(__file__).resolve().parents[1] / "test-output"


class DevTools:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r["result"].get("value")


def _serve(cfg: ServiceConfig, run_dir: Path):
    """The app under uvicorn on 127.0.0.1 until the test ends; yields its base URL once ready."""
    port = free_port()
    server = InspectionServer(create_app(cfg, run_dir=run_dir), "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/readyz").status_code == 200, 40, "service ready")
    yield base
    server.request_stop()
    thread.join(8)
    assert not thread.is_alive()


@pytest.fixture
def served(tmp_path):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    video = write_strip_video(tmp_path / "strip.avi", 60, height=160, width=640, fps=20)
    cfg = ServiceConfig.model_validate({"source": {"spec": str(video), "loop": True},
                                        "model": {"path": str(model), "threads": 1},
                                        "server": {"recent_interval_s": 0.3}})
    yield from _serve(cfg, tmp_path / "run")


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; tests/run.sh installs it as root)")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         "--window-size=1600,1000", "--hide-scrollbars", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 30, "DevTools port")
        port = int(port_file.read_text().split()[0])
        pages = wait_until(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                                    if t["type"] == "page"], 15, "a page target")
        from websockets.sync.client import connect

        with connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


READ_PAGE = """({
  processed: document.getElementById('frames-processed').textContent,
  fps: document.getElementById('fps-processed').textContent,
  latency: document.getElementById('latency-p50').textContent,
  status: document.getElementById('status').textContent,
  videoWidth: document.getElementById('stream').naturalWidth,
  legend: document.getElementById('legend').textContent,
  recentThumbs: [...document.querySelectorAll('#recent img')].filter(i => i.complete && i.naturalWidth > 0).length,
  bars: document.querySelectorAll('#class-bars .bar').length,
})"""


def test_live_page_shows_video_and_updating_counters(served, browser):
    browser.call("Page.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", url=served + "/")

    def counters_shown():
        v = browser.eval(READ_PAGE)
        return v if v and v["processed"] not in ("–", "") and v["videoWidth"] > 0 else None

    first = wait_until(counters_shown, 20, "counters and video on the page")
    time.sleep(2.5)
    second = browser.eval(READ_PAGE)
    as_int = lambda s: int(s.replace(",", ""))  # noqa: E731
    assert as_int(second["processed"]) > as_int(first["processed"]), (first, second)
    assert second["videoWidth"] == 640           # the MJPEG frames decode at the source's size
    assert float(second["fps"]) > 1 and second["latency"] != "–"
    assert second["status"] == "LIVE"
    assert "dark" in second["legend"] and "very_dark" in second["legend"]
    assert second["bars"] == 2
    wait_until(lambda: browser.eval(READ_PAGE)["recentThumbs"] >= 1, 10, "recent defects with thumbnails")

    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "live_page.png").write_bytes(shot)
    img = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == (1000, 1600)
    # The picture is not blank: the camera view holds the bright strip and orange "dark" boxes.
    video_box = browser.eval("(() => { const r = document.getElementById('stream').getBoundingClientRect();"
                             " return [r.x, r.y, r.width, r.height].map(Math.round); })()")
    x, y, w, h = video_box
    view = img[y + 4:y + h - 4, x + 4:x + w - 4].astype(int)
    assert view.size and view.mean() > 80
    b, g, r = view[..., 0], view[..., 1], view[..., 2]
    orange = (r > 180) & (g > 110) & (g < 200) & (b < 70)
    assert orange.sum() > 20


@pytest.fixture
def served_cameras(tmp_path):
    model = tmp_path / "dark.onnx"
    build_dark_spot_model(model)
    cams = [{"name": f"cam{k}", "spec": str(write_strip_video(tmp_path / f"s{k}.avi", 40, height=160, width=640, fps=8)),
             "loop": True} for k in range(3)]
    cams.append({"name": "dead", "spec": "http://127.0.0.1:9/none.mjpg", "reconnect_initial_s": 0.5,
                 "open_timeout_s": 1})  # nothing listens on the discard port: this camera never delivers
    cfg = ServiceConfig.model_validate({"cameras": cams, "model": {"path": str(model), "threads": 1}})
    yield from _serve(cfg, tmp_path / "run")


READ_GRID = """({
  tiles: [...document.querySelectorAll('#cameras .cam')].map(t => ({
    name: t.dataset.camera, loaded: t.querySelector('img').naturalWidth, down: t.classList.contains('down'),
    selected: t.classList.contains('sel'), why: t.querySelector('.cam-why').textContent})),
  hidden: document.getElementById('cameras').hidden,
  name: document.getElementById('camera-name').textContent,
  stream: document.getElementById('stream').src,
  status: document.getElementById('status').textContent,
})"""


def test_live_page_shows_every_camera_and_a_click_selects_one(served_cameras, browser):
    browser.call("Page.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", url=served_cameras + "/")

    def grid_shown():
        v = browser.eval(READ_GRID)
        live = [t for t in (v or {}).get("tiles", []) if not t["down"]]
        return v if v and len(v["tiles"]) == 4 and len(live) == 3 and all(t["loaded"] for t in live) else None

    v = wait_until(grid_shown, 20, "four camera tiles, three with pictures")
    assert not v["hidden"] and [t["name"] for t in v["tiles"]] == ["cam0", "cam1", "cam2", "dead"]
    dead = v["tiles"][3]
    assert dead["down"] and "down" in dead["why"]
    assert v["tiles"][0]["selected"] and v["name"] == "cam0" and "camera=cam0" in v["stream"]
    assert v["status"].startswith("LIVE") and "1 DOWN" in v["status"]
    browser.eval("document.querySelector('#cameras .cam[data-camera=\"cam2\"]').click()")
    v = wait_until(lambda: (x := browser.eval(READ_GRID)) and x["name"] == "cam2" and x or None, 5, "cam2 selected")
    assert "camera=cam2" in v["stream"] and [t["name"] for t in v["tiles"] if t["selected"]] == ["cam2"]
    wait_until(lambda: browser.eval("document.getElementById('stream').naturalWidth") == 640, 10, "cam2's stream")
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "live_page_cameras.png").write_bytes(shot)
