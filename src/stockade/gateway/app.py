"""The gateway: the only door to every MCP server. Closed by default; every request is audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stockade.errors import AuthenticationError
from stockade.gateway import jsonrpc
from stockade.gateway.audit import AuditLog
from stockade.gateway.identity import Principal, authenticate, bearer_from_header
from stockade.gateway.proxy import BodyTooLarge, McpProxy, read_body, rpc_error
from stockade.gateway.upstream import ServerDirectory
from stockade.store.database import Database

UPSTREAM_TIMEOUT = httpx2.Timeout(connect=5.0, read=300.0, write=30.0, pool=10.0)


class Gateway:
    """What the gateway's routes need, owned by whoever serves the app."""

    def __init__(self, database: Database, directory: ServerDirectory, *, public_url: str) -> None:
        self.database = database
        self.directory = directory
        self.audit = AuditLog(database)
        self.public_url = public_url.rstrip("/")
        # Sessions belong to the member that opened them: another member presenting the id gets 404.
        self._session_owner: dict[str, str] = {}

    def resource_metadata_url(self, path: str) -> str:
        return f"{self.public_url}/.well-known/oauth-protected-resource{path}"

    async def principal(self, request: Request) -> Principal:
        if "access_token" in request.query_params or "token" in request.query_params:
            raise AuthenticationError("tokens in query strings are refused; send Authorization: Bearer")
        presented = bearer_from_header(request.headers.get("authorization"))

        def lookup() -> Principal:
            with self.database.session() as session:
                return authenticate(session, presented)

        return await anyio.to_thread.run_sync(lookup)

    def claim_session(self, session_id: str | None, principal: Principal) -> bool:
        if session_id is None:
            return True
        owner = self._session_owner.setdefault(session_id, principal.member)
        return owner == principal.member


def unauthorized(gateway: Gateway, request: Request, message: str) -> JSONResponse:
    challenge = f'Bearer resource_metadata="{gateway.resource_metadata_url(request.url.path)}"'
    return JSONResponse(
        {"error": "invalid_token", "error_description": message},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


def create_gateway_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx2.AsyncClient(timeout=UPSTREAM_TIMEOUT, follow_redirects=False) as http:
            app.state.proxy = McpProxy(http, gateway.audit)
            yield

    app = FastAPI(title="Stockade gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/.well-known/oauth-protected-resource{path:path}")
    async def protected_resource_metadata(path: str) -> dict[str, object]:
        return {
            "resource": f"{gateway.public_url}{path}",
            "authorization_servers": [],
            "bearer_methods_supported": ["header"],
            "resource_name": "Stockade gateway",
        }

    @app.api_route("/servers/{slug}/mcp", methods=["GET", "POST", "DELETE"])
    async def server_mcp(slug: str, request: Request) -> Response:
        try:
            principal = await gateway.principal(request)
        except AuthenticationError as exc:
            return unauthorized(gateway, request, exc.message)
        upstream = await gateway.directory.resolve(slug)
        if upstream is None:
            return rpc_error(404, jsonrpc.INVALID_REQUEST, f"no running server named {slug!r}")
        if not gateway.claim_session(request.headers.get("mcp-session-id"), principal):
            return rpc_error(404, jsonrpc.INVALID_REQUEST, "session not found")
        proxy: McpProxy = request.app.state.proxy
        if request.method != "POST":
            return await proxy.forward(request, upstream, principal, body=None, call=None)

        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            return rpc_error(415, jsonrpc.INVALID_REQUEST, "Content-Type must be application/json")
        try:
            body = await read_body(request)
        except BodyTooLarge:
            return rpc_error(413, jsonrpc.INVALID_REQUEST, "request body too large")
        try:
            message = json.loads(body)
        except ValueError:
            return rpc_error(400, jsonrpc.PARSE_ERROR, "request body is not valid JSON")
        if isinstance(message, list):
            return rpc_error(400, jsonrpc.INVALID_REQUEST, "JSON-RPC batches are not supported; send one message per request")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            return rpc_error(400, jsonrpc.INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        call = jsonrpc.parse_call(message)
        return await proxy.forward(request, upstream, principal, body=body, call=call)

    return app
