"""Forward MCP Streamable HTTP between a client and one server's bridge: authorize, filter, audit.

The gateway does not re-implement MCP: it forwards bodies and SSE events unchanged, reading just
enough (method, tool name, the matching response) to authorize, to filter list results down to
what the caller may use, and to audit. A request's audit record is committed before its response
is released to the client.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stockade import metrics
from stockade.gateway import jsonrpc
from stockade.gateway.audit import AuditEvent
from stockade.gateway.audit_writer import AuditWriter
from stockade.gateway.bridge_link import BridgeLink, LinkError, Unreachable, UpstreamResponse
from stockade.gateway.identity import Principal
from stockade.gateway.pins import ToolPins
from stockade.gateway.policy import Kind, is_allowed
from stockade.gateway.sse import event_json, replace_event_data, split_events
from stockade.gateway.streams import StreamRegistry
from stockade.gateway.upstream import Replica, Upstream, client_session_id

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

CALL_KINDS = {"tools/call": Kind.tool, "prompts/get": Kind.prompt, "resources/read": Kind.resource}
# list method -> (result key, kind, the field naming each item)
LIST_METHODS = {
    "tools/list": ("tools", Kind.tool, "name"),
    "prompts/list": ("prompts", Kind.prompt, "name"),
    "resources/list": ("resources", Kind.resource, "uri"),
    "resources/templates/list": ("resourceTemplates", Kind.resource, "uriTemplate"),
}

Rewrite = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class RestReply:
    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


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
    def __init__(self, link: BridgeLink, audit: AuditWriter, pins: ToolPins, streams: StreamRegistry) -> None:
        self._link = link
        self._audit = audit
        self._pins = pins
        self.streams = streams
        self._turns = itertools.count()  # round-robin over each server's replicas

    async def record(self, event: AuditEvent) -> None:
        await self._audit.append(event)
        server = event.server or ""
        metrics.CALLS.labels(server, event.method, event.tool or "", event.outcome).inc()
        metrics.LATENCY.labels(server, event.method).observe(event.latency_ms / 1000)
        if event.outcome == "denied":
            metrics.DENIALS.labels(server).inc()

    @staticmethod
    def event(
        principal: Principal, slug: str, call: jsonrpc.Call, started: float, outcome: str, code: int | None = None,
        *, method: str | None = None, tool: str | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            member=principal.member,
            token_id=principal.token_id,
            server=slug,
            method=method or call.method,
            tool=tool if tool is not None else call.name,
            latency_ms=(time.perf_counter() - started) * 1000,
            outcome=outcome,
            error_code=code,
            request_id=call.request_id,
        )

    # -- authorization ------------------------------------------------------------------------
    async def permits(self, principal: Principal, upstream: Upstream, kind: Kind, name: str) -> bool:
        if not is_allowed(principal.rules, upstream.slug, kind, name, tool_allowlist=upstream.tool_allowlist):
            return False
        if kind is not Kind.tool:
            return True
        return await self._pins.is_callable_now(upstream.slug, name)

    async def authorize(self, principal: Principal, upstream: Upstream, call: jsonrpc.Call) -> Response | None:
        """None when the call may proceed; otherwise the (audited) refusal to send back."""
        kind = CALL_KINDS.get(call.method)
        if kind is None:
            return None
        if call.name is None:
            reason = f"{call.method} needs a {'uri' if kind is Kind.resource else 'name'}"
            code = jsonrpc.INVALID_PARAMS
        else:
            if await self.permits(principal, upstream, kind, call.name):
                return None
            reason, code = f"{kind.value} {call.name!r} is not available to you on {upstream.slug!r}", jsonrpc.PERMISSION_DENIED
        await self.record(self.event(principal, upstream.slug, call, time.perf_counter(), "denied", code))
        return JSONResponse(jsonrpc.error_response(call.id, code, reason))

    def list_filter(self, principal: Principal, upstream: Upstream, call: jsonrpc.Call) -> Rewrite | None:
        spec = LIST_METHODS.get(call.method)
        if spec is None:
            return None
        key, kind, field = spec

        async def rewrite(response: dict[str, Any]) -> dict[str, Any]:
            result = response.get("result")
            if not isinstance(result, dict) or not isinstance(result.get(key), list):
                return response
            items = [item for item in result[key] if isinstance(item, dict)]
            if kind is Kind.tool:
                review = await anyio.to_thread.run_sync(self._pins.review, upstream.slug, items)
                for name in review.newly_flagged:
                    await self.record(self.event(principal, upstream.slug, call, time.perf_counter(), "flagged",
                                                  method="tools/definition-changed", tool=name))
                items = [item for item in items if item.get(field) in review.approved]
            visible = [
                item for item in items
                if isinstance(item.get(field), str)
                and is_allowed(principal.rules, upstream.slug, kind, item[field], tool_allowlist=upstream.tool_allowlist)
            ]
            return {**response, "result": {**result, key: visible}}

        return rewrite

    # -- the REST surface -----------------------------------------------------------------------
    async def rest(self, upstream: Upstream, method: str, path: str, *, json_body: Any = None) -> RestReply:
        """One request to a replica's REST surface; raises `LinkError` when none could answer."""
        headers = {"authorization": f"Bearer {upstream.token}"}
        body = None
        if json_body is not None:
            headers["content-type"] = "application/json"
            body = json.dumps(json_body, separators=(",", ":")).encode()
        candidates = upstream.rotation(next(self._turns))
        for replica in candidates:
            try:
                response = await self._link.send(method, f"{replica.endpoint}{path}", headers=headers, body=body)
                return RestReply(response.status_code, await response.read())
            except Unreachable:
                # The request never reached this replica (it just died): another one may take it.
                if replica is candidates[-1]:
                    raise
        raise AssertionError("an upstream always has a replica")

    async def tools_for(self, principal: Principal, upstreams: Iterable[Upstream]) -> list[tuple[Upstream, dict[str, Any]]]:
        """Every tool `principal` may call on each of `upstreams`, with its server. A server that
        cannot answer right now offers nothing this time."""
        listing: list[tuple[Upstream, dict[str, Any]]] = []
        for upstream in upstreams:
            try:
                response = await self.rest(upstream, "GET", "/tools")
            except LinkError:
                continue
            if response.status_code != 200:
                continue
            rewrite = self.list_filter(principal, upstream, jsonrpc.Call(id="listing", method="tools/list", name=None))
            assert rewrite is not None
            filtered = await rewrite({"result": response.json()})
            listing += [(upstream, tool) for tool in filtered["result"].get("tools", [])]
        return listing

    async def rest_call(self, principal: Principal, upstream: Upstream, tool: str, arguments: dict[str, Any]) -> Response:
        call = jsonrpc.Call(id=f"rest-{time.time_ns()}", method="tools/call", name=tool)
        refusal = await self.authorize(principal, upstream, call)
        if refusal is not None:
            return JSONResponse({"error": f"tool {tool!r} is not available to you on {upstream.slug!r}"}, status_code=403)
        started = time.perf_counter()
        try:
            response = await self.rest(upstream, "POST", f"/tools/{tool}/call", json_body=arguments)
        except LinkError as exc:
            await self.record(self.event(principal, upstream.slug, call, started, "failed", jsonrpc.UPSTREAM_UNAVAILABLE))
            return JSONResponse({"error": f"server {upstream.slug!r} is unavailable ({exc})"}, status_code=502)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": "the server's bridge answered with something that is not JSON"}
        if response.status_code >= 400:
            outcome = jsonrpc.Outcome("error")
        else:
            outcome = jsonrpc.outcome_of({"result": payload})
        await self.record(self.event(principal, upstream.slug, call, started, outcome.outcome, outcome.error_code))
        return JSONResponse(payload, status_code=response.status_code)

    # -- forwarding -----------------------------------------------------------------------------
    def _upstream_headers(self, request: Request, upstream: Upstream, session: str | None) -> dict[str, str]:
        headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
        headers["authorization"] = f"Bearer {upstream.token}"
        if session is not None:
            headers["mcp-session-id"] = session  # the bridge's own id (clients see it prefixed)
        return headers

    async def _send(self, request: Request, upstream: Upstream, body: bytes | None) -> tuple[Replica, UpstreamResponse] | Response:
        """Send to the replica holding the request's session, else round-robin (moving on to the
        next replica only when one refuses the connection). The 404 to send when the session's
        replica is gone."""
        client_session = request.headers.get("mcp-session-id")
        session = None
        if client_session is None:
            candidates = upstream.rotation(next(self._turns))
        elif (pinned := upstream.session_replica(client_session)) is not None:
            candidates, session = (pinned[0],), pinned[1]
        else:
            return rpc_error(404, jsonrpc.INVALID_REQUEST, "session not found; start a new session")
        headers = self._upstream_headers(request, upstream, session)
        for replica in candidates:
            try:
                return replica, await self._link.send(request.method, f"{replica.endpoint}/mcp", headers=headers, body=body)
            except Unreachable:
                if replica is candidates[-1]:
                    raise
        raise AssertionError("an upstream always has a replica")

    async def forward(
        self,
        request: Request,
        upstream: Upstream,
        principal: Principal,
        *,
        body: bytes | None,
        call: jsonrpc.Call | None,
        rewrite: Rewrite | None = None,
    ) -> Response:
        """Send the request on; stream the answer back, auditing `call` when its response passes."""
        started = time.perf_counter()
        try:
            sent = await self._send(request, upstream, body)
        except LinkError as exc:
            if call is not None:
                await self.record(self.event(principal, upstream.slug, call, started, "failed", jsonrpc.UPSTREAM_UNAVAILABLE))
            return rpc_error(502, jsonrpc.UPSTREAM_UNAVAILABLE,
                             f"server {upstream.slug!r} is unavailable ({exc}); try again shortly",
                             call.id if call else None)
        if isinstance(sent, Response):
            return sent
        replica, response = sent
        headers = {k.lower(): v for k, v in response.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS}
        session_id = response.headers.get("mcp-session-id")
        if session_id is not None:
            session_id = headers["mcp-session-id"] = client_session_id(replica, session_id)
            self.streams.claim_session(upstream.slug, session_id, principal.member, principal.token_id)
        if request.method == "DELETE" and response.status_code < 300 and "mcp-session-id" in request.headers:
            self.streams.end_session(upstream.slug, request.headers["mcp-session-id"])

        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return EventRelay(self, response, status_code=response.status_code, headers=headers, slug=upstream.slug,
                              principal=principal, call=call, started=started, rewrite=rewrite)
        try:
            content = await response.read()
        except LinkError as exc:
            if call is not None:
                await self.record(self.event(principal, upstream.slug, call, started, "failed", jsonrpc.UPSTREAM_UNAVAILABLE))
            return rpc_error(502, jsonrpc.UPSTREAM_UNAVAILABLE, f"server {upstream.slug!r} broke off its answer ({exc})",
                             call.id if call else None)
        if call is not None:
            content = await self._settle(content, response.status_code, upstream.slug, principal, call, started, rewrite)
        return Response(content, status_code=response.status_code, headers=headers)

    async def _settle(
        self, content: bytes, status: int, slug: str, principal: Principal, call: jsonrpc.Call, started: float,
        rewrite: Rewrite | None,
    ) -> bytes:
        try:
            message = json.loads(content) if content else None
        except ValueError:
            message = None
        if isinstance(message, dict) and message.get("id") == call.id and "method" not in message:
            if rewrite is not None:
                message = await rewrite(message)
                content = json.dumps(message, separators=(",", ":")).encode()
            result = jsonrpc.outcome_of(message)
        else:
            result = jsonrpc.Outcome("error" if status >= 400 else "ok")
        await self.record(self.event(principal, slug, call, started, result.outcome, result.error_code))
        return content



