"""Forward MCP Streamable HTTP between a client and one server's bridge, auditing each request.

The gateway does not re-implement MCP: it forwards bodies and SSE events unchanged, reading just
enough (method, tool name, the matching response) to authorize and audit. The audit record of a
request is committed before its response is released to the client.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Awaitable
from typing import Any

import anyio
import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from stockade.gateway import jsonrpc
from stockade.gateway.audit import AuditEvent, AuditLog
from stockade.gateway.identity import Principal
from stockade.gateway.sse import event_json, split_events
from stockade.gateway.upstream import Upstream

MAX_BODY_BYTES = 4 * 1024 * 1024
FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
)
FORWARDED_RESPONSE_HEADERS = ("content-type", "mcp-session-id", "mcp-protocol-version", "cache-control")

AuditSink = Callable[[AuditEvent], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def rpc_error(status: int, code: int, message: str, request_id: Any = None) -> JSONResponse:
    return JSONResponse(jsonrpc.error_response(request_id, code, message), status_code=status)


class McpProxy:
    def __init__(self, http: httpx2.AsyncClient, audit: AuditLog) -> None:
        self._http = http
        self._audit = audit

    async def _record(self, event: AuditEvent) -> None:
        await anyio.to_thread.run_sync(self._audit.append, event)

    def _event(
        self, principal: Principal, slug: str, call: jsonrpc.Call, started: float, outcome: str, code: int | None = None
    ) -> AuditEvent:
        return AuditEvent(
            member=principal.member,
            token_id=principal.token_id,
            server=slug,
            method=call.method,
            tool=call.name,
            latency_ms=(time.perf_counter() - started) * 1000,
            outcome=outcome,
            error_code=code,
            request_id=call.request_id,
        )

    async def deny(self, principal: Principal, slug: str, call: jsonrpc.Call, reason: str) -> JSONResponse:
        await self._record(self._event(principal, slug, call, time.perf_counter(), "denied", jsonrpc.PERMISSION_DENIED))
        return JSONResponse(jsonrpc.error_response(call.id, jsonrpc.PERMISSION_DENIED, reason), status_code=200)

    def _upstream_headers(self, request: Request, upstream: Upstream) -> dict[str, str]:
        headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
        headers["authorization"] = f"Bearer {upstream.token}"
        return headers

    async def forward(
        self,
        request: Request,
        upstream: Upstream,
        principal: Principal,
        *,
        body: bytes | None,
        call: jsonrpc.Call | None,
    ) -> Response:
        """Send the request on; stream the answer back, auditing `call` when its response passes."""
        started = time.perf_counter()
        upstream_request = self._http.build_request(
            request.method,
            f"{upstream.endpoint}/mcp",
            headers=self._upstream_headers(request, upstream),
            content=body,
        )
        try:
            response = await self._http.send(upstream_request, stream=True)
        except httpx2.HTTPError as exc:
            if call is not None:
                await self._record(self._event(principal, upstream.slug, call, started, "failed", jsonrpc.UPSTREAM_UNAVAILABLE))
            return rpc_error(
                502,
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"server {upstream.slug!r} is unavailable ({type(exc).__name__}); try again shortly",
                call.id if call else None,
            )
        headers = {k: v for k, v in response.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS}
        content_type = response.headers.get("content-type", "")

        if content_type.startswith("text/event-stream"):
            return StreamingResponse(
                self._relay_events(response, upstream.slug, principal, call, started),
                status_code=response.status_code,
                headers=headers,
            )
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        if call is not None:
            outcome = jsonrpc.Outcome("error", None) if response.status_code >= 400 else None
            try:
                parsed = json.loads(content) if content else None
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("id") == call.id:
                outcome = jsonrpc.outcome_of(parsed)
            outcome = outcome or jsonrpc.Outcome("ok")
            await self._record(self._event(principal, upstream.slug, call, started, outcome.outcome, outcome.error_code))
        return Response(content, status_code=response.status_code, headers=headers)

    async def _relay_events(
        self,
        response: httpx2.Response,
        slug: str,
        principal: Principal,
        call: jsonrpc.Call | None,
        started: float,
    ) -> AsyncIterator[bytes]:
        audited = call is None
        try:
            async for event in split_events(response.aiter_raw()):
                if not audited and call is not None:
                    message = event_json(event)
                    if isinstance(message, dict) and message.get("id") == call.id and "method" not in message:
                        result = jsonrpc.outcome_of(message)
                        await self._record(self._event(principal, slug, call, started, result.outcome, result.error_code))
                        audited = True
                yield event
        finally:
            await response.aclose()
            if not audited and call is not None:
                # The stream ended (client gone, server died) before the response: still audited.
                with anyio.CancelScope(shield=True):
                    await self._record(self._event(principal, slug, call, started, "failed", jsonrpc.UPSTREAM_UNAVAILABLE))
