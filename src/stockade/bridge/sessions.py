"""Who the clients are: legacy HTTP sessions, stateless (2026-07-28) exchanges, REST callers,
`subscriptions/listen` streams, and the resource subscriptions they share at the backend."""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

from .jsonrpc import (
    JSON,
    LIST_CHANGED_NOTIFICATIONS,
    RESOURCE_UPDATED,
    SUBSCRIPTION_ID_META,
    RequestId,
    params_of,
)
from .multiplexer import Call, Mailbox, next_peer_uid

log = logging.getLogger("stockade.bridge.sessions")

EVENT_BUFFER = 1000
"""Events a legacy session keeps for `Last-Event-ID` resumption of its GET stream."""
GATED_CAPABILITIES = frozenset({"sampling", "elicitation", "roots"})


class LegacySession:
    """A 2025-era client session (`Mcp-Session-Id`): its GET stream's events and its calls."""

    def __init__(self, protocol_version: str, capabilities: JSON, client_info: JSON | None) -> None:
        self.uid = next_peer_uid()
        self.id = secrets.token_urlsafe(32)
        self.protocol_version = protocol_version
        self.capabilities = capabilities
        self.client_info = client_info
        self.subscriptions: set[str] = set()
        self.last_seen = time.monotonic()
        self.closed = False
        self.get_stream_open = False
        self._request_ids = itertools.count(1)
        self._events: deque[tuple[int, JSON]] = deque()
        self._event_ids = itertools.count(1)
        self._delivered = 0
        self._changed = anyio.Event()

    # Peer
    def supports(self, capability: str) -> bool:
        return capability not in GATED_CAPABILITIES or isinstance(self.capabilities.get(capability), dict)

    def next_request_id(self) -> RequestId:
        return next(self._request_ids)

    def deliver(self, message: JSON, call: Call | None) -> None:
        if call is not None and call.streaming and not call.done:
            call.inbox.put(message, essential="id" in message)
        else:
            self.push_event(message)

    # Listener
    def on_broadcast(self, message: JSON) -> None:
        method = message.get("method")
        if method in LIST_CHANGED_NOTIFICATIONS:
            self.push_event(message)
        elif method == RESOURCE_UPDATED:
            uri = (params_of(message) or {}).get("uri")
            if uri in self.subscriptions:
                self.push_event(message)

    # GET stream
    def push_event(self, message: JSON) -> None:
        if self.closed:
            return
        self._events.append((next(self._event_ids), message))
        while len(self._events) > EVENT_BUFFER:
            self._events.popleft()
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def events_after(self, event_id: int | None) -> list[tuple[int, JSON]]:
        """Buffered events after `event_id` (None: those not yet delivered on any GET stream)."""
        after = self._delivered if event_id is None else event_id
        return [(eid, msg) for eid, msg in self._events if eid > after]

    def mark_delivered(self, event_id: int) -> None:
        self._delivered = max(self._delivered, event_id)

    @property
    def changed(self) -> anyio.Event:
        """Set at the next event (capture it BEFORE reading `events_after`)."""
        return self._changed

    def close(self) -> None:
        self.closed = True
        changed, self._changed = self._changed, anyio.Event()
        changed.set()


class ExchangePeer:
    """A stateless 2026-07-28 request (and its input-required retries): one call at a time.

    Everything the backend sends it lands in the current call's inbox; the HTTP handler turns
    server-to-client requests into an `InputRequiredResult`."""

    def __init__(self, capabilities: JSON, log_level: str | None = None) -> None:
        self.uid = next_peer_uid()
        self.capabilities = capabilities
        self.log_level = log_level
        self._request_ids = itertools.count(1)

    def supports(self, capability: str) -> bool:
        return capability not in GATED_CAPABILITIES or isinstance(self.capabilities.get(capability), dict)

    def next_request_id(self) -> RequestId:
        return f"input-{next(self._request_ids)}"

    def deliver(self, message: JSON, call: Call | None) -> None:
        if call is None or call.done:
            return
        if message.get("method") == "notifications/message" and self.log_level is None:
            return  # 2026-07-28 logging is opt-in per request
        call.inbox.put(message, essential="id" in message)


@dataclass(eq=False)
class ListenStream:
    """One `subscriptions/listen` stream (2026-07-28): broadcast notifications it opted in to."""

    request_id: RequestId
    honored: JSON
    resources: frozenset[str] = frozenset()
    inbox: Mailbox = field(default_factory=Mailbox)
    uid: int = field(default_factory=next_peer_uid)

    def on_broadcast(self, message: JSON) -> None:
        method = message.get("method")
        key = LIST_CHANGED_NOTIFICATIONS.get(str(method))
        if key is not None:
            if not self.honored.get(key):
                return
        elif method == RESOURCE_UPDATED:
            if (params_of(message) or {}).get("uri") not in self.resources:
                return
        else:
            return
        out = dict(message)
        params = dict(params_of(message) or {})
        params["_meta"] = dict(params.get("_meta") or {}, **{SUBSCRIPTION_ID_META: self.request_id})
        out["params"] = params
        self.inbox.put(out)


class ResourceSubscriptions:
    """Reference counts of resource URIs subscribed at the backend (one backend subscription per
    URI, however many clients want it)."""

    def __init__(self) -> None:
        self._holders: dict[str, set[int]] = {}

    def add(self, uri: str, holder: int) -> bool:
        """Register; True if this is the first holder (the backend must be told)."""
        holders = self._holders.setdefault(uri, set())
        first = not holders
        holders.add(holder)
        return first

    def remove(self, uri: str, holder: int) -> bool:
        """Unregister; True if that was the last holder (the backend must be told)."""
        holders = self._holders.get(uri)
        if not holders or holder not in holders:
            return False
        holders.discard(holder)
        if not holders:
            del self._holders[uri]
            return True
        return False

    def held_by(self, holder: int) -> list[str]:
        return [uri for uri, holders in self._holders.items() if holder in holders]

    def clear(self) -> None:
        self._holders.clear()


class SessionRegistry:
    def __init__(self, max_sessions: int, idle_timeout: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, LegacySession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LegacySession]:
        return iter(list(self._sessions.values()))

    def add(self, session: LegacySession) -> None:
        self._sessions[session.id] = session

    def get(self, session_id: str) -> LegacySession | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_seen = time.monotonic()
        return session

    def remove(self, session_id: str) -> LegacySession | None:
        return self._sessions.pop(session_id, None)

    def idle(self, now: float) -> list[LegacySession]:
        return [s for s in self._sessions.values()
                if not s.get_stream_open and now - s.last_seen > self.idle_timeout]
