"""Dashboard sessions: in-memory, keyed by the hash of a random cookie value, with idle and absolute limits."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

SESSION_IDLE_SECONDS = 30 * 60
SESSION_MAX_SECONDS = 8 * 60 * 60
MAX_SESSIONS = 1000


@dataclass
class WebSession:
    """One signed-in browser. Holds no credential: only the id of what opened it.

    `source` is the login method: "token" (`token_id` is an admin token's id, re-checked on every
    request) or "oidc" (`token_id` is the `oidc:` id of the ID token, which cannot be revoked).
    """

    member: str
    token_id: str
    csrf: str
    created: float
    last_seen: float
    source: str = "token"
    flashes: list[tuple[str, str]] = field(default_factory=list)
    once: dict[str, Any] = field(default_factory=dict)  # shown on the next page view only

    def flash(self, kind: str, message: str) -> None:
        self.flashes.append((kind, message))


class SessionStore:
    """In-memory sessions keyed by the SHA-256 of the cookie value (a restart signs everyone out)."""

    def __init__(self, *, idle: float = SESSION_IDLE_SECONDS, lifetime: float = SESSION_MAX_SECONDS) -> None:
        self._idle, self._lifetime = idle, lifetime
        self._sessions: OrderedDict[str, WebSession] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def create(self, member: str, token_id: str, *, source: str = "token") -> tuple[str, WebSession]:
        session_id = secrets.token_urlsafe(32)
        now = time.monotonic()
        web = WebSession(member=member, token_id=token_id, csrf=secrets.token_urlsafe(32), created=now,
                         last_seen=now, source=source)
        with self._lock:
            self._sessions[self._key(session_id)] = web
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session_id, web

    def get(self, session_id: str | None) -> WebSession | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        now = time.monotonic()
        with self._lock:
            web = self._sessions.get(key)
            if web is None:
                return None
            if now - web.last_seen > self._idle or now - web.created > self._lifetime:
                del self._sessions[key]
                return None
            web.last_seen = now
            self._sessions.move_to_end(key)
            return web

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)
