"""The real app under uvicorn on 127.0.0.1, in this process (so a test can reach into its threads)."""

from __future__ import annotations

import contextlib
import threading

import httpx
from helpers_net import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from inspect_edge.config import ServiceConfig
from inspect_edge.server.app import InspectionServer, create_app


@contextlib.contextmanager
def serving(tmp_path, spec: str | None, model_path, **sections):
    """`spec` None: the config's `cameras` section (a list) names the sources instead."""
    cfg = {"model": {"path": str(model_path), "threads": 1}}
    if spec is not None:
        cfg["source"] = {"spec": spec, "loop": True}
    for name, values in sections.items():
        if isinstance(values, list):
            cfg[name] = values
        else:
            cfg.setdefault(name, {}).update(values)
    app = create_app(ServiceConfig.model_validate(cfg), run_dir=tmp_path / "run")
    port = free_port()
    server = InspectionServer(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        wait_until(lambda: _answers(client), 20, "the server answering")
        yield server.service, client
    finally:
        server.request_stop()
        thread.join(8)
        client.close()
    assert not thread.is_alive()


def _answers(client) -> bool:
    try:
        client.get("/healthz")
        return True
    except httpx.TransportError:
        return False


def metrics(client) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
