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
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML config file (`inspect-edge config example`); flags given here override it."),
    source: Optional[str] = typer.Option(None, "--source", "-s",
                                         help="Video file, rtsp/http URL, image folder or glob, or 'synthetic' (default)."),
    camera: Optional[int] = typer.Option(None, "--camera", help="USB/V4L2 camera index (overrides --source)."),
    loop: Optional[bool] = typer.Option(None, "--loop/--no-loop", help="Restart video files and image folders at their end."),
    realtime: Optional[bool] = typer.Option(None, "--realtime/--as-fast-as-possible",
                                            help="Play files at their own frame rate, as a camera would (default)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of folders and the synthetic strip (default 10)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="Model file (.onnx or TensorRT .engine); default: the built-in model."),
    backend: Optional[_Backend] = typer.Option(None, "--backend", help="Inference backend; auto (default) picks by file type."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU inference threads."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="CUDA device index for TensorRT (default $INSPECT_EDGE_GPU or 0)."),
    fit: Optional[_Fit] = typer.Option(None, "--fit", help="tile (default): native resolution, tiled; resize: squeeze to the model."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1); 0.0.0.0 exposes the service."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default 8000)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/service/<UTC timestamp>)."),
    evidence_interval: Optional[float] = typer.Option(None, "--evidence-interval", help="Seconds between evidence sets (default 2)."),
    evidence_quota_mb: Optional[float] = typer.Option(None, "--evidence-quota-mb", help="Disk quota for evidence (default 500)."),
    evidence: Optional[bool] = typer.Option(None, "--evidence/--no-evidence", help="Save images with events (default) or only log them."),
    webhook: Optional[str] = typer.Option(None, "--webhook", help="URL to POST defect events to."),
    webhook_cooldown: Optional[float] = typer.Option(None, "--webhook-cooldown", help="Seconds between webhook calls (default 30)."),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info (default), warning or error."),
    auth_token: Optional[str] = typer.Option(None, "--auth-token", envvar="INSPECT_EDGE_AUTH_TOKEN", show_envvar=True,
                                             help="Require this bearer token on every endpoint but /healthz and /readyz."),
    metrics_open: Optional[bool] = typer.Option(None, "--metrics-open/--metrics-need-token",
                                                help="With a token: leave /metrics open for Prometheus (default), or ask it for the token too."),
    max_viewers: Optional[int] = typer.Option(None, "--max-viewers", help="Concurrent /stream.mjpg viewers (default 8); more get 503."),
    line_speed: Optional[float] = typer.Option(None, "--line-speed", help="Strip speed in m/s: defects per metre are reported."),
    mm_per_px: Optional[float] = typer.Option(None, "--mm-per-px", help="Strip millimetres per pixel along the strip: events carry length_mm."),
    merge_gap: Optional[int] = typer.Option(None, "--merge-gap", help="Pixels along the strip within which fragments of one class are one defect (default 16; -1: off)."),
) -> None:
    """Serve live inspection: camera -> model -> live page, /metrics, defect events."""
    import logging
    import signal

    from inspect_edge.config_file import ConfigFileError, build_config

    given = {  # flag -> (config path, value); only flags the user gave, so the file's values stand otherwise
        "source": (("source", "spec"), str(camera) if camera is not None else source),
        "loop": (("source", "loop"), loop), "realtime": (("source", "realtime"), realtime),
        "fps": (("source", "fps"), fps),
        "model": (("model", "path"), str(model) if model is not None else None),
        "backend": (("model", "backend"), backend.value if backend else None), "threads": (("model", "threads"), threads),
        "gpu": (("model", "gpu"), gpu), "fit": (("model", "fit"), fit.value if fit else None),
        "host": (("server", "host"), host), "port": (("server", "port"), port),
        "out": (("out",), str(out) if out is not None else None),
        "evidence_interval": (("events", "evidence_min_interval_s"), evidence_interval),
        "evidence_quota_mb": (("events", "evidence_quota_mb"), evidence_quota_mb),
        "evidence": (("events", "evidence"), evidence), "webhook": (("events", "webhook_url"), webhook),
        "webhook_cooldown": (("events", "webhook_cooldown_s"), webhook_cooldown),
        "log_level": (("log_level",), log_level.lower() if log_level else None),
        "auth_token": (("server", "auth_token"), auth_token or None),
        "metrics_open": (("server", "metrics_open"), metrics_open), "max_viewers": (("server", "max_viewers"), max_viewers),
        "line_speed": (("tracking", "strip_speed_m_s"), line_speed), "mm_per_px": (("tracking", "mm_per_px"), mm_per_px),
        "merge_gap": (("tracking", "merge_gap_px"), merge_gap),
    }
    overrides: dict = {}
    for key, value in given.values():
        if value is not None:
            node = overrides
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = value
    flag_of = {".".join(key): "--" + name.replace("_", "-") for name, (key, value) in given.items() if value is not None}
    try:
        cfg = build_config(config, overrides, environ={})  # the token's variable already reached --auth-token
    except ConfigFileError as e:
        def said(problem: str) -> str:
            key, _, why = problem.partition(": ")
            return f"{flag_of[key]} ({key}): {why}" if key in flag_of else (f"{config}: {problem}" if config else problem)

        for problem in e.problems[:-1]:
            typer.echo(f"inspect-edge: {said(problem)}", err=True)
        _fail(said(e.problems[-1]))
    host, port, auth_token = cfg.server.host, cfg.server.port, cfg.server.auth_token
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_path = cfg.model.resolved_path()
    if not model_path.is_file():
        if cfg.model.path is None:
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
    what = cfg.source.spec if not cfg.cameras else ", ".join(f"{c.name}={c.spec}" for c in cfg.cameras)
    typer.echo(f"inspect-edge: serving {what} on http://{host}:{port}  (run folder {cfg.out})")
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


