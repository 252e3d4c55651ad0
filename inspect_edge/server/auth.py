"""A shared bearer token in front of every endpoint, and a cap on live-stream viewers.

Machines send `Authorization: Bearer <token>` (Prometheus' `authorization`
block does). A browser cannot put a header on an `<img src=/stream.mjpg>`, so
opening `/?token=<token>` once sets an HttpOnly, SameSite=Strict cookie that
the live page's later requests carry. `/healthz` and `/readyz` stay open for
the process manager and probes, which cannot be given secrets easily; `/metrics`
stays open unless asked otherwise. The token only proves the caller knows it:
on any network but loopback it must travel over TLS (deploy/README.md).
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.responses import JSONResponse

COOKIE = "inspect_edge_token"
ALWAYS_OPEN = ("/healthz", "/readyz")


class TokenGate:
    """Pure ASGI middleware (streaming responses pass through untouched)."""

    def __init__(self, app, token: str, metrics_open: bool = True) -> None:
        self.app = app
        self._token = token.encode()
        self.open_paths = ALWAYS_OPEN + (("/metrics",) if metrics_open else ())

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        cookie = SimpleCookie(headers.get("cookie", "")).get(COOKIE)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        if self._matches(bearer) or self._matches(cookie.value if cookie else None):
            await self.app(scope, receive, send)
            return
        if self._matches(query):
            await self.app(scope, receive, _setting_cookie(send, query))
            return
        reason = "wrong token" if (bearer or cookie or query) else "this service needs a token"
        await JSONResponse(
            {"detail": f"{reason}: send 'Authorization: Bearer <token>', or open /?token=<token> once in a browser"},
            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="inspect-edge"'},
        )(scope, receive, send)


def _setting_cookie(send, token: str):
    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            value = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value.encode("latin-1"))]}
        await send(message)

    return wrapped
