"""Frame sources: cameras, streams, video files, image folders, the synthetic strip.

`open_source(spec)` reads one string, as typed after `--source`:
- an integer (`0`) or `camera:0`: a USB/V4L2 camera;
- `rtsp://`, `rtsps://`, `http://`, `https://`: a network stream;
- `synthetic` (or `synthetic:SEED`, another strip per seed): the project's moving-strip generator, live;
- a directory or a glob with `*`/`?`: still images in name order;
- any other path: a video file (it must exist).
"""

from __future__ import annotations

from pathlib import Path

from inspect_edge.sources.base import Frame, Source, SourceEnded, SourceError
from inspect_edge.sources.capture import DROP_REASONS, CaptureCounts, LatestFrameCapture
from inspect_edge.sources.images import ImageFolderSource, list_images
from inspect_edge.sources.synthetic import SyntheticSource
from inspect_edge.sources.video import VideoCaptureSource

__all__ = [
    "DROP_REASONS", "CaptureCounts", "Frame", "ImageFolderSource", "LatestFrameCapture", "Source",
    "SourceEnded", "SourceError", "SyntheticSource", "VideoCaptureSource", "open_source",
]

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


def open_source(spec: str, *, loop: bool = False, realtime: bool = True, fps: float | None = None,
                open_timeout_s: float = 5.0, read_timeout_s: float = 5.0) -> Source:
    """Build (not yet open) the source `spec` names; ValueError says what is wrong with it.

    `fps` paces folders and the synthetic strip (default 10); video files play at
    their own rate when `realtime`, as fast as they decode otherwise.
    """
    spec = str(spec).strip()
    if not spec:
        raise ValueError("source: empty; give a camera index, a stream URL, a file, a folder or 'synthetic'")
    timeouts = {"open_timeout_s": open_timeout_s, "read_timeout_s": read_timeout_s}
    if spec.isdigit() or spec.startswith("camera:"):
        index = spec.removeprefix("camera:")
        if not index.isdigit():
            raise ValueError(f"source {spec!r}: a camera is named by its index, e.g. 0 or camera:0")
        return VideoCaptureSource(index, "camera", **timeouts)
    if spec.lower().startswith(STREAM_SCHEMES):
        return VideoCaptureSource(spec, "stream", **timeouts)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed = spec.removeprefix("synthetic").removeprefix(":") or "0"
        if not seed.isdigit():
            raise ValueError(f"source {spec!r}: the synthetic strip takes a seed, e.g. synthetic:2 (each seed is another strip)")
        return SyntheticSource(spec, fps=fps or 10.0, seed=int(seed))
    path = Path(spec).expanduser()
    if path.is_dir() or any(ch in spec for ch in "*?["):
        if not list_images(str(path)):
            raise ValueError(f"source {spec}: no image files found")
        return ImageFolderSource(str(path), loop=loop, fps=fps if fps is not None else 10.0)
    if not path.exists():
        raise ValueError(f"source {spec}: no such file, folder or camera "
                         "(use 0 for the first camera, a URL, a video, a folder, or 'synthetic')")
    if not path.is_file():
        raise ValueError(f"source {spec}: not a regular file")
    return VideoCaptureSource(str(path), "file", loop=loop, realtime=realtime, **timeouts)
