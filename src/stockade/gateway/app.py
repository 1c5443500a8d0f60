"""The gateway: the only door to every MCP server. Closed by default; every request is audited."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import httpx2
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.engine.interfaces import DBAPIConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from stockade import metrics
from stockade.errors import AuthenticationError
from stockade.gateway import jsonrpc
from stockade.gateway.aggregate import AGGREGATE, create_aggregate_server
from stockade.gateway.audit import AuditLog
from stockade.gateway.audit_writer import AuditWriter
from stockade.gateway.bridge_link import BridgeLink, LinkError
from stockade.gateway.identity import (
    TOKEN_LOOKUP,
    Principal,
    authenticate,
    bearer_from_header,
    offboard_member,
    principal_for,
    role_rules,
)
from stockade.gateway.oidc import InsufficientScope, OidcConfig, OidcIdentity, OidcVerifier, looks_like_jwt
from stockade.gateway.pins import ToolPins
from stockade.gateway.proxy import BodyTooLarge, McpProxy, read_body, rpc_error
from stockade.gateway.ratelimit import RateLimiter, create_rate_limiter, retry_after_header
from stockade.gateway.streams import WATCH_INTERVAL, Closed, StreamRegistry, revoked_among
from stockade.gateway.upstream import ServerDirectory, Upstream
from stockade.store.database import Database
from stockade.store.driver import DriverStatement
from stockade.store.models import Member, Role

log = logging.getLogger(__name__)
OIDC_TIMEOUT = httpx2.Timeout(10.0)


class Gateway:
    """What the gateway's routes need, owned by whoever serves the app."""

    def __init__(
        self,
        database: Database,
        directory: ServerDirectory,
        *,
        public_url: str,
        oidc: OidcConfig | None = None,
        pins: ToolPins | None = None,
        rate_per_minute: int = 600,
        rate_burst: int = 60,
    ) -> None:
        self.database = database
        self.directory = directory
        self.audit = AuditLog(database)
        self.audit_writer = AuditWriter(self.audit)
        self.pins = pins or ToolPins(database)
        self.streams = StreamRegistry()
        self.limiter: RateLimiter = create_rate_limiter(database, per_minute=rate_per_minute, burst=rate_burst)
        self.public_url = public_url.rstrip("/")
        self.oidc = oidc
        self.link: BridgeLink | None = None
        self.verifier: OidcVerifier | None = None
        # SQLite: tokens are looked up in place, on the event loop's own connection, while it is open.
        self.loop_db: DBAPIConnection | None = None
        self._token_lookup = DriverStatement(TOKEN_LOOKUP, database.engine.dialect) if database.is_sqlite else None

    def resource_metadata_url(self, path: str) -> str:
        return f"{self.public_url}/.well-known/oauth-protected-resource{path}"

    async def principal(self, request: Request) -> Principal:
        if request.scope.get("query_string") and {"access_token", "token"} & set(request.query_params):
            raise AuthenticationError("tokens in query strings are refused; send Authorization: Bearer")
        presented = bearer_from_header(request.headers.get("authorization"))
        if self.verifier is not None and looks_like_jwt(presented):
            identity = await self.verifier.verify(presented or "")
            return await anyio.to_thread.run_sync(self._oidc_principal, identity)
        connection, lookup = self.loop_db, self._token_lookup
        if connection is not None and lookup is not None:
            return principal_for(presented, lambda secret_hash: lookup.first(connection, {"secret_hash": secret_hash}))
        return await anyio.to_thread.run_sync(self._principal_from_database, presented)

    def _principal_from_database(self, presented: str | None) -> Principal:
        with self.database.reading() as connection:
            return authenticate(connection, presented)

    def _oidc_principal(self, identity: OidcIdentity) -> Principal:
        with self.database.session() as session:
            rules = session.scalar(select(Role.rules).where(Role.name == identity.role))
            if rules is None:
                raise AuthenticationError(f"the role {identity.role!r} your identity maps to does not exist here")
            offboarded = session.scalar(select(Member.offboarded_at).where(Member.name == identity.member))
            if offboarded is not None:
                raise AuthenticationError("this member has been offboarded")
        return identity.principal(role_rules(rules))

    async def throttle(self, principal: Principal) -> JSONResponse | None:
        """None when the member may make another request now, else the 429 to send."""
        if self.limiter.blocking:
            wait = await anyio.to_thread.run_sync(self.limiter.acquire, principal.member)
        else:
            wait = self.limiter.acquire(principal.member)
        return too_many_requests(wait) if wait > 0 else None

    async def end_upstream_session(self, slug: str, session_id: str) -> None:
        upstream = await self.directory.resolve(slug)
        pinned = upstream.session_replica(session_id) if upstream is not None else None
        if upstream is None or pinned is None or self.link is None:
            return  # no such server or replica any more: the session ended with it
        replica, session = pinned
        try:
            response = await self.link.send("DELETE", f"{replica.endpoint}/mcp", headers={
                "authorization": f"Bearer {upstream.token}", "mcp-session-id": session})
            await response.read()
        except LinkError as exc:
            log.warning("could not end session on %s: %s", slug, exc)

    async def close_token(self, token_id: str) -> Closed:
        """Close every stream and session held open by a (revoked) token."""
        return await self.streams.close_token(token_id, self.end_upstream_session)

    async def offboard(self, member: str) -> tuple[list[str], Closed]:
        """Revoke every live token of a member and close what each held open: the ids revoked
        and the total closed. Raises `NotFoundError` for an unknown member."""
        def revoke() -> list[str]:
            with self.database.session() as session:
                return offboard_member(session, member)

        revoked = await anyio.to_thread.run_sync(revoke)
        streams = sessions = 0
        for token_id in revoked:
            closed = await self.close_token(token_id)
            streams, sessions = streams + closed.streams, sessions + closed.sessions
        return revoked, Closed(streams=streams, sessions=sessions)

    async def watch_revocations(self) -> None:
        """Close what revoked tokens hold open, also when another process revoked them."""
        while True:
            await anyio.sleep(WATCH_INTERVAL)
            held = self.streams.token_ids()
            for token_id in await anyio.to_thread.run_sync(revoked_among, self.database, held):
                closed = await self.close_token(token_id)
                log.info("token %s revoked: closed %d streams, %d sessions", token_id, closed.streams, closed.sessions)


