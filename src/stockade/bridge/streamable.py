"""MCP Streamable HTTP at /mcp, both protocol eras, over one backend.

Era routing (per request):
- `Mcp-Session-Id` present -> a legacy session (404 if unknown or deleted);
- no session and the body is `initialize` -> a new legacy session;
- no session and an `MCP-Protocol-Version` header that is not a handshake revision, or a body
  carrying the 2026-07-28 `_meta` envelope -> stateless 2026-07-28;
- otherwise 400 (a legacy request without its session).

Answers: a request whose client accepts `text/event-stream` is answered as plain JSON when nothing
but the answer comes back, and as an SSE stream as soon as anything comes first (progress, logs,
server-to-client requests) or after `KEEPALIVE_SECONDS` of silence (then pinged). Clients that
accept only JSON get JSON; their server-to-client traffic goes to the session's GET stream.

2026-07-28 clients cannot receive server-to-client requests: a backend's sampling / elicitation /
roots request during their call is returned as an `InputRequiredResult` (`inputRequests` keyed by
the bridge's request ids, `requestState` an unguessable token naming the parked call); the retry
carrying `inputResponses` and that `requestState` answers the backend and continues THE SAME backend
call (see hub.HeldCall). `subscriptions/listen` is served by the bridge from the backend's broadcast
notifications (resource URIs are subscribed at the backend, shared and reference-counted).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from .backend import NotReady
from .hub import Hub
from .jsonrpc import (
    CLIENT_CAPABILITIES_META,
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    LOG_LEVEL_META,
    METHOD_NOT_FOUND,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    MODERN_VERSIONS,
    NAME_BEARING_METHODS,
    PARSE_ERROR,
    PROTOCOL_VERSION_META,
    REMOVED_IN_MODERN,
    REQUEST_TIMEOUT,
    SUBSCRIPTION_ID_META,
    UNSUPPORTED_PROTOCOL_VERSION,
    error_response,
    is_notification,
    is_request,
    is_response,
    notification,
    result_response,
    valid_id,
)
from .multiplexer import Call
from .sessions import ExchangePeer, LegacySession, ListenStream
from .sse import KEEPALIVE_SECONDS, PING, http_error, send_empty, send_json, sse_event, start_sse

log = logging.getLogger("stockade.bridge.streamable")

SESSION_HEADER = "mcp-session-id"
VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
HELD_PREFIX = "stockade:"
# How long a call may take to be answered without a task watching for its client to go away.
QUICK_ANSWER_SECONDS = 0.05
ERROR_STATUS = {PARSE_ERROR: 400, INVALID_REQUEST: 400, INVALID_PARAMS: 400, HEADER_MISMATCH: 400,
                MISSING_REQUIRED_CLIENT_CAPABILITY: 400, UNSUPPORTED_PROTOCOL_VERSION: 400, METHOD_NOT_FOUND: 404}


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLarge
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def accepts(headers: Headers) -> tuple[bool, bool]:
    """(accepts JSON, accepts SSE) from the Accept header."""
    media = [part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")]
    any_type = "*/*" in media
    return (any_type or "application/json" in media or "application/*" in media,
            any_type or "text/event-stream" in media or "text/*" in media)


def decode_header_value(value: str | None) -> str | None:
    """The `=?base64?...?=` sentinel of 2026-07-28 headers (else the value as is)."""
    if value is None or not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    import base64
    import binascii
    try:
        return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


@dataclass
class Responder:
    """Writes one POST's answer: JSON if nothing precedes the answer, else an SSE stream."""

    send: Send
    sse_allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    modern: bool = False
    committed: bool = False
    finished: bool = False

    async def commit(self) -> None:
        if not self.committed:
            self.committed = True
            await start_sse(self.send, self.headers)

    async def interim(self, message: JSON) -> None:
        if not self.sse_allowed:
            return
        await self.commit()
        await self.send({"type": "http.response.body", "body": sse_event(message), "more_body": True})

    async def keepalive(self) -> None:
        if not self.sse_allowed:
            return
        await self.commit()
        await self.send({"type": "http.response.body", "body": PING, "more_body": True})

    async def finish(self, message: JSON) -> None:
        if self.finished:
            return
        self.finished = True
        if self.committed:
            await self.send({"type": "http.response.body", "body": sse_event(message), "more_body": False})
            return
        status = 200
        error = message.get("error")
        if self.modern and isinstance(error, dict):
            status = ERROR_STATUS.get(error.get("code"), 200)  # type: ignore[arg-type]
        await send_json(self.send, status, message, self.headers)


