"""JSON-RPC multiplexing of many clients onto one stdio server (pure, synchronous, no I/O).

The backend sees exactly one client: the bridge. Every client request, from whichever HTTP session
or stateless exchange (a `Peer`), is forwarded under a fresh backend id; its progress token is
replaced with one of the bridge's own; the backend's answer is rewritten back to the client's id and
handed to exactly that `Call`. Client ids are never compared across peers, so two sessions both
using id 1 can never see each other's answers.

Routing of what the backend sends on its own:

- responses: by backend id to the one `Call` (late answers to cancelled calls are dropped);
- `notifications/progress`: by the bridge's progress token to the one `Call`, token translated back;
- `notifications/cancelled` for a server-to-client request: to the peer that received it, id translated;
- `notifications/{tools,prompts,resources}/list_changed` and `notifications/resources/updated`:
  broadcast to the registered `Listener`s (each filters what it subscribed to);
- server-to-client requests (`sampling/createMessage`, `elicitation/create`, `roots/list`) and any
  other notification (e.g. `notifications/message`): stdio carries no "related request", so the
  bridge ATTRIBUTES them: if every interactive call in flight (`tools/call`, `prompts/get`,
  `resources/read`, `completion/complete` and unknown methods; not listings) belongs to ONE peer,
  that peer gets it, on the stream of its most recent such call. Calls PARKED on an
  `InputRequiredResult` (their client has the questions and has not retried yet) count only when no
  other call is in flight: they are blocked on those answers. Otherwise (none, or several peers)
  it is not delivered: a request is answered to the backend with an error (never guessed: a
  sampling prompt must not reach another client), a notification is dropped. A request also needs
  the peer to have declared the matching capability (`sampling`, `elicitation`, `roots`); if it did
  not, `on_undeclared` is told (the hub fails a 2026-07-28 client's call with -32021);
- notifications carrying `_meta["io.modelcontextprotocol/subscriptionId"]` equal to the backend id of
  a call in flight (a 2026-07-28 backend's `subscriptions/listen` stream) go to that call, the id
  translated back;
- `ping` from the backend is answered by the bridge itself.

Answers to server-to-client requests come back from the peer under the id the bridge gave them and
are rewritten to the backend's id.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from .jsonrpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    JSON,
    LIST_CHANGED_NOTIFICATIONS,
    RESOURCE_UPDATED,
    SUBSCRIPTION_ID_META,
    RequestId,
    error_response,
    is_notification,
    is_request,
    is_response,
    notification,
    params_of,
    progress_token_of,
    result_response,
    valid_id,
)

log = logging.getLogger("stockade.bridge.multiplexer")

REQUEST_CANCELLED = -32800
NON_INTERACTIVE_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "prompts/list", "resources/list",
    "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "logging/setLevel",
    "subscriptions/listen",
})
CAPABILITY_FOR = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}
DEFAULT_MAILBOX_LIMIT = 1024

_peer_ids = itertools.count(1)


def next_peer_uid() -> int:
    return next(_peer_ids)


class Mailbox:
    """A single-consumer queue. Essential messages (answers, server requests) are never dropped;
    others (progress, logs) are dropped beyond `limit` so one slow client cannot grow memory."""

    def __init__(self, limit: int = DEFAULT_MAILBOX_LIMIT) -> None:
        self._items: deque[JSON] = deque()
        self._limit = limit
        self._event = anyio.Event()
        self.closed = False
        self.dropped = 0

    def put(self, message: JSON, *, essential: bool = False) -> bool:
        if self.closed:
            return False
        if not essential and len(self._items) >= self._limit:
            self.dropped += 1
            return False
        self._items.append(message)
        self._event.set()
        return True

    def peek(self) -> JSON | None:
        return self._items[0] if self._items else None

    def get_nowait(self) -> JSON | None:
        return self._items.popleft() if self._items else None

    async def wait(self) -> None:
        """Return once a message is waiting or the inbox is closed."""
        while not self._items and not self.closed:
            self._event = anyio.Event()
            await self._event.wait()

    async def get(self) -> JSON:
        """The next message; raises `anyio.EndOfStream` once closed and drained."""
        await self.wait()
        if not self._items:
            raise anyio.EndOfStream
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self.closed = True
        self._event.set()


class Peer(Protocol):
    """A client of the bridge: a legacy HTTP session, a stateless exchange, a REST call, the bridge."""

    uid: int

    def supports(self, capability: str) -> bool: ...

    def next_request_id(self) -> RequestId: ...

    def deliver(self, message: JSON, call: Call | None) -> None:
        """A message for this peer: related to `call` (still in flight) or to none."""


class AnswerOnlyPeer:
    """A peer that takes nothing but the answers to its own calls (which reach each call's inbox):
    no notifications, no server-to-client requests. The bridge's own requests and REST callers."""

    def __init__(self) -> None:
        self.uid = next_peer_uid()

    def supports(self, capability: str) -> bool:
        return False

    def next_request_id(self) -> RequestId:
        return 0

    def deliver(self, message: JSON, call: Call | None) -> None:
        pass


class Listener(Protocol):
    def on_broadcast(self, message: JSON) -> None: ...


@dataclass(eq=False)
class Call:
    """One client request in flight at the backend."""

    peer: Peer
    client_id: RequestId | None
    backend_id: int
    method: str
    client_token: RequestId | None = None
    backend_token: str | None = None
    seq: int = 0
    streaming: bool = True
    inbox: Mailbox = field(default_factory=Mailbox)
    done: bool = False
    response: JSON | None = None
    parked: bool = False
    """Its client was handed an InputRequiredResult and has not retried yet."""

    @property
    def interactive(self) -> bool:
        return self.method not in NON_INTERACTIVE_METHODS


@dataclass(eq=False)
class ServerRequest:
    """A backend request forwarded to a peer, awaiting its answer."""

    backend_id: RequestId
    client_id: RequestId
    peer: Peer
    call: Call
    method: str


class Multiplexer:
    def __init__(self, emit: Callable[[JSON], None]) -> None:
        self._emit = emit
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self._calls: dict[int, Call] = {}
        self._by_client: dict[tuple[int, RequestId], Call] = {}
        self._tokens: dict[str, Call] = {}
        self._server_requests: dict[tuple[int, RequestId], ServerRequest] = {}
        self._server_by_backend: dict[RequestId, ServerRequest] = {}
        self.listeners: set[Listener] = set()
        self.on_undeclared: Callable[[Call, str], None] = lambda call, capability: None
        """Told when a server request is refused because `call`'s client did not declare `capability`."""

    # -- introspection -------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def calls_of(self, peer: Peer) -> list[Call]:
        return [call for call in self._calls.values() if call.peer.uid == peer.uid]

    def server_requests_of(self, peer: Peer) -> list[ServerRequest]:
        return [sr for sr in self._server_requests.values() if sr.peer.uid == peer.uid]

    def server_request(self, peer: Peer, client_id: RequestId) -> ServerRequest | None:
        return self._server_requests.get((peer.uid, client_id))

    # -- client -> backend ---------------------------------------------------------------------

    def open(self, peer: Peer, message: JSON, *, streaming: bool = True) -> Call:
        """Forward a client request; the answer arrives in the returned call's inbox."""
        client_id = message.get("id")
        key = (peer.uid, client_id)
        previous = self._by_client.get(key) if client_id is not None else None
        if previous is not None:  # a reused id supersedes the call still holding it
            self.cancel(previous, "superseded by a new request with the same id")
        backend_id = next(self._ids)
        out = dict(message)
        out["id"] = backend_id
        call = Call(peer=peer, client_id=client_id, backend_id=backend_id, method=str(message.get("method")),
                    seq=next(self._seq), streaming=streaming)
        token = progress_token_of(message)
        if token is not None:
            params = dict(out["params"])
            meta = dict(params["_meta"])
            call.client_token = token
            call.backend_token = f"stockade-{backend_id}"
            meta["progressToken"] = call.backend_token
            params["_meta"] = meta
            out["params"] = params
            self._tokens[call.backend_token] = call
        self._calls[backend_id] = call
        if client_id is not None:
            self._by_client[key] = call
        self._emit(out)
        return call

    def _forget(self, call: Call) -> None:
        self._calls.pop(call.backend_id, None)
        if call.client_id is not None and self._by_client.get((call.peer.uid, call.client_id)) is call:
            del self._by_client[(call.peer.uid, call.client_id)]
        if call.backend_token is not None:
            self._tokens.pop(call.backend_token, None)
        call.done = True

    def cancel(self, call: Call, reason: str = "cancelled by the client", *, answer: bool = True) -> None:
        """Tell the backend to stop `call`; its waiter gets a REQUEST_CANCELLED error."""
        if call.done:
            return
        self._forget(call)
        self._emit(notification("notifications/cancelled", {"requestId": call.backend_id, "reason": reason}))
        if answer:
            self._finish(call, error_response(call.client_id, REQUEST_CANCELLED, "Request cancelled"))

    def fail(self, call: Call, error: JSON, reason: str) -> None:
        """Stop `call` at the backend and answer its client with `error` (a JSON-RPC error object)."""
        if call.done:
            return
        self.cancel(call, reason, answer=False)
        self._finish(call, {"jsonrpc": "2.0", "id": call.client_id, "error": error})

    def from_client_notification(self, peer: Peer, message: JSON) -> None:
        method = message.get("method")
        params = params_of(message) or {}
        if method == "notifications/cancelled":
            call = self._by_client.get((peer.uid, params.get("requestId")))  # type: ignore[arg-type]
            if call is not None:
                self.cancel(call, str(params.get("reason") or "cancelled by the client"))
            return
        if method == "notifications/initialized":
            return  # the bridge initialized the backend itself, once
        self._emit(message)

    def from_client_response(self, peer: Peer, message: JSON) -> bool:
        """An answer to a server-to-client request; False if nothing waits for it."""
        request_id = message.get("id")
        if not valid_id(request_id):
            return False
        pending = self._server_requests.pop((peer.uid, request_id), None)  # type: ignore[arg-type]
        if pending is None:
            return False
        self._server_by_backend.pop(pending.backend_id, None)
        out = dict(message)
        out["id"] = pending.backend_id
        self._emit(out)
        return True

    def close_peer(self, peer: Peer, reason: str = "the client went away") -> None:
        """Cancel a departing peer's calls and refuse its unanswered server requests."""
        for call in self.calls_of(peer):
            self.cancel(call, reason, answer=False)
        for pending in self.server_requests_of(peer):
            self._server_requests.pop((peer.uid, pending.client_id), None)
            self._server_by_backend.pop(pending.backend_id, None)
            self._emit(error_response(pending.backend_id, INTERNAL_ERROR, reason))

    def fail_all(self, error: JSON) -> None:
        """The backend is gone: every call gets `error` (a JSON-RPC error object)."""
        for call in list(self._calls.values()):
            self._forget(call)
            self._finish(call, {"jsonrpc": "2.0", "id": call.client_id, "error": dict(error)})
        self._server_requests.clear()
        self._server_by_backend.clear()

    # -- backend -> clients --------------------------------------------------------------------

    def from_backend(self, message: JSON) -> None:
        if is_response(message):
            self._route_response(message)
        elif is_request(message):
            self._route_server_request(message)
        elif is_notification(message):
            self._route_notification(message)
        else:
            log.warning("dropped a message from the server that is not JSON-RPC (keys: %s)", sorted(message)[:10])

    @staticmethod
    def _finish(call: Call, response: JSON) -> None:
        call.response = response
        call.inbox.put(response, essential=True)

    def _route_response(self, message: JSON) -> None:
        backend_id = message.get("id")
        call = self._calls.get(backend_id) if isinstance(backend_id, int) and not isinstance(backend_id, bool) else None
        if call is None:
            log.debug("dropped an answer to unknown or cancelled request %r", backend_id)
            return
        self._forget(call)
        out = dict(message)
        out["id"] = call.client_id
        self._finish(call, out)

    def _candidates(self) -> list[Call]:
        interactive = [call for call in self._calls.values() if call.interactive]
        return [call for call in interactive if not call.parked] or interactive

    def attribute(self) -> Call | None:
        """The call a backend-initiated message belongs to, if that is unambiguous (see module doc)."""
        candidates = self._candidates()
        if not candidates or len({call.peer.uid for call in candidates}) != 1:
            return None
        return max(candidates, key=lambda c: c.seq)

    def _route_server_request(self, message: JSON) -> None:
        method = str(message["method"])
        backend_id = message["id"]
        if method == "ping":
            self._emit(result_response(backend_id, {}))
            return
        target = self.attribute()
        capability = CAPABILITY_FOR.get(method)
        if target is None or (capability is not None and not target.peer.supports(capability)):
            why = ("no client request is in flight" if not self._candidates() else
                   "requests from several clients are in flight" if target is None else
                   f"the client did not declare the {capability} capability")
            log.info("refused the server's %s request: %s", method, why)
            self._emit(error_response(backend_id, INVALID_REQUEST,
                                      f"the bridge cannot route {method} to a client: {why}"))
            if target is not None and capability is not None:
                self.on_undeclared(target, capability)
            return
        client_id = target.peer.next_request_id()
        pending = ServerRequest(backend_id=backend_id, client_id=client_id, peer=target.peer, call=target,
                                method=method)
        self._server_requests[(target.peer.uid, client_id)] = pending
        self._server_by_backend[backend_id] = pending
        out = dict(message)
        out["id"] = client_id
        target.peer.deliver(out, target)

    def _subscription_call(self, params: JSON) -> Call | None:
        """The `subscriptions/listen` call a (2026-07-28 backend's) notification is stamped for."""
        meta = params.get("_meta")
        backend_id = meta.get(SUBSCRIPTION_ID_META) if isinstance(meta, dict) else None
        if not isinstance(backend_id, int) or isinstance(backend_id, bool):
            return None
        call = self._calls.get(backend_id)
        return call if call is not None and call.method == "subscriptions/listen" else None

    def _route_notification(self, message: JSON) -> None:
        method = message["method"]
        params = params_of(message) or {}
        if method == "notifications/progress":
            token = params.get("progressToken")
            call = self._tokens.get(token) if isinstance(token, str) else None
            if call is None:
                log.debug("dropped progress for unknown token %r", token)
                return
            out = dict(message)
            out["params"] = dict(params, progressToken=call.client_token)
            call.peer.deliver(out, call)
            return
        if method == "notifications/cancelled":
            pending = self._server_by_backend.pop(params.get("requestId"), None)  # type: ignore[arg-type]
            if pending is None:
                return
            self._server_requests.pop((pending.peer.uid, pending.client_id), None)
            out = dict(message)
            out["params"] = dict(params, requestId=pending.client_id)
            pending.peer.deliver(out, None if pending.call.done else pending.call)
            return
        subscription = self._subscription_call(params)
        if subscription is not None:
            out = dict(message)
            out["params"] = dict(params, _meta=dict(params["_meta"], **{SUBSCRIPTION_ID_META: subscription.client_id}))
            subscription.peer.deliver(out, subscription)
            return
        if method in LIST_CHANGED_NOTIFICATIONS or method == RESOURCE_UPDATED:
            for listener in list(self.listeners):
                listener.on_broadcast(message)
            return
        target = self.attribute()
        if target is None:
            log.debug("dropped %s: not attributable to one client", method)
            return
        target.peer.deliver(message, target)
