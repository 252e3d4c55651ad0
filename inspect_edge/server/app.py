"""The FastAPI app, built by `create_app(config)`; its lifespan starts and stops the threads.

Endpoints: `/` live page, `/stream.mjpg?camera=NAME`, `/snapshot.jpg?camera=NAME`
(without `camera`: the first camera), `/api/stats` (totals and each camera),
`/api/defects?limit=N&camera=NAME`, `/api/defects/{id}/thumb.jpg`, `/healthz` (503 when a
worker thread died or is past its restart budget: restart the process), `/readyz`
(model loaded, warmed up and the source delivering), `/metrics`; `/review` and
`/api/review` (the reviewer's decisions on saved evidence, `inspect_edge.review`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from inspect_edge import __version__
from inspect_edge.config import ServiceConfig
from inspect_edge.model_swap import SwapRefused
from inspect_edge.review import NoSuchDefect, ReviewError, ReviewLog, read_events
from inspect_edge.server.auth import TokenGate
from inspect_edge.server.service import InspectionService

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
BOUNDARY = "frame"
NO_CACHE = {"Cache-Control": "no-store"}


class ModelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    defect_id: int
    decision: str
    new_class: str | None = Field(None, alias="class")
    reviewer: str | None = Field(None, max_length=80)


def create_app(cfg: ServiceConfig, *, run_dir: Path | None = None, backend_factory=None) -> FastAPI:
    """Build the service (source checked now; threads start with the app's lifespan)."""
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
    cfg.write(run_dir)
    service = InspectionService(cfg, run_dir, backend_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)
            left = service.threads_alive()
            if left:
                log.error("threads still running after stop: %s", left)

    app = FastAPI(title="inspect-edge", version=__version__, lifespan=lifespan,
                  docs_url="/api/docs", redoc_url=None)
    app.state.service = service
    app.state.run_dir = run_dir
    token = cfg.server.auth_token.get_secret_value() if cfg.server.auth_token else ""
    if token:
        app.add_middleware(TokenGate, token=token, metrics_open=cfg.server.metrics_open)
    viewers: weakref.WeakSet = weakref.WeakSet()  # open stream generators; a dropped one leaves by itself
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok, reason, threads = service.health()
        return JSONResponse({"status": "alive" if ok else "unhealthy", "reason": reason, "threads": threads},
                            status_code=200 if ok else 503)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        states = service.camera_states()
        ok, reason = service.readiness(states)
        cameras = {name: {"delivering": delivering, "reason": why} for name, (delivering, why) in states.items()}
        return JSONResponse({"ready": ok, "reason": reason, "cameras": cameras}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/api/stats")
    def stats() -> JSONResponse:
        return JSONResponse(service.stats(), headers=NO_CACHE)

    def camera_named(name: str | None) -> str:
        if name is None:
            return next(iter(service.cameras))
        if name not in service.cameras:
            raise HTTPException(404, f"no camera {name!r}; cameras: {', '.join(service.cameras)}")
        return name

    @app.get("/api/defects")
    def defects(limit: int = Query(20, ge=1, le=500), camera: str | None = Query(None, max_length=64)) -> JSONResponse:
        return JSONResponse(service.live.recent(limit, None if camera is None else camera_named(camera)), headers=NO_CACHE)

    @app.get("/api/defects/{defect_id}/thumb.jpg")
    def thumbnail(defect_id: int) -> Response:
        jpeg = service.live.thumbnail(defect_id)
        if jpeg is None:
            raise HTTPException(404, f"defect {defect_id} is no longer in the recent list")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/snapshot.jpg")
    def snapshot(camera: str | None = Query(None, max_length=64)) -> Response:
        name = camera_named(camera)
        item = service.live.latest_jpeg(name)
        if item is None:
            raise HTTPException(503, f"no frame of camera {name!r} processed yet")
        return Response(item[1], media_type="image/jpeg", headers={**NO_CACHE, "X-Frame-Seq": str(item[0])})

    # ---- review of the line's evidence (token-protected like everything but the probes) ----
    @app.get("/review", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html", headers=NO_CACHE)

    def review_log() -> ReviewLog:
        info = service.pipeline.info
        if info is None:
            raise HTTPException(503, "model not loaded yet: its classes are needed to review")
        return ReviewLog(run_dir, info.classes)

    @app.get("/api/review")
    def review_queue(limit: int = Query(50, ge=1, le=500)) -> JSONResponse:
        log_ = review_log()
        return JSONResponse({"classes": list(log_.classes), "items": log_.queue(limit)}, headers=NO_CACHE)

    @app.post("/api/review")
    def review_decide(body: ReviewBody) -> JSONResponse:
        try:
            rec = review_log().record(body.defect_id, body.decision, body.new_class, body.reviewer)
        except ReviewError as e:
            raise HTTPException(404 if isinstance(e, NoSuchDefect) else 400, str(e)) from None
        return JSONResponse(rec)

    @app.get("/api/review/{defect_id}/overlay.jpg")
    def review_overlay(defect_id: int) -> Response:
        event = read_events(run_dir).get(defect_id)
        path = run_dir / event["evidence"] / "overlay.jpg" if event and event.get("evidence") else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"no evidence for defect {defect_id} (none saved, or removed by the quota)")
        return FileResponse(path, media_type="image/jpeg")

    # ---- hot swap: a candidate model shadowed on live frames, promoted between two frames ----
    @app.get("/api/model")
    def model_status() -> JSONResponse:
        info = service.pipeline.info
        return JSONResponse({"production": None if info is None else info.model_version, **service.swap.status()},
                            headers=NO_CACHE)

    @app.post("/api/model")
    async def model_propose(body: ModelBody) -> JSONResponse:
        if not service.pipeline.ready.is_set():
            raise HTTPException(503, "production model not loaded yet")
        production = service.pipeline.current_backend
        try:
            return JSONResponse(await run_in_threadpool(service.swap.propose, Path(body.path), production))
        except SwapRefused as e:
            raise HTTPException(400, str(e)) from None

    @app.post("/api/model/{action}")
    async def model_action(action: str) -> JSONResponse:
        if action not in ("promote", "rollback"):
            raise HTTPException(404, f"unknown action {action!r}: promote or rollback")
        try:
            return JSONResponse(await run_in_threadpool(service.swap.request, action))
        except SwapRefused as e:
            raise HTTPException(409, str(e)) from None

    @app.get("/stream.mjpg")
    async def stream(camera: str | None = Query(None, max_length=64)) -> StreamingResponse:
        name = camera_named(camera)
        # Counted on the event loop's one thread, so no lock is needed.
        open_now = sum(1 for g in list(viewers) if g.ag_frame is not None)
        if open_now >= cfg.server.max_viewers:
            raise HTTPException(503, f"{open_now} viewers already watch (limit {cfg.server.max_viewers}); "
                                     "close one, or use /snapshot.jpg")
        body = _mjpeg(service, name)
        viewers.add(body)
        return StreamingResponse(body, media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers=NO_CACHE)

    return app


async def _mjpeg(service: InspectionService, camera: str):
    """The camera's newest annotated frame per part, at most stream_fps; ends when the service stops.

    All viewers share LiveView's one-encode-per-frame cache; a viewer never
    queues frames, so a slow client sees fewer frames instead of older ones.
    """
    live, interval = service.live, 1.0 / service.cfg.server.stream_fps
    last_seq = None
    while not service.stopping.is_set():
        latest = live.latest_of(camera)
        if latest is None or latest.seq == last_seq:
            await asyncio.sleep(min(interval, 0.05))
            continue
        item = await run_in_threadpool(live.latest_jpeg, camera, True)
        last_seq, jpeg = item
        yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
               f"X-Frame-Seq: {last_seq}\r\n\r\n").encode() + jpeg + b"\r\n"
        await asyncio.sleep(interval)


class InspectionServer(uvicorn.Server):
    """uvicorn, plus: a stop request also ends the live streams at once.

    uvicorn waits for open connections before running the lifespan shutdown;
    MJPEG viewers never close by themselves, so they are told first.
    """

    def __init__(self, app: FastAPI, host: str, port: int, log_level: str = "warning") -> None:
        super().__init__(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                        timeout_graceful_shutdown=3, access_log=False))
        self.service: InspectionService = app.state.service
        self.exited_unhealthy = False
        self._unhealthy_since: float | None = None

    async def on_tick(self, counter: int) -> bool:
        # Once a second: a service that stays unhealthy ends itself, because neither
        # systemd nor plain Docker acts on a failing health check (Kubernetes does).
        limit = self.service.cfg.server.unhealthy_exit_s
        if counter % 10 == 0 and limit is not None and not self.should_exit:
            ok, reason, _ = self.service.health()
            now = time.monotonic()
            if ok:
                self._unhealthy_since = None
            elif self._unhealthy_since is None:
                self._unhealthy_since = now
            elif now - self._unhealthy_since >= limit:
                log.error("unhealthy for %.0f s (%s); exiting with status 3 so the process manager restarts the service",
                          now - self._unhealthy_since, reason)
                self.exited_unhealthy = True
                self.service.stopping.set()
                self.should_exit = True
        return await super().on_tick(counter)

    def handle_exit(self, sig, frame) -> None:
        self.service.stopping.set()
        super().handle_exit(sig, frame)

    def request_stop(self) -> None:
        self.service.stopping.set()
        self.should_exit = True