config_app = typer.Typer(help="The service's YAML config: check a file, or print a full commented example.",
                         no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="YAML config file.")) -> None:
    """List every problem in FILE with its key (status 2 if any), else print the resolved config."""
    import json

    from inspect_edge.config_file import ConfigFileError, build_config

    try:
        cfg = build_config(file, environ={})
    except ConfigFileError as e:
        for p in e.problems:
            typer.echo(f"{file}: {p}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
    typer.echo(f"{file}: ok", err=True)


@config_app.command("example")
def config_example() -> None:
    """Print a full config with every key at its default and what it means."""
    from inspect_edge.config_file import example_yaml

    typer.echo(example_yaml(), nl=False)


review_app = typer.Typer(help="The reviewer's decisions on a run's evidence, as training data.",
                         no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(review_app, name="review")


class _ReviewFormat(str, Enum):
    mask_folder = "mask-folder"
    severstal = "severstal"
    cvat = "cvat"


@review_app.command("export")
def review_export(
    run_dir: Path = typer.Argument(..., help="A service run folder (events.jsonl, evidence/, reviews.jsonl)."),
    out: Path = typer.Option(..., "--out", help="Data set folder to write."),
    fmt: _ReviewFormat = typer.Option(_ReviewFormat.mask_folder, "--format", help="mask-folder, severstal or cvat."),
) -> None:
    """Reviewed frames as a data set `train` reads; frames marked missed go to OUT/to_label (CVAT task, no masks)."""
    import json

    from inspect_edge.review import export_reviewed

    cfg_path = run_dir / "config.json"
    try:
        model_path = json.loads(cfg_path.read_text())["model"]["path"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        _fail(f"{cfg_path}: cannot read the run's config ({e})")
    from inspect_edge.backends.base import BackendError
    from inspect_edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    from inspect_edge.config import DEFAULT_MODEL

    model = Path(model_path) if model_path else DEFAULT_MODEL
    try:  # the run's model is the only record of its class order
        classes = OnnxRuntimeBackend(model).info.classes
    except BackendError as e:
        _fail(f"cannot read the run's model classes: {e}")
    s = export_reviewed(run_dir, out, classes, fmt.value)
    typer.echo(f"{out}: {s.frames} reviewed frame(s) ({s.confirmed} confirmed, {s.rejected} rejected, "
               f"{s.reclassed} reclassed), {s.to_label} to label, {s.skipped} skipped (evidence gone)")


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
