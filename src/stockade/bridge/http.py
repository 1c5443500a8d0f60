"""The bridge's HTTP application: guards, routes, lifespan.

    GET  /health               liveness, no auth
    GET  /ready                200 once the backend answered its handshake, else 503 + why
    POST|GET|DELETE /mcp       MCP Streamable HTTP, both eras (streamable.py)
    GET  /tools                the backend's tools (all pages)      (rest.py)
    POST /tools/{name}/call    call one tool with a JSON object of arguments

`Guard` runs before routing, in this order: Origin (403 unless absent or allowed), bearer token
(401, constant-time comparison), declared body size (413; streamed bodies are also cut at the
limit while being read). No redirects (trailing-slash redirects are off).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .hub import Hub
from .options import is_loopback
from .rest import Rest
from .sse import http_error, send_json
from .streamable import Streamable

UNAUTHENTICATED_PATHS = frozenset({"/health"})


class Guard:
    def __init__(self, app: ASGIApp, *, token: str | None, allowed_origins: tuple[str, ...], loopback: bool,
                 max_body: int) -> None:
        self.app = app
        self._token = token.encode() if token else None
        self.allowed_origins = frozenset(o.lower() for o in allowed_origins)
        self.loopback = loopback
        self.max_body = max_body

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        if self.loopback:
            parts = urlsplit(origin)
            return parts.scheme in ("http", "https") and is_loopback(parts.hostname or "")
        return False

    def authorized(self, headers: Headers) -> bool:
        if self._token is None:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin):
            await send_json(send, 403, http_error("forbidden_origin", "this Origin is not allowed"))
            return
        if not self.authorized(headers):
            await send_json(send, 401, http_error("invalid_token", "a valid bearer token is required"),
                            {"www-authenticate": "Bearer"})
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await send_json(send, 413, http_error("request_too_large", f"the body exceeds {self.max_body} bytes"))
            return
        await self.app(scope, receive, send)


def create_app(hub: Hub) -> ASGIApp:
    streamable = Streamable(hub)
    rest = Rest(hub)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> JSONResponse:
        status = hub.backend.status()
        return JSONResponse(status, status_code=200 if hub.backend.ready else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.backend.run)
            tg.start_soon(hub.reaper)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await hub.shutdown()
                    await hub.backend.shutdown()
                tg.cancel_scope.cancel()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/mcp", streamable),
            Route("/tools", rest.tools, methods=["GET"]),
            Route("/tools/{name:path}/call", rest.call_tool, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    options = hub.options
    return Guard(McpFirst(streamable, app), token=options.token, allowed_origins=options.allowed_origins,
                 loopback=is_loopback(options.host), max_body=options.max_body)


class McpFirst:
    """Every tool call is a request to /mcp: hand it to the Streamable handler without walking
    Starlette's route table (the same handler the `/mcp` route names)."""

    def __init__(self, mcp: ASGIApp, app: ASGIApp) -> None:
        self.mcp = mcp
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await self.mcp(scope, receive, send)
        else:
            await self.app(scope, receive, send)
