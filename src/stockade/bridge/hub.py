"""Shared state behind the HTTP fronts: the backend, the legacy sessions, the stateless exchanges
waiting on input, the listen streams and the resource subscriptions they share."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field

import anyio

from .backend import Backend, NotReady
from .jsonrpc import (
    CACHEABLE_METHODS,
    CLIENT_CAPABILITIES_META,
    CLIENT_INFO_META,
    ENVELOPE_META_PREFIX,
    JSON,
    LATEST_MODERN,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    PROTOCOL_VERSION_META,
    SERVER_INFO_META,
    error_object,
    is_response,
    params_of,
)
from .multiplexer import Call, Peer
from .options import Options
from .sessions import ExchangePeer, LegacySession, ListenStream, ResourceSubscriptions, SessionRegistry

log = logging.getLogger("stockade.bridge.hub")

HELD_CALL_TTL = 300.0
"""How long a stateless call waiting for its input-required retry is kept (then cancelled)."""
REAPER_INTERVAL = 5.0


@dataclass(eq=False)
class HeldCall:
    """A 2026-07-28 call parked on an `InputRequiredResult` until the client retries."""

    peer: ExchangePeer
    call: Call
    method: str
    pending: dict[str, JSON]
    expires: float = field(default_factory=lambda: time.monotonic() + HELD_CALL_TTL)


class Hub:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.backend = Backend(options)
        self.sessions = SessionRegistry(options.max_sessions, options.session_idle_timeout)
        self.subscriptions = ResourceSubscriptions()
        self.listen_streams: set[ListenStream] = set()
        self.held: dict[str, HeldCall] = {}
        self.shutting_down = anyio.Event()
        self.backend.on_ready.append(self._backend_restarted)
        self.mux.on_undeclared = self._missing_capability

    @property
    def mux(self):
        return self.backend.mux

    def _backend_restarted(self) -> None:
        # The new process has no subscriptions: every holder's interest is forgotten (clients are
        # told by nothing; list_changed-style recovery is theirs, as after any server restart).
        if self.backend.restarts:
            self.subscriptions.clear()
            for session in self.sessions:
                session.subscriptions.clear()

    def _missing_capability(self, call: Call, capability: str) -> None:
        # A 2026-07-28 server must not rely on a capability its client did not declare; the revision
        # makes that the client's error (-32021). A legacy client's call goes on: its server
        # request was refused at the backend, which decides what the tool answers.
        if isinstance(call.peer, ExchangePeer):
            self.mux.fail(call, error_object(
                MISSING_REQUIRED_CLIENT_CAPABILITY,
                f"the server needs the client's {capability} capability for this request; declare it in "
                f"_meta[{CLIENT_CAPABILITIES_META!r}] to use it", {"requiredCapabilities": {capability: {}}}),
                f"the client did not declare the {capability} capability")

    # -- sessions ------------------------------------------------------------------------------

    def add_session(self, session: LegacySession) -> None:
        self.sessions.add(session)
        self.mux.listeners.add(session)

    async def end_session(self, session: LegacySession, reason: str) -> None:
        self.sessions.remove(session.id)
        self.mux.listeners.discard(session)
        session.close()
        if self.backend.ready:
            self.mux.close_peer(session, reason)
        await self.release_resources(session.uid)

    # -- resource subscriptions ----------------------------------------------------------------

    async def subscribe(self, holder: int, uri: str) -> JSON | None:
        """Hold `uri`; the backend answer (None if no backend call was needed)."""
        if self.subscriptions.add(uri, holder):
            answer = await self.backend.request("resources/subscribe", {"uri": uri}, self.options.request_timeout)
            if answer is None or "error" in answer:
                self.subscriptions.remove(uri, holder)
            return answer
        return None

    async def unsubscribe(self, holder: int, uri: str) -> JSON | None:
        if self.subscriptions.remove(uri, holder) and self.backend.ready:
            return await self.backend.request("resources/unsubscribe", {"uri": uri}, self.options.request_timeout)
        return None

    async def release_resources(self, holder: int) -> None:
        for uri in self.subscriptions.held_by(holder):
            try:
                await self.unsubscribe(holder, uri)
            except NotReady:
                pass

    # -- held input-required calls -------------------------------------------------------------

    def hold(self, peer: ExchangePeer, call: Call, method: str, pending: dict[str, JSON]) -> str:
        token = secrets.token_urlsafe(24)
        call.parked = True
        self.held[token] = HeldCall(peer, call, method, pending)
        return token

    def reap(self, now: float) -> None:
        for token, held in list(self.held.items()):
            if now > held.expires or held.call.done and not len(held.call.inbox):
                del self.held[token]
                self.mux.cancel(held.call, "the client did not come back with the input it was asked for",
                                answer=False)
                self.mux.close_peer(held.peer)

    async def reaper(self) -> None:
        while True:
            await anyio.sleep(REAPER_INTERVAL)
            now = time.monotonic()
            self.reap(now)
            for session in self.sessions.idle(now):
                log.info("ending idle session")
                await self.end_session(session, "the session expired")

    # -- translation between eras --------------------------------------------------------------

    def to_backend(self, message: JSON, *, client_modern: bool, session: LegacySession | None = None) -> JSON:
        """A client request in the backend's revision."""
        params = params_of(message)
        if client_modern and self.backend.era == "legacy":
            if params is None:
                return message
            params = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
            meta = params.get("_meta")
            if isinstance(meta, dict):
                meta = {k: v for k, v in meta.items() if not k.startswith(ENVELOPE_META_PREFIX)}
                if meta:
                    params["_meta"] = meta
                else:
                    del params["_meta"]
            return dict(message, params=params)
        if not client_modern and self.backend.era == "modern":
            params = dict(params or {})
            meta = dict(params.get("_meta") or {})
            meta.setdefault(PROTOCOL_VERSION_META, self.backend.protocol_version or LATEST_MODERN)
            meta.setdefault(CLIENT_CAPABILITIES_META, session.capabilities if session else {})
            if session is not None and session.client_info:
                meta.setdefault(CLIENT_INFO_META, session.client_info)
            params["_meta"] = meta
            return dict(message, params=params)
        return message

    def to_modern_client(self, message: JSON, method: str) -> JSON:
        """A backend answer as a 2026-07-28 client expects it (`resultType`, cache fields)."""
        if not is_response(message) or not isinstance(message.get("result"), dict):
            return message
        result = dict(message["result"])
        result.setdefault("resultType", "complete")
        if method in CACHEABLE_METHODS:
            result.setdefault("ttlMs", 0)
            result.setdefault("cacheScope", "private")
        return dict(message, result=result)

    def initialize_result(self, negotiated: str) -> JSON:
        """The backend's initialize answer, at the version negotiated with one legacy client."""
        source = self.backend.init_result or {}
        if self.backend.era == "legacy":
            return dict(source, protocolVersion=negotiated)
        meta = source.get("_meta") if isinstance(source.get("_meta"), dict) else {}
        result: JSON = {
            "protocolVersion": negotiated,
            "capabilities": source.get("capabilities") or {},
            "serverInfo": meta.get(SERVER_INFO_META) or self.backend.server_info,
        }
        if source.get("instructions"):
            result["instructions"] = source["instructions"]
        return result

    def discover_result(self) -> JSON:
        """`server/discover` for 2026-07-28 clients (from the backend's initialize if it is legacy)."""
        source = self.backend.init_result or {}
        if self.backend.era == "modern":
            result = dict(source)
        else:
            result = {"capabilities": _modern_capabilities(source.get("capabilities") or {})}
            if source.get("instructions"):
                result["instructions"] = source["instructions"]
            meta = dict(source.get("_meta") or {}) if isinstance(source.get("_meta"), dict) else {}
            meta[SERVER_INFO_META] = self.backend.server_info
            result["_meta"] = meta
        result["supportedVersions"] = [LATEST_MODERN]
        result.setdefault("ttlMs", 0)
        result.setdefault("cacheScope", "private")
        result["resultType"] = "complete"
        return result

    async def shutdown(self) -> None:
        """End the long-lived streams (GET, listen) so in-flight calls can drain."""
        self.shutting_down.set()
        for stream in list(self.listen_streams):
            stream.inbox.close()
        for session in self.sessions:
            session.close()


def _modern_capabilities(capabilities: JSON) -> JSON:
    """Legacy server capabilities as 2026-07-28 advertises them (resources.subscribe is served
    through `subscriptions/listen`; logging stays as declared)."""
    return dict(capabilities)


def peer_label(peer: Peer) -> str:
    return type(peer).__name__
