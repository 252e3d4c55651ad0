"""The FastAPI app, built by `create_app(config)`; its lifespan starts and stops the threads.

Endpoints: `/` live page, `/stream.mjpg`, `/snapshot.jpg`, `/api/stats`,
`/api/defects?limit=N`, `/api/defects/{id}/thumb.jpg`, `/healthz` (the process
answers), `/readyz` (model loaded and the source delivering), `/metrics`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from inspect_edge import __version__
from inspect_edge.config import ServiceConfig
from inspect_edge.server.service import InspectionService

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
BOUNDARY = "frame"
NO_CACHE = {"Cache-Control": "no-store"}


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
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "alive", "threads": service.threads_alive()}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok, reason = service.readiness()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/api/stats")
    def stats() -> JSONResponse:
        return JSONResponse(service.stats(), headers=NO_CACHE)

    @app.get("/api/defects")
    def defects(limit: int = Query(20, ge=1, le=500)) -> JSONResponse:
        return JSONResponse(service.live.recent(limit), headers=NO_CACHE)

    @app.get("/api/defects/{defect_id}/thumb.jpg")
    def thumbnail(defect_id: int) -> Response:
        jpeg = service.live.thumbnail(defect_id)
        if jpeg is None:
            raise HTTPException(404, f"defect {defect_id} is no longer in the recent list")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/snapshot.jpg")
    def snapshot() -> Response:
        item = service.live.latest_jpeg()
        if item is None:
            raise HTTPException(503, "no frame processed yet")
        return Response(item[1], media_type="image/jpeg", headers={**NO_CACHE, "X-Frame-Seq": str(item[0])})

    @app.get("/stream.mjpg")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_mjpeg(service), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers=NO_CACHE)

    return app


async def _mjpeg(service: InspectionService):
    """Newest annotated frame per part, at most stream_fps; ends when the service stops.

    All viewers share LiveView's one-encode-per-frame cache; a viewer never
    queues frames, so a slow client sees fewer frames instead of older ones.
    """
    live, interval = service.live, 1.0 / service.cfg.server.stream_fps
    last_seq = None
    while not service.stopping.is_set():
        latest = live.latest
        if latest is None or latest.seq == last_seq:
            await asyncio.sleep(min(interval, 0.05))
            continue
        item = await run_in_threadpool(live.latest_jpeg)
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

    def handle_exit(self, sig, frame) -> None:
        self.service.stopping.set()
        super().handle_exit(sig, frame)

    def request_stop(self) -> None:
        self.service.stopping.set()
        self.should_exit = True
