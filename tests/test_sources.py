"""Frame sources and the newest-frame capture thread, on real files and a real HTTP camera."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers_mjpeg import FlakyMjpegCamera
from helpers_onnx_model import strip_frame, write_strip_video
from inspect_edge.sources import (ImageFolderSource, LatestFrameCapture, SyntheticSource, VideoCaptureSource,
                                  open_source)


def wait_for(predicate, timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_strip_video(tmp_path_factory.mktemp("video") / "strip.avi", 40)


def test_open_source_reads_each_kind_of_spec(tmp_path, video):
    cam = open_source("0")
    assert isinstance(cam, VideoCaptureSource) and cam.kind == "camera" and cam.live
    assert open_source("camera:2").spec == "2"
    stream = open_source("rtsp://10.0.0.5/stream1")
    assert stream.kind == "stream" and stream.live
    assert isinstance(open_source("synthetic"), SyntheticSource)
    f = open_source(str(video), loop=True)
    assert f.kind == "file" and not f.live and f.loop
    cv2.imwrite(str(tmp_path / "a.png"), strip_frame(0))
    assert isinstance(open_source(str(tmp_path)), ImageFolderSource)
    assert isinstance(open_source(str(tmp_path / "*.png")), ImageFolderSource)


@pytest.mark.parametrize("spec, words", [
    ("missing.avi", "no such file"), ("camera:x", "index"), ("", "empty")])
def test_open_source_names_what_is_wrong(spec, words):
    with pytest.raises(ValueError, match=words):
        open_source(spec)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        open_source(str(tmp_path))


def test_capture_keeps_only_the_newest_frame_and_accounts_for_every_frame(video):
    # Read as fast as the file decodes while the consumer is slow: most frames must be
    # dropped as stale, the consumer must always get the newest one, nothing unaccounted.
    cap = LatestFrameCapture(open_source(str(video), realtime=False))
    cap.start()
    taken = []
    while True:
        frame = cap.take(timeout=0.5)
        if frame is None:
            if cap.counts().finished:
                break
            continue
        assert frame.image.dtype == np.uint8 and frame.image.shape == (96, 320)
        assert frame.capture_time == pytest.approx(time.time(), abs=5)
        taken.append(frame.seq)
        time.sleep(0.03)
    cap.stop()
    c = cap.counts()
    assert c.captured == 40 and c.finished and not c.up
    assert taken == sorted(taken) and taken[-1] == 40          # the last frame is never lost
    assert c.dropped["stale"] > 0
    assert c.captured == len(taken) + sum(c.dropped.values())


def test_video_file_plays_at_its_own_rate_when_realtime(tmp_path):
    path = write_strip_video(tmp_path / "slow.avi", 12, fps=20.0)
    src = open_source(str(path), realtime=True)
    src.open()
    t0 = time.monotonic()
    for _ in range(12):
        src.read()
    src.close()
    assert time.monotonic() - t0 >= 11 / 20 * 0.8


def test_looped_file_restarts_instead_of_ending(tmp_path):
    src = open_source(str(write_strip_video(tmp_path / "short.avi", 5)), loop=True, realtime=False)
    src.open()
    frames = [src.read() for _ in range(12)]
    src.close()
    assert np.array_equal(frames[0], frames[5]) and np.array_equal(frames[1], frames[11])


def test_unreadable_image_is_counted_and_skipped(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), strip_frame(i))
    (tmp_path / "f1b.png").write_bytes(b"not a png")
    cap = LatestFrameCapture(ImageFolderSource(str(tmp_path), fps=50))
    cap.start()
    got = []
    while True:
        f = cap.take(timeout=0.5)
        if f is not None:
            got.append(f.seq)
        elif cap.counts().finished:
            break
    cap.stop()
    c = cap.counts()
    assert c.captured == 4 and c.dropped["unreadable"] == 1
    assert "f1b.png" in c.last_error
    assert len(got) + c.dropped["stale"] == 3


def test_lost_stream_is_reconnected_with_backoff():
    with FlakyMjpegCamera(fps=30) as camera:
        cap = LatestFrameCapture(open_source(camera.url, read_timeout_s=2.0),
                                 backoff_initial_s=0.2, backoff_max_s=1.0)
        cap.start()
        try:
            assert wait_for(lambda: cap.counts().captured >= 5, 10), cap.counts()
            assert cap.counts().up
            camera.drop(outage_s=1.0)
            assert wait_for(lambda: not cap.counts().up, 5), "the loss was not noticed"
            before = cap.counts().captured
            assert wait_for(lambda: cap.counts().reconnects >= 1 and cap.counts().up, 10), cap.counts()
            assert wait_for(lambda: cap.counts().captured >= before + 5, 5)
            c = cap.counts()
            assert c.failed_opens >= 1          # it kept trying while the camera answered 503
            assert camera.connections >= 2
        finally:
            cap.stop()
        assert not cap.running


def test_synthetic_source_delivers_the_moving_strip():
    pytest.importorskip("inspect_edge.data.synthetic", reason="the synthetic strip generator is not in this tree yet")
    src = SyntheticSource(fps=None, frame_height=128, frame_width=512)
    src.open()
    a, b = src.read(), src.read()
    assert a.shape == (128, 512) and a.dtype == np.uint8
    assert not np.array_equal(a, b)  # the strip moves
