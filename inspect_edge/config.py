"""The service's one typed config. A YAML file (`inspect_edge.config_file`) and CLI flags map
onto it; each run writes it, resolved, to its run folder.

Unknown fields are refused (extra="forbid"), so a typo in a config file fails
at start-up with the field's name instead of being silently ignored.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model.onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SourceConfig(_Strict):
    spec: str = Field("synthetic", description="camera index, stream URL, video, folder/glob, or 'synthetic'")
    loop: bool = Field(False, description="restart files and folders at their end")
    realtime: bool = Field(True, description="play video files at their own frame rate, as a camera would")
    fps: float | None = Field(None, gt=0, description="rate for folders and the synthetic strip (default 10)")
    open_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0)
    reconnect_initial_s: float = Field(0.5, gt=0, description="first wait before reopening a lost source")
    reconnect_max_s: float = Field(10.0, gt=0, description="the wait doubles up to this")


CAMERA_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"  # used in metric labels, URLs and evidence folder names
DEFAULT_CAMERA = "main"  # the camera of a one-source config (`source:` or `--camera`)


class CameraConfig(SourceConfig):
    """One camera of a line: its own source, frame rate, reconnect settings and region of interest."""

    name: str = Field(..., pattern=CAMERA_NAME, description="unique; the `camera` label of every per-camera metric")
    roi: tuple[int, int, int, int] | None = Field(None, description="x, y, width, height in the camera's frame: only this region is inspected")

    @model_validator(mode="after")
    def _roi_has_area(self) -> CameraConfig:
        if self.roi is not None and (min(self.roi[:2]) < 0 or min(self.roi[2:]) < 1):
            raise ValueError(f"roi {list(self.roi)}: x and y must be >= 0, width and height >= 1")
        return self


class ModelConfig(_Strict):
    path: Path | None = Field(None, description="model file; None means the built-in model")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU inference threads (None: the runtime decides)")
    fit: Literal["tile", "resize"] = "tile"
    tile_overlap: int = Field(32, ge=0)
    gpu: int | None = Field(None, ge=0, description="CUDA device index for TensorRT (None: $INSPECT_EDGE_GPU, else 0)")
    shadow_every: int = Field(5, ge=1, description="a candidate model (POST /api/model) also runs on every Nth frame, compared with production")
    auto_promote_after: int | None = Field(None, ge=1, description="promote a candidate by itself after this many shadowed frames, if the limits below hold (None: only by POST /api/model/promote)")
    auto_promote_min_dice: float = Field(0.9, ge=0, le=1, description="every class's shadow mask Dice vs production must be at least this")
    auto_promote_min_val_dice: float | None = Field(None, ge=0, le=1, description="and the candidate's own validation competition Dice (metrics.json of its training run) at least this")

    def resolved_path(self) -> Path:
        return self.path if self.path is not None else DEFAULT_MODEL


class EventsConfig(_Strict):
    evidence: bool = True
    evidence_min_interval_s: float = Field(2.0, ge=0, description="at most one evidence set per interval")
    evidence_quota_mb: float = Field(500.0, gt=0, description="oldest evidence is removed beyond this")
    webhook_url: str | None = None
    webhook_cooldown_s: float = Field(30.0, ge=0)
    webhook_timeout_s: float = Field(3.0, gt=0)
    queue_size: int = Field(16, ge=1)


class TrackingConfig(_Strict):
    """How one physical defect becomes one count and one event (inspect_edge.tracking)."""

    axis: Literal["x", "y"] = Field("x", description="the rolling direction in the image: x for a 256x1600 strip camera")
    merge_gap_px: int = Field(16, ge=-1, description="fragments of one class closer than this along the axis are one defect (-1: never merge)")
    max_missed: int = Field(5, ge=0, description="frames a defect may go unseen (a flickering detection) before its track closes; a track also closes once the strip has carried it out of view")
    speed_px_per_frame: float | None = Field(None, description="the strip's shift between frames along the axis, signed; None: learnt from the tracks")
    max_shift_px: int = Field(200, ge=1, description="the largest move between frames accepted while the speed is still unknown")
    mm_per_px: float | None = Field(None, gt=0, description="strip millimetres per pixel along the axis: events then carry length_mm")
    strip_speed_m_s: float | None = Field(None, gt=0, description="line speed: metres inspected are counted, and defects per metre reported")

    @property
    def axis_index(self) -> int:
        return 0 if self.axis == "x" else 1


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    stream_fps: float = Field(15.0, gt=0, description="frame rate cap of /stream.mjpg per viewer")
    jpeg_quality: int = Field(80, ge=10, le=100)
    preview_max_width: int | None = Field(800, ge=64, description="the live stream is scaled down to this width before it is drawn and encoded (None: full size; /snapshot.jpg and evidence stay full size)")
    recent_window_s: float = Field(300.0, gt=0, description="'defects in the last minutes' window")
    recent_interval_s: float = Field(1.0, ge=0, description="at most one recent-defect entry per class per interval")
    auth_token: SecretStr | None = Field(None, description="bearer token required on every endpoint but /healthz and /readyz (written to config.json masked)")
    metrics_open: bool = Field(True, description="with a token: /metrics stays open for Prometheus (False: it needs the token too)")
    max_viewers: int = Field(8, ge=1, description="concurrent /stream.mjpg viewers; more get 503")
    ready_stale_s: float = Field(3.0, gt=0, description="/readyz fails when no frame arrived for this long")
    unhealthy_exit_s: float | None = Field(30.0, gt=0, description="exit with status 3 once /healthz has been 503 this long, so systemd or Docker restarts the service (None: never; Kubernetes' liveness probe acts on /healthz itself)")
    ready_recover_s: float = Field(2.0, ge=0, description="/readyz passes again only after frames flowed (no gap over ready_stale_s) this long, so a stuttering source does not flap a readiness probe")


class ServiceConfig(_Strict):
    source: SourceConfig = Field(SourceConfig(), description="the one camera of a one-camera service (use `cameras` for several)")
    cameras: list[CameraConfig] = Field([], description="several cameras served by one model; replaces `source`")
    model: ModelConfig = ModelConfig()
    events: EventsConfig = EventsConfig()
    tracking: TrackingConfig = TrackingConfig()
    server: ServerConfig = ServerConfig()
    out: Path | None = Field(None, description="run folder; default runs/service/<UTC timestamp>")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _one_way_to_name_sources(self) -> ServiceConfig:
        if self.cameras:
            if self.source != SourceConfig():
                raise ValueError("give either `source` (one camera) or `cameras` (several), not both")
            names = [c.name for c in self.cameras]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"camera names must be unique; repeated: {', '.join(twice)}")
        return self

    def camera_list(self) -> list[CameraConfig]:
        """The cameras to serve: `cameras`, or the one `source` named 'main'."""
        return list(self.cameras) or [CameraConfig(name=DEFAULT_CAMERA, **self.source.model_dump())]

    def run_dir(self) -> Path:
        if self.out is not None:
            return self.out
        return Path("runs") / "service" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def write(self, run_dir: Path) -> Path:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "config.json"
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path
