"""What the live page shows: each camera's newest annotated frame, rolling numbers, recent defects.

A sink of the pipeline. A camera's annotated JPEG is rendered on demand and
cached by frame number, so each frame is encoded at most once however many
viewers watch (and not at all when nobody watches that camera).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from inspect_edge.events import iso
from inspect_edge.overlay import class_color_rgb, encode_jpeg, render_overlay, render_preview
from inspect_edge.pipeline import STAGES, FrameResult


@dataclass
class RecentDefect:
    id: int
    info: dict
    crop: np.ndarray       # uint8 gray around the defect
    crop_mask: np.ndarray  # bool, same shape: this defect's class mask in the crop
    class_index: int


class LiveView:
    def __init__(self, jpeg_quality: int = 80, recent_window_s: float = 300.0,
                 recent_interval_s: float = 1.0, keep_recent: int = 100, preview_max_width: int | None = None) -> None:
        self.jpeg_quality = jpeg_quality
        self.preview_max_width = preview_max_width
        self.recent_window_s = recent_window_s
        self.recent_interval_s = recent_interval_s
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._latest: FrameResult | None = None             # of any camera
        self._by_camera: dict[str, FrameResult] = {}
        self._jpeg: dict[tuple[str, bool], tuple[int, bytes]] = {}  # (camera, preview) -> (seq, JPEG)
        self.encodes = 0                                    # how many frames were JPEG-encoded
        self._latency = deque(maxlen=300)
        self._camera_latency: dict[str, deque] = {}
        self._stages = {s: deque(maxlen=300) for s in STAGES}
        self._window: deque[tuple[float, str, str]] = deque()   # (monotonic, class, camera) within the window
        self._recent: deque[RecentDefect] = deque(maxlen=keep_recent)
        self._last_recent: dict[str, float] = {}
        self._next_id = 1

    # ---- pipeline sink -----------------------------------------------------
    def __call__(self, result: FrameResult) -> None:
        now = time.monotonic()
        with self._lock:
            self._latest = result
            self._by_camera[result.camera] = result
            self._latency.append(result.latency_s)
            self._camera_latency.setdefault(result.camera, deque(maxlen=300)).append(result.latency_s)
            for s in STAGES:
                self._stages[s].append(result.stage_s[s])
            # The strip moves, so one defect is seen in many frames: the counts and the
            # list take each physical defect once, when it first comes into view.
            new = {t.id for t in result.started}
            for d, track_id in zip(result.defects, result.track_ids):
                if track_id not in new:
                    continue
                self._window.append((now, d.class_name, result.camera))
                # A burst of one class (a band of pits) still gets one list entry per interval.
                if now - self._last_recent.get(d.class_name, -1e18) >= self.recent_interval_s:
                    self._last_recent[d.class_name] = now
                    self._recent.append(self._make_recent(result, d, track_id))
            while self._window and now - self._window[0][0] > self.recent_window_s:
                self._window.popleft()

    def _make_recent(self, result: FrameResult, d, track_id: int) -> RecentDefect:
        x, y, w, h = d.bbox
        m = 16
        H, W = result.image.shape
        x0, y0, x1, y1 = max(0, x - m), max(0, y - m), min(W, x + w + m), min(H, y + h + m)
        info = d.to_dict()
        info.update(id=self._next_id, defect_id=track_id, camera=result.camera, seq=result.seq, iso_time=iso(d.frame_time),
                    thumbnail=f"/api/defects/{self._next_id}/thumb.jpg")
        rd = RecentDefect(self._next_id, info, result.image[y0:y1, x0:x1].copy(),
                          result.masks[d.class_index, y0:y1, x0:x1].copy(), d.class_index)
        self._next_id += 1
        return rd

    # ---- readers (HTTP handlers) -------------------------------------------
    @property
    def latest(self) -> FrameResult | None:
        """The newest processed frame of any camera."""
        return self._latest

    def latest_of(self, camera: str) -> FrameResult | None:
        return self._by_camera.get(camera)

    def latest_jpeg(self, camera: str, preview: bool = False) -> tuple[int, bytes] | None:
        """(frame seq, JPEG of the camera's newest annotated frame), encoded once per frame; the
        preview (the live stream) at most `preview_max_width` wide, the snapshot at full size."""
        result = self._by_camera.get(camera)
        if result is None:
            return None
        with self._encode_lock:
            cached = self._jpeg.get((camera, preview))
            if cached is None or cached[0] != result.seq:
                if preview:
                    img = render_preview(result.image, result.masks, result.defects, self.preview_max_width)
                else:
                    img = render_overlay(result.image, result.masks, result.defects)
                cached = self._jpeg[(camera, preview)] = (result.seq, encode_jpeg(img, self.jpeg_quality))
                self.encodes += 1
            return cached

    def recent(self, limit: int, camera: str | None = None) -> list[dict]:
        with self._lock:
            items = [r for r in self._recent if camera is None or r.info["camera"] == camera]
        return [r.info for r in reversed(items[-limit:] if limit > 0 else [])]

    def thumbnail(self, defect_id: int) -> bytes | None:
        with self._lock:
            found = next((r for r in self._recent if r.id == defect_id), None)
        if found is None:
            return None
        img = cv2.cvtColor(found.crop, cv2.COLOR_GRAY2BGR)
        r, g, b = class_color_rgb(found.class_index)
        tint = np.array((b, g, r), np.float32)
        img[found.crop_mask] = (img[found.crop_mask] * 0.55 + tint * 0.45).astype(np.uint8)
        scale = 160 / max(img.shape[:2])
        if scale > 1.0:  # small defects get enlarged so the thumbnail is readable
            img = cv2.resize(img, None, fx=min(scale, 4.0), fy=min(scale, 4.0), interpolation=cv2.INTER_NEAREST)
        return encode_jpeg(img, 85)

    def window_counts(self, camera: str | None = None) -> dict[str, int]:
        now = time.monotonic()
        counts: dict[str, int] = {}
        with self._lock:
            for t, name, cam in self._window:
                if now - t <= self.recent_window_s and (camera is None or cam == camera):
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def latency_summary(self, camera: str) -> dict:
        """One camera's capture-to-result times (frame age when its defects are known), in ms."""
        with self._lock:
            lat = np.array(self._camera_latency.get(camera, ()), np.float64) * 1000
        if lat.size == 0:
            return {"last": None, "p50": None, "p99": None}
        return {"last": round(float(lat[-1]), 1), "p50": round(float(np.percentile(lat, 50)), 1),
                "p99": round(float(np.percentile(lat, 99)), 1)}

    def timing_summary(self) -> dict:
        with self._lock:
            lat = np.array(self._latency, np.float64)
            stages = {s: float(np.mean(v)) * 1000 if v else None for s, v in self._stages.items()}
        if lat.size == 0:
            return {"latency_ms": {"last": None, "p50": None, "p95": None}, "stage_ms": stages}
        return {"latency_ms": {"last": float(lat[-1]) * 1000, "p50": float(np.percentile(lat, 50)) * 1000,
                               "p95": float(np.percentile(lat, 95)) * 1000},
                "stage_ms": stages}