def refused(gateway: Gateway, request: Request, error: AuthenticationError | InsufficientScope) -> JSONResponse:
    """401 (no valid token) or 403 `insufficient_scope`, each with its `WWW-Authenticate` challenge."""
    metadata = gateway.resource_metadata_url(request.url.path)
    if isinstance(error, InsufficientScope):
        return JSONResponse(
            {"error": "insufficient_scope", "error_description": error.message, "scope": error.scope},
            status_code=403,
            headers={"WWW-Authenticate": error.www_authenticate(metadata)},
        )
    return unauthorized(gateway, request, error.message)


def unauthorized(gateway: Gateway, request: Request, message: str) -> JSONResponse:
    metrics.AUTH_FAILURES.inc()
    challenge = f'Bearer resource_metadata="{gateway.resource_metadata_url(request.url.path)}"'
    if gateway.oidc and gateway.oidc.required_scopes:
        challenge += f', scope="{" ".join(gateway.oidc.required_scopes)}"'
    return JSONResponse(
        {"error": "invalid_token", "error_description": message},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


def too_many_requests(wait: float) -> JSONResponse:
    metrics.RATE_LIMITED.inc()
    return JSONResponse(
        {"error": "rate_limited", "error_description": "too many requests; retry later"},
        status_code=429,
        headers={"Retry-After": retry_after_header(wait)},
    )


class AsgiEndpoint:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def create_gateway_app(gateway: Gateway) -> FrontDoor:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            gateway.link = await stack.enter_async_context(BridgeLink())
            if gateway.database.is_sqlite:
                gateway.loop_db = stack.enter_context(gateway.database.loop_connection())
            if gateway.oidc is not None:
                http = await stack.enter_async_context(httpx2.AsyncClient(timeout=OIDC_TIMEOUT, follow_redirects=False))
                gateway.verifier = OidcVerifier(gateway.oidc, http)
            app.state.proxy = McpProxy(gateway.link, gateway.audit_writer, gateway.pins, gateway.streams)
            async with anyio.create_task_group() as writing:
                await writing.start(gateway.audit_writer.run, gateway.loop_db)
                async with aggregate.run(), anyio.create_task_group() as tasks:
                    tasks.start_soon(gateway.watch_revocations)
                    yield
                    tasks.cancel_scope.cancel()
                # Last: every call still in flight above has had its record committed.
                writing.cancel_scope.cancel()
            gateway.link = gateway.loop_db = None

    app = FastAPI(title="Stockade gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    aggregate = create_aggregate_server(gateway.directory, lambda: app.state.proxy)

    async def identify(request: Request) -> Principal | Response:
        """The caller, admitted by credential and rate limit; else the 401, 403 or 429 to send."""
        try:
            principal = await gateway.principal(request)
        except (AuthenticationError, InsufficientScope) as exc:
            return refused(gateway, request, exc)
        if (limited := await gateway.throttle(principal)) is not None:
            return limited
        return principal

    async def aggregate_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        principal = await identify(request)
        if isinstance(principal, Response):
            await principal(scope, receive, send)
            return
        session_id = request.headers.get("mcp-session-id")
        if session_id is not None and not gateway.streams.claim_session(AGGREGATE, session_id, principal.member, principal.token_id):
            await rpc_error(404, jsonrpc.INVALID_REQUEST, "session not found")(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        with anyio.CancelScope() as held, gateway.streams.track(principal, held):
            await aggregate.handle_request(scope, receive, send)

    # A Route whose endpoint is not a plain function is served as an ASGI app (no Request wrapping).
    app.router.routes.append(Route("/mcp", AsgiEndpoint(aggregate_endpoint), methods=["GET", "POST", "DELETE"]))

    async def admit(request: Request, slug: str) -> tuple[Principal, Upstream] | Response:
        principal = await identify(request)
        if isinstance(principal, Response):
            return principal
        upstream = await gateway.directory.resolve(slug)
        if upstream is None:
            return rpc_error(404, jsonrpc.INVALID_REQUEST, f"no running server named {slug!r}")
        return principal, upstream

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/.well-known/oauth-protected-resource{path:path}")
    async def protected_resource_metadata(path: str) -> dict[str, object]:
        """RFC 9728 metadata, at the root and at each resource's path-specific URL."""
        metadata: dict[str, object] = {
            "resource": f"{gateway.public_url}{path}",
            "authorization_servers": [gateway.oidc.issuer] if gateway.oidc else [],
            "bearer_methods_supported": ["header"],
            "resource_name": "Stockade gateway",
        }
        if gateway.oidc and gateway.oidc.required_scopes:
            metadata["scopes_supported"] = list(gateway.oidc.required_scopes)
        return metadata

    async def server_mcp(request: Request) -> Response:
        slug = request.path_params["slug"]
        admitted = await admit(request, slug)
        if isinstance(admitted, Response):
            return admitted
        principal, upstream = admitted
        session_id = request.headers.get("mcp-session-id")
        if session_id is not None and not gateway.streams.claim_session(slug, session_id, principal.member, principal.token_id):
            return rpc_error(404, jsonrpc.INVALID_REQUEST, "session not found")
        proxy: McpProxy = request.app.state.proxy
        if request.method != "POST":
            return await proxy.forward(request, upstream, principal, body=None, call=None)

        if not request.headers.get("content-type", "").startswith("application/json"):
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
        if call is not None:
            refusal = await proxy.authorize(principal, upstream, call)
            if refusal is not None:
                return refusal
        rewrite = proxy.list_filter(principal, upstream, call) if call is not None else None
        return await proxy.forward(request, upstream, principal, body=body, call=call, rewrite=rewrite)

    server_route = Route("/servers/{slug}/mcp", server_mcp, methods=["GET", "POST", "DELETE"])
    app.router.routes.append(server_route)

    @app.get("/api/v1/tools")
    async def rest_tools(request: Request) -> Response:
        """Every tool the caller may call, on every running server."""
        principal = await identify(request)
        if isinstance(principal, Response):
            return principal
        proxy: McpProxy = request.app.state.proxy
        listing = await proxy.tools_for(principal, await gateway.directory.running())
        return JSONResponse({"tools": [{"server": upstream.slug, **tool} for upstream, tool in listing]})

    @app.post("/api/v1/servers/{slug}/tools/{tool}:call")
    async def rest_call(slug: str, tool: str, request: Request) -> Response:
        admitted = await admit(request, slug)
        if isinstance(admitted, Response):
            return admitted
        principal, upstream = admitted
        proxy: McpProxy = request.app.state.proxy
        try:
            body = await read_body(request)
            arguments = json.loads(body) if body else {}
        except BodyTooLarge:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        except ValueError:
            return JSONResponse({"error": "body must be a JSON object of tool arguments"}, status_code=400)
        if not isinstance(arguments, dict):
            return JSONResponse({"error": "body must be a JSON object of tool arguments"}, status_code=400)
        return await proxy.rest_call(principal, upstream, tool, arguments)

    return FrontDoor(app, server_route)


class FrontDoor:
    """The gateway's ASGI app. A server's MCP endpoint, the path of every call, goes straight to
    its route, which needs none of FastAPI's middleware: that stack costs about 0.04 ms of CPU per
    request here (a trivial route: 0.16 ms through FastAPI, 0.12 ms through Starlette alone), a
    twentieth of what the gateway spends on a call. Everything else, the lifespan included, goes
    through FastAPI. An error on the direct path reaches uvicorn, which logs it and answers 500."""

    def __init__(self, app: FastAPI, direct: Route) -> None:
        self.app = app
        self._direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match, child_scope = self._direct.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                scope["app"] = self.app  # as FastAPI would set it: the route reads `request.app.state`
                await self._direct.handle(scope, receive, send)
                return
        await self.app(scope, receive, send)