async def watch_disconnect(receive: Receive, scope: anyio.CancelScope, flag: list[bool]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            flag.append(True)
            scope.cancel()
            return


@dataclass
class ModernContext:
    peer: ExchangePeer
    method: str
    response_id: Any
    pending: dict[str, JSON] = field(default_factory=dict)


class Streamable:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.backend = hub.backend
        self.options = hub.options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        headers = Headers(scope=scope)
        if method == "POST":
            await self.post(scope, receive, send, headers)
        elif method == "GET":
            await self.get(receive, send, headers)
        elif method == "DELETE":
            await self.delete(send, headers)
        else:
            await send_empty(send, 405, {"allow": "GET, POST, DELETE"})

    # -- POST ----------------------------------------------------------------------------------

    async def post(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        if self.hub.shutting_down.is_set():
            await send_json(send, 503, error_response(None, INTERNAL_ERROR, "the bridge is shutting down"))
            return
        has_json, has_sse = accepts(headers)
        if not (has_json or has_sse):
            await send_json(send, 406, error_response(
                None, INVALID_REQUEST, "Not Acceptable: accept application/json and text/event-stream"))
            return
        if not headers.get("content-type", "").lower().startswith("application/json"):
            await send_json(send, 415, error_response(
                None, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json"))
            return
        try:
            body = await read_body(receive, self.options.max_body)
        except BodyTooLarge:
            await send_json(send, 413, http_error("request_too_large",
                                                  f"the body exceeds {self.options.max_body} bytes"))
            return
        except ClientGone:
            return
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            await send_json(send, 400, error_response(None, PARSE_ERROR, "Parse error"))
            return

        session_id = headers.get(SESSION_HEADER)
        version = headers.get(VERSION_HEADER)
        if session_id is not None:
            await self.legacy_post(receive, send, headers, message, session_id, has_sse)
        elif version in MODERN_VERSIONS:  # even `initialize`: removed at that revision (404)
            await self.modern_post(scope, receive, send, headers, message, has_sse)
        elif isinstance(message, dict) and message.get("method") == "initialize":
            await self.legacy_initialize(send, message)
        elif (version is not None and version not in HANDSHAKE_VERSIONS) or _has_envelope(message):
            await self.modern_post(scope, receive, send, headers, message, has_sse)
        else:
            await send_json(send, 400, error_response(None, INVALID_REQUEST, "Bad Request: Missing session ID"))

    # -- legacy (2025-era) ---------------------------------------------------------------------

    async def legacy_initialize(self, send: Send, message: JSON) -> None:
        request_id = message.get("id")
        if not valid_id(request_id):
            await send_json(send, 400, error_response(None, INVALID_REQUEST, "initialize needs an id"))
            return
        try:
            await self.backend.wait_ready(self.options.ready_timeout)
        except NotReady as exc:
            await send_json(send, 503, error_response(request_id, INTERNAL_ERROR, str(exc), exc.detail))
            return
        if len(self.hub.sessions) >= self.options.max_sessions:
            await send_json(send, 503, error_response(request_id, INTERNAL_ERROR, "too many sessions"))
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        requested = params.get("protocolVersion")
        negotiated = self._negotiate(requested if isinstance(requested, str) else None)
        capabilities = params.get("capabilities") if isinstance(params.get("capabilities"), dict) else {}
        client_info = params.get("clientInfo") if isinstance(params.get("clientInfo"), dict) else None
        session = LegacySession(negotiated, capabilities, client_info)
        self.hub.add_session(session)
        await send_json(send, 200, result_response(request_id, self.hub.initialize_result(negotiated)),
                        {"mcp-session-id": session.id})

    async def _session(self, send: Send, session_id: str | None) -> LegacySession | None:
        """The live session `session_id` names; else None, after answering 400 (no id) or 404."""
        if session_id is None:
            await send_json(send, 400, error_response(None, INVALID_REQUEST, "Bad Request: Missing session ID"))
            return None
        session = self.hub.sessions.get(session_id)
        if session is None:
            await send_json(send, 404, error_response(None, INVALID_REQUEST, "Not Found: unknown or ended session"))
        return session

    def _negotiate(self, requested: str | None) -> str:
        """The client's revision if the bridge and the backend both speak it, else the newest they do."""
        backend_version = self.backend.protocol_version
        ceiling = backend_version if backend_version in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        ceiling_index = HANDSHAKE_VERSIONS.index(ceiling)
        if requested in HANDSHAKE_VERSIONS and HANDSHAKE_VERSIONS.index(requested) <= ceiling_index:
            return requested
        return ceiling

    async def legacy_post(self, receive: Receive, send: Send, headers: Headers, message: Any, session_id: str,
                          has_sse: bool) -> None:
        session = await self._session(send, session_id)
        if session is None:
            return
        version = headers.get(VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_VERSIONS:
            await send_json(send, 400, error_response(
                None, INVALID_REQUEST, f"Bad Request: unsupported MCP-Protocol-Version {version!r}",
                {"supported": list(HANDSHAKE_VERSIONS)}))
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            what = "batches are not supported" if isinstance(message, list) else "not a JSON-RPC 2.0 message"
            await send_json(send, 400, error_response(None, INVALID_REQUEST, f"Invalid Request: {what}"))
            return
        session_headers = {"mcp-session-id": session.id}
        if is_notification(message):
            if self.backend.ready:
                self.hub.mux.from_client_notification(session, message)
            await send_empty(send, 202, session_headers)
            return
        if is_response(message):
            if self.backend.ready:
                self.hub.mux.from_client_response(session, message)
            await send_empty(send, 202, session_headers)
            return
        if not is_request(message) or not valid_id(message.get("id")) or not isinstance(message.get("method"), str):
            await send_json(send, 400, error_response(None, INVALID_REQUEST, "Invalid Request"))
            return
        request_id, method = message["id"], message["method"]
        if method == "initialize":
            await send_json(send, 400, error_response(request_id, INVALID_REQUEST, "the session is already initialized"))
            return
        if method == "ping":
            await send_json(send, 200, result_response(request_id, {}), session_headers)
            return
        if method in ("resources/subscribe", "resources/unsubscribe"):
            await self._legacy_subscription(send, session, message, session_headers)
            return
        try:
            call = self.backend.open(session, self.hub.to_backend(message, client_modern=False, session=session),
                                     streaming=has_sse)
        except NotReady as exc:
            await send_json(send, 503, error_response(request_id, INTERNAL_ERROR, str(exc), exc.detail))
            return
        responder = Responder(send, sse_allowed=has_sse, headers=session_headers)
        await self._pump(call, receive, responder, transform=lambda m: m, modern=None)

    async def _legacy_subscription(self, send: Send, session: LegacySession, message: JSON,
                                   headers: dict[str, str]) -> None:
        request_id = message["id"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        uri = params.get("uri")
        if not isinstance(uri, str):
            await send_json(send, 200, error_response(request_id, INVALID_PARAMS, "uri is required"), headers)
            return
        try:
            if message["method"] == "resources/subscribe":
                answer = await self.hub.subscribe(session.uid, uri)
                if answer is None or "result" in answer:
                    session.subscriptions.add(uri)
            else:
                answer = await self.hub.unsubscribe(session.uid, uri)
                session.subscriptions.discard(uri)
        except NotReady as exc:
            await send_json(send, 503, error_response(request_id, INTERNAL_ERROR, str(exc), exc.detail))
            return
        if answer is None:
            out = result_response(request_id, {})
        else:
            out = dict(answer, id=request_id)
        await send_json(send, 200, out, headers)

    async def get(self, receive: Receive, send: Send, headers: Headers) -> None:
        session = await self._session(send, headers.get(SESSION_HEADER))
        if session is None:
            return
        if not accepts(headers)[1]:
            await send_json(send, 406, error_response(None, INVALID_REQUEST, "Not Acceptable: accept text/event-stream"))
            return
        if session.get_stream_open:
            await send_json(send, 409, error_response(None, INVALID_REQUEST, "Conflict: a GET stream is already open"))
            return
        last = headers.get("last-event-id")
        cursor: int | None = int(last) if last is not None and last.isdigit() else None
        session.get_stream_open = True
        gone: list[bool] = []
        try:
            await start_sse(send, {"mcp-session-id": session.id})
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_disconnect, receive, tg.cancel_scope, gone)
                while not session.closed and not self.hub.shutting_down.is_set():
                    changed = session.changed
                    events = session.events_after(cursor)
                    for event_id, event in events:
                        await send({"type": "http.response.body", "body": sse_event(event, event_id),
                                    "more_body": True})
                        cursor = event_id
                        session.mark_delivered(event_id)
                    if events:
                        continue
                    with anyio.move_on_after(KEEPALIVE_SECONDS) as idle:
                        await changed.wait()
                    if idle.cancelled_caught:
                        await send({"type": "http.response.body", "body": PING, "more_body": True})
                tg.cancel_scope.cancel()
            if not gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass
        finally:
            session.get_stream_open = False
            session.last_seen = time.monotonic()

    async def delete(self, send: Send, headers: Headers) -> None:
        session = await self._session(send, headers.get(SESSION_HEADER))
        if session is None:
            return
        await self.hub.end_session(session, "the client ended the session")
        await send_empty(send, 200)

    # -- the answer pump (both eras) -----------------------------------------------------------

    async def _pump(self, call: Call, receive: Receive, responder: Responder,
                    transform: Callable[[JSON], JSON], modern: ModernContext | None) -> None:
        # Most calls are answered within milliseconds, with nothing before the answer. Such an
        # answer goes out without the task that watches for the client going away: that task and
        # its cancellation cost a tenth of the bridge's work on a call (measured), and a client
        # that leaves during the short wait is noticed when the watch starts.
        if call.inbox.peek() is None:
            with anyio.move_on_after(QUICK_ANSWER_SECONDS):
                await call.inbox.wait()
        if call.response is not None and call.inbox.peek() is call.response:
            call.inbox.get_nowait()
            await self._finish_call(call.response, responder, transform, modern)
            return
        gone: list[bool] = []
        timeout = self.options.request_timeout
        with anyio.move_on_after(timeout) as timer:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_disconnect, receive, tg.cancel_scope, gone)
                await self._pump_messages(call, responder, transform, modern)
                tg.cancel_scope.cancel()
        if gone:
            if modern is not None:
                if not responder.finished:  # closing the stream is how a 2026-07-28 client cancels
                    self.hub.mux.cancel(call, "the client closed the request", answer=False)
                    self.hub.mux.close_peer(modern.peer)
            else:
                call.streaming = False  # anything further for it goes to the session's GET stream
            return
        if timer.cancelled_caught and not responder.finished:
            self.hub.mux.cancel(call, f"no answer within {timeout:g} s", answer=False)
            if modern is not None:
                self.hub.mux.close_peer(modern.peer)
            response_id = modern.response_id if modern is not None else call.client_id
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await responder.finish(error_response(response_id, REQUEST_TIMEOUT,
                                                      f"the server did not answer within {timeout:g} s"))

    async def _pump_messages(self, call: Call, responder: Responder, transform: Callable[[JSON], JSON],
                             modern: ModernContext | None) -> None:
        while True:
            message = call.inbox.get_nowait()
            if message is None:
                with anyio.move_on_after(KEEPALIVE_SECONDS) as idle:
                    message = await call.inbox.get()
                if idle.cancelled_caught or message is None:
                    await responder.keepalive()
                    continue
            if message is call.response:
                await self._finish_call(message, responder, transform, modern)
                return
            if modern is not None and is_request(message):
                _ask(modern, message)
                # Requests the backend sent together (one call asking concurrently) are all on the
                # wire before its answer to a ping: they go out in one InputRequiredResult.
                await self.backend.settle()
                while (queued := call.inbox.get_nowait()) is not None:
                    if queued is call.response:  # it finished meanwhile: that is the answer
                        await self._finish_call(queued, responder, transform, modern)
                        return
                    if is_request(queued):
                        _ask(modern, queued)
                    else:
                        await responder.interim(queued)
                token = HELD_PREFIX + self.hub.hold(modern.peer, call, modern.method, modern.pending)
                await responder.finish(result_response(modern.response_id, {
                    "resultType": "input_required", "inputRequests": dict(modern.pending), "requestState": token}))
                return
            await responder.interim(message)

    async def _finish_call(self, response: JSON, responder: Responder,
                           transform: Callable[[JSON], JSON], modern: ModernContext | None) -> None:
        if modern is not None:
            response = dict(response, id=modern.response_id)
            self.hub.mux.close_peer(modern.peer)
        await responder.finish(transform(response))

    # -- stateless (2026-07-28) ----------------------------------------------------------------

    async def modern_post(self, scope: Scope, receive: Receive, send: Send, headers: Headers, message: Any,
                          has_sse: bool) -> None:
        async def reject(code: int, text: str, data: Any = None, request_id: Any = None) -> None:
            await send_json(send, ERROR_STATUS.get(code, 400), error_response(request_id, code, text, data))

        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            await reject(INVALID_REQUEST, "Body must be a single JSON-RPC request or notification object")
            return
        version_header = headers.get(VERSION_HEADER)
        if "id" not in message:
            if not isinstance(message.get("method"), str):
                await reject(INVALID_REQUEST, "Body must be a single JSON-RPC request or notification object")
            elif version_header not in MODERN_VERSIONS:
                await reject(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                             {"supported": list(MODERN_VERSIONS), "requested": version_header})
            else:
                await send_empty(send, 202)  # no client-to-server notifications at this revision
            return
        request_id = message.get("id")
        method = message.get("method")
        if not valid_id(request_id) or not isinstance(method, str):
            await reject(INVALID_REQUEST, "Body must be a single JSON-RPC request or notification object")
            return
        if method in REMOVED_IN_MODERN:
            await reject(METHOD_NOT_FOUND, f"Method not found: {method} does not exist at 2026-07-28",
                         request_id=request_id)
            return
        for name in (VERSION_HEADER, METHOD_HEADER, NAME_HEADER):
            if len(headers.getlist(name)) > 1:
                await reject(HEADER_MISMATCH, f"{name} header appears more than once", request_id=request_id)
                return
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if not isinstance(meta, dict):
            await reject(INVALID_PARAMS, f"params._meta must be an object carrying the required "
                         f"{PROTOCOL_VERSION_META!r} and {CLIENT_CAPABILITIES_META!r} envelope keys",
                         request_id=request_id)
            return
        missing = [k for k in (PROTOCOL_VERSION_META, CLIENT_CAPABILITIES_META) if k not in meta]
        if missing:
            await reject(INVALID_PARAMS, f"params._meta is missing the required envelope key(s): {', '.join(missing)}",
                         request_id=request_id)
            return
        version = meta[PROTOCOL_VERSION_META]
        if version_header is None or version_header != version:
            await reject(HEADER_MISMATCH, "mcp-protocol-version header does not match the request envelope's "
                         "protocol version", request_id=request_id)
            return
        if headers.get(METHOD_HEADER) != method:
            await reject(HEADER_MISMATCH, "mcp-method header does not match the request body's method",
                         request_id=request_id)
            return
        name_key = NAME_BEARING_METHODS.get(method)
        if name_key is not None:
            body_value = params.get(name_key)  # type: ignore[union-attr]
            if body_value is not None and decode_header_value(headers.get(NAME_HEADER)) != body_value:
                await reject(HEADER_MISMATCH, f"mcp-name header does not match the request body's {name_key!r} "
                             "parameter", request_id=request_id)
                return
        if not isinstance(version, str):
            await reject(INVALID_PARAMS, "the protocol-version envelope value must be a string", request_id=request_id)
            return
        if version not in MODERN_VERSIONS:
            await reject(UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                         {"supported": list(MODERN_VERSIONS), "requested": version}, request_id)
            return
        if "inputResponses" in params and not _valid_input_responses(params["inputResponses"]):  # type: ignore[operator]
            await reject(INVALID_PARAMS, "inputResponses must map request keys to result objects",
                         request_id=request_id)
            return
        if method == "subscriptions/listen" and not has_sse:
            await send_json(send, 406, error_response(request_id, INVALID_REQUEST,
                                                      "Not Acceptable: subscriptions/listen answers text/event-stream"))
            return
        try:
            await self.backend.wait_ready(self.options.ready_timeout)
        except NotReady as exc:
            await send_json(send, 503, error_response(request_id, INTERNAL_ERROR, str(exc), exc.detail))
            return
        if method == "server/discover":
            await send_json(send, 200, result_response(request_id, self.hub.discover_result()))
            return
        if method == "subscriptions/listen" and self.backend.era == "legacy":
            await self.listen(receive, send, request_id, params)  # type: ignore[arg-type]
            return
        capabilities = meta.get(CLIENT_CAPABILITIES_META)
        capabilities = capabilities if isinstance(capabilities, dict) else {}
        log_level = meta.get(LOG_LEVEL_META) if isinstance(meta.get(LOG_LEVEL_META), str) else None
        state = params.get("requestState") if isinstance(params, dict) else None
        context: ModernContext
        if isinstance(state, str) and state.startswith(HELD_PREFIX):
            held = self.hub.held.pop(state[len(HELD_PREFIX):], None)
            if held is None or held.method != method:
                await reject(INVALID_PARAMS, "unknown or expired requestState", request_id=request_id)
                return
            peer, call = held.peer, held.call
            call.parked = False
            peer.capabilities, peer.log_level = capabilities, log_level
            responses = params.get("inputResponses")  # type: ignore[union-attr]
            if isinstance(responses, dict):
                for key, value in responses.items():
                    if key in held.pending:
                        del held.pending[key]
                        self.hub.mux.from_client_response(peer, {"jsonrpc": "2.0", "id": _request_id_of(key),
                                                                 "result": value})
            context = ModernContext(peer, method, request_id, dict(held.pending))
        else:
            peer = ExchangePeer(capabilities, log_level)
            try:
                call = self.backend.open(peer, self.hub.to_backend(message, client_modern=True), streaming=True)
            except NotReady as exc:
                await send_json(send, 503, error_response(request_id, INTERNAL_ERROR, str(exc), exc.detail))
                return
            context = ModernContext(peer, method, request_id)
        responder = Responder(send, sse_allowed=has_sse, modern=True)
        await self._pump(call, receive, responder, transform=lambda m: self.hub.to_modern_client(m, method),
                         modern=context)

    async def listen(self, receive: Receive, send: Send, request_id: Any, params: JSON) -> None:
        requested = params.get("notifications") if isinstance(params.get("notifications"), dict) else {}
        honored: JSON = {}
        for key in ("toolsListChanged", "promptsListChanged", "resourcesListChanged"):
            if requested.get(key) is True:
                honored[key] = True
        uris = requested.get("resourceSubscriptions")
        wanted = [u for u in uris if isinstance(u, str)] if isinstance(uris, list) else []
        resources_caps = self.backend.capabilities.get("resources")
        can_subscribe = isinstance(resources_caps, dict) and resources_caps.get("subscribe") is True
        stream = ListenStream(request_id, honored)
        subscribed: list[str] = []
        if wanted and can_subscribe:
            for uri in wanted:
                answer = await self.hub.subscribe(stream.uid, uri)
                if answer is None or "result" in answer:
                    subscribed.append(uri)
            if subscribed:
                honored["resourceSubscriptions"] = subscribed
        stream.resources = frozenset(subscribed)
        meta = {SUBSCRIPTION_ID_META: request_id}
        self.hub.listen_streams.add(stream)
        self.hub.mux.listeners.add(stream)
        gone: list[bool] = []
        try:
            await start_sse(send)
            await send({"type": "http.response.body", "more_body": True, "body": sse_event(notification(
                "notifications/subscriptions/acknowledged", {"notifications": honored, "_meta": meta}))})
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_disconnect, receive, tg.cancel_scope, gone)
                while True:
                    with anyio.move_on_after(KEEPALIVE_SECONDS) as idle:
                        try:
                            event = await stream.inbox.get()
                        except anyio.EndOfStream:
                            break
                    if idle.cancelled_caught:
                        await send({"type": "http.response.body", "body": PING, "more_body": True})
                        continue
                    await send({"type": "http.response.body", "body": sse_event(event), "more_body": True})
                tg.cancel_scope.cancel()
            if not gone:  # graceful end (shutdown): the listen result is the last frame
                await send({"type": "http.response.body", "more_body": False, "body": sse_event(
                    result_response(request_id, {"_meta": meta, "resultType": "complete"}))})
        except OSError:
            pass
        finally:
            self.hub.listen_streams.discard(stream)
            self.hub.mux.listeners.discard(stream)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.hub.release_resources(stream.uid)


def _has_envelope(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and PROTOCOL_VERSION_META in meta


def _ask(context: ModernContext, request: JSON) -> None:
    """A backend's server-to-client request becomes one of the client's `inputRequests`."""
    context.pending[str(request["id"])] = {"method": request["method"],
                                           **({"params": request["params"]} if "params" in request else {})}


def _valid_input_responses(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(answer, dict) for answer in value.values())


def _request_id_of(key: str) -> Any:
    return key


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
