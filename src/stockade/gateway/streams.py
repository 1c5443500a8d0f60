"""Open streams and sessions per token, so revoking a token closes what it holds open."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import anyio
from sqlalchemy import select

from stockade.gateway.identity import Principal
from stockade.store.database import Database
from stockade.store.models import Token, utcnow

log = logging.getLogger(__name__)
WATCH_INTERVAL = 0.5


@dataclass
class _Held:
    scopes: set[anyio.CancelScope] = field(default_factory=set)
    sessions: set[tuple[str, str]] = field(default_factory=set)  # (server slug, session id)


@dataclass(frozen=True)
class Closed:
    streams: int
    sessions: int


class StreamRegistry:
    def __init__(self) -> None:
        self._held: defaultdict[str, _Held] = defaultdict(_Held)
        self._session_owner: dict[tuple[str, str], tuple[str, str]] = {}  # -> (member, token id)

    @contextlib.contextmanager
    def track(self, principal: Principal, scope: anyio.CancelScope) -> Iterator[None]:
        """Register the cancel scope of a stream held open by `principal`'s token.

        `close_token` cancels it on revocation; the token's expiry ends it on its own, since a
        credential checked once when the stream opened must not keep it open past its lifetime.
        """
        if principal.expires_at is not None:
            remaining = (principal.expires_at - utcnow()).total_seconds()
            scope.deadline = min(scope.deadline, anyio.current_time() + remaining)
        token_id = principal.token_id
        self._held[token_id].scopes.add(scope)
        try:
            yield
        finally:
            held = self._held.get(token_id)
            if held is not None:
                held.scopes.discard(scope)

    def claim_session(self, server: str, session_id: str, member: str, token_id: str) -> bool:
        """Bind a session to the member who first used it; another member is refused."""
        key = (server, session_id)
        owner = self._session_owner.setdefault(key, (member, token_id))
        if owner[0] != member:
            return False
        self._held[token_id].sessions.add(key)
        return True

    def end_session(self, server: str, session_id: str) -> None:
        owner = self._session_owner.pop((server, session_id), None)
        if owner is not None and owner[1] in self._held:
            self._held[owner[1]].sessions.discard((server, session_id))

    def session_count(self) -> int:
        return len(self._session_owner)

    def token_ids(self) -> list[str]:
        return [token_id for token_id, held in self._held.items() if held.scopes or held.sessions]

    async def close_token(self, token_id: str, end_upstream: Callable[[str, str], Awaitable[None]]) -> Closed:
        held = self._held.pop(token_id, None)
        if held is None:
            return Closed(0, 0)
        for scope in held.scopes:
            scope.cancel()
        for server, session_id in held.sessions:
            self._session_owner.pop((server, session_id), None)
            with anyio.move_on_after(5):
                await end_upstream(server, session_id)
        return Closed(len(held.scopes), len(held.sessions))


def revoked_among(database: Database, token_ids: list[str]) -> list[str]:
    """Which of these tokens are revoked or expired now (another gateway process may have revoked them)."""
    # JWTs are not revocable here: they end at their expiry (`oidc:` ids are not in the table).
    token_ids = [token_id for token_id in token_ids if not token_id.startswith("oidc:")]
    if not token_ids:
        return []
    now = utcnow()
    with database.session() as session:
        rows = session.execute(select(Token.id, Token.revoked_at, Token.expires_at).where(Token.id.in_(token_ids)))
        alive = {
            token_id
            for token_id, revoked_at, expires_at in rows
            if revoked_at is None and (expires_at is None or expires_at > now)
        }
    # A token deleted with its member counts as revoked too.
    return [token_id for token_id in token_ids if token_id not in alive]
