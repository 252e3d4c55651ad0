"""`inspect-edge`: the edge runtime's command line."""

from __future__ import annotations

from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn, Optional

import typer

from inspect_edge import __version__

app = typer.Typer(
    help=(
        "inspect-edge: find surface defects on a moving steel strip in real time.\n\n"
        "Start with `inspect-edge run` (no camera needed: it serves a synthetic strip "
        "through the built-in model on http://127.0.0.1:8000)."
    ),
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the inspect-edge version."""
    typer.echo(__version__)


class _Backend(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


class _Fit(str, Enum):
    tile = "tile"
    resize = "resize"


@app.command()
def run(
    source: str = typer.Option("synthetic", "--source", "-s",
                               help="Video file, rtsp/http URL, image folder or glob, or 'synthetic'."),
    camera: Optional[int] = typer.Option(None, "--camera", help="USB/V4L2 camera index (overrides --source)."),
    loop: bool = typer.Option(False, "--loop", help="Restart video files and image folders at their end."),
    realtime: bool = typer.Option(True, "--realtime/--as-fast-as-possible",
                                  help="Play files at their own frame rate, as a camera would."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of folders and the synthetic strip."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="Model file (.onnx or TensorRT .engine); default: the built-in model."),
    backend: _Backend = typer.Option(_Backend.auto, "--backend", help="Inference backend; auto picks by file type."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU inference threads."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="CUDA device index for TensorRT (default $INSPECT_EDGE_GPU or 0)."),
    fit: _Fit = typer.Option(_Fit.tile, "--fit", help="tile: native resolution, tiled; resize: squeeze to the model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 exposes the service."),
    port: int = typer.Option(8000, "--port", "-p"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/service/<UTC timestamp>)."),
    evidence_interval: float = typer.Option(2.0, "--evidence-interval", help="Seconds between evidence sets."),
    evidence_quota_mb: float = typer.Option(500.0, "--evidence-quota-mb", help="Disk quota for evidence."),
    no_evidence: bool = typer.Option(False, "--no-evidence", help="Log events without saving images."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="URL to POST defect events to."),
    webhook_cooldown: float = typer.Option(30.0, "--webhook-cooldown", help="Seconds between webhook calls."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    auth_token: Optional[str] = typer.Option(None, "--auth-token", envvar="INSPECT_EDGE_AUTH_TOKEN", show_envvar=True,
                                             help="Require this bearer token on every endpoint but /healthz and /readyz."),
    metrics_open: bool = typer.Option(True, "--metrics-open/--metrics-need-token",
                                      help="With a token: leave /metrics open for Prometheus, or ask it for the token too."),
    max_viewers: int = typer.Option(8, "--max-viewers", help="Concurrent /stream.mjpg viewers; more get 503."),
    line_speed: Optional[float] = typer.Option(None, "--line-speed", help="Strip speed in m/s: defects per metre are reported."),
    mm_per_px: Optional[float] = typer.Option(None, "--mm-per-px", help="Strip millimetres per pixel along the strip: events carry length_mm."),
    merge_gap: int = typer.Option(16, "--merge-gap", help="Pixels along the strip within which fragments of one class are one defect (-1: off)."),
) -> None:
    """Serve live inspection: camera -> model -> live page, /metrics, defect events."""
    import logging
    import signal

    from pydantic import ValidationError

    from inspect_edge.config import (EventsConfig, ModelConfig, ServerConfig, ServiceConfig,
                                     SourceConfig, TrackingConfig)

    if log_level.lower() not in LOG_LEVELS:
        _fail(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = ServiceConfig(
            source=SourceConfig(spec=str(camera) if camera is not None else source, loop=loop,
                                realtime=realtime, fps=fps),
            model=ModelConfig(path=model, backend=backend.value, threads=threads, fit=fit.value, gpu=gpu),
            events=EventsConfig(evidence=not no_evidence, evidence_min_interval_s=evidence_interval,
                                evidence_quota_mb=evidence_quota_mb, webhook_url=webhook,
                                webhook_cooldown_s=webhook_cooldown),
            tracking=TrackingConfig(strip_speed_m_s=line_speed, mm_per_px=mm_per_px, merge_gap_px=merge_gap),
            server=ServerConfig(host=host, port=port, auth_token=auth_token or None, metrics_open=metrics_open,
                                max_viewers=max_viewers),
            out=out,
        )
    except ValidationError as e:
        first = e.errors()[0]
        _fail(f"invalid option {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    model_path = cfg.model.resolved_path()
    if not model_path.is_file():
        if model is None:
            _fail(f"no built-in model at {model_path}; pass --model PATH.onnx, or train and export one "
                  "(`train fit ...` then `inspect-edge export onnx ...`) and copy it there")
        _fail(f"{model_path}: no such model file")
    cfg = cfg.model_copy(update={"out": cfg.run_dir()})  # one timestamp for the whole run
    if cfg.model.gpu is not None:
        import os  # the TensorRT backend reads the device index from here (tensorrt_build.gpu_index)

        os.environ["INSPECT_EDGE_GPU"] = str(cfg.model.gpu)

    from inspect_edge.server.app import InspectionServer, create_app

    busy = _port_taken(host, port)  # before the model loads: a taken port is the whole answer
    if busy:
        _fail(f"cannot listen on {host}:{port}: {busy} (another inspect-edge, or pick --port)")
    try:
        app_ = create_app(cfg)
    except ValueError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write the run folder {cfg.out}: {e.strerror or e} (pass --out on a writable disk)")
    if not _is_loopback(host) and not auth_token:
        logging.getLogger("inspect_edge").warning(
            "listening on %s: live video, snapshots and stats are open to anyone who can reach this port; "
            "put it behind a reverse proxy with TLS and authentication (deploy/README.md)", host)
    typer.echo(f"inspect-edge: serving {cfg.source.spec} on http://{host}:{port}  (run folder {cfg.out})")
    server = InspectionServer(app_, host, port)
    # uvicorn re-raises the stop signal after its clean shutdown; with this handler
    # installed first, SIGTERM then ends the process with status 0 like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        _fail(f"could not serve on {host}:{port} (see the log above)")
    if server.exited_unhealthy:
        typer.echo("inspect-edge: stopped because a worker thread failed for good (see the log above)", err=True)
        raise typer.Exit(3)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _port_taken(host: str, port: int) -> str:
    """Why `host:port` cannot be bound now, or '' when it can (bound the way uvicorn binds)."""
    import socket

    if port == 0:
        return ""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return ""


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> NoReturn:
    typer.echo(f"inspect-edge: {message}", err=True)
    raise typer.Exit(2)


def _mount_plugins() -> None:
    # Groups such as `export` need torch or TensorRT; they are registered by the
    # distribution (pyproject entry points) so this torch-free package never
    # imports them by name. Each group must itself import heavy modules lazily.
    for ep in entry_points(group="inspect_edge.commands"):
        app.add_typer(ep.load(), name=ep.name)


def main() -> None:
    _mount_plugins()
    app()


if __name__ == "__main__":
    main()