class EventRelay(Response):
    """Relays an upstream SSE stream event by event, auditing and rewriting the call's response.

    A plain ASGI response rather than a generator, so that the cancel scope that revocation and
    client disconnects cancel is entered and left in one task, never across a `yield`.
    """

    def __init__(
        self, proxy: McpProxy, upstream_response: UpstreamResponse, *, status_code: int, headers: dict[str, str],
        slug: str, principal: Principal, call: jsonrpc.Call | None, started: float, rewrite: Rewrite | None,
    ) -> None:
        # Not Response.__init__: it would add "content-length: 0" for the absent body.
        self.status_code, self.media_type, self.background = status_code, "text/event-stream", None
        self.init_headers(headers)
        self._proxy, self._upstream = proxy, upstream_response
        self._slug, self._principal, self._call, self._started, self._rewrite = slug, principal, call, started, rewrite

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        audited = self._call is None
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async with anyio.create_task_group() as tasks:
                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tasks.cancel_scope.cancel()

                tasks.start_soon(watch_disconnect)
                with self._proxy.streams.track(self._principal, tasks.cancel_scope):
                    async for event in split_events(self._upstream.iter_raw()):
                        if not audited:
                            event, audited = await self._settle_event(event)
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                tasks.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (LinkError, OSError):
            pass  # upstream broke off; the client sees the stream end
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream.close()
                if not audited and self._call is not None:
                    # The stream ended (client gone, server died, token revoked) before the response.
                    await self._proxy.record(McpProxy.event(self._principal, self._slug, self._call, self._started,
                                                            "failed", jsonrpc.UPSTREAM_UNAVAILABLE))

    async def _settle_event(self, event: bytes) -> tuple[bytes, bool]:
        call = self._call
        message = event_json(event)
        if call is None or not isinstance(message, dict) or message.get("id") != call.id or "method" in message:
            return event, False
        if self._rewrite is not None:
            message = await self._rewrite(message)
            event = replace_event_data(event, json.dumps(message, separators=(",", ":")))
        outcome = jsonrpc.outcome_of(message)
        await self._proxy.record(McpProxy.event(self._principal, self._slug, call, self._started,
                                                outcome.outcome, outcome.error_code))
        return event, True
