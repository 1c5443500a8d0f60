"""How the gateway finds a server's bridges: a directory the control plane provides.

A server runs as one or more replicas, each its own bridge. Calls go round-robin over the
replicas the directory reports healthy. A legacy MCP session lives in the one bridge that created
it, so the gateway hands clients session ids that name that replica ("<number>.<bridge's id>")
and routes every later request of the session there: stateless, so several gateway processes
agree without sharing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Replica:
    number: int
    endpoint: str  # http://<container ip>:<port>


@dataclass(frozen=True)
class Upstream:
    slug: str
    token: str  # the per-bridge secret (shared by a server's replicas); never shown to clients
    replicas: tuple[Replica, ...]  # the healthy ones, never empty
    tool_allowlist: tuple[str, ...] = ("*",)  # the catalog entry's bound on tools, for everyone

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"Upstream(slug={self.slug!r}, replicas={[r.endpoint for r in self.replicas]!r})"

    def rotation(self, turn: int) -> tuple[Replica, ...]:
        """Every replica, starting with the `turn`-th: the first is the round-robin choice, the
        others are where a request that could not even connect goes next."""
        start = turn % len(self.replicas)
        return self.replicas[start:] + self.replicas[:start]

    def session_replica(self, client_session: str) -> tuple[Replica, str] | None:
        """The replica holding a session and the bridge's own id for it; None when that replica is
        gone (the session went with it) or the id is not one this gateway issued."""
        number, sep, session = client_session.partition(".")
        if not sep or not number.isdigit() or not session:
            return None
        replica = next((r for r in self.replicas if r.number == int(number)), None)
        return (replica, session) if replica is not None else None


def client_session_id(replica: Replica, session: str) -> str:
    """The session id clients see for a bridge's session `session` on `replica`."""
    return f"{replica.number}.{session}"


class ServerDirectory(Protocol):
    async def resolve(self, slug: str) -> Upstream | None:
        """The running upstream for `slug`, or None when no replica of such a server is running."""
        ...

    async def running(self) -> list[Upstream]:
        """Every running upstream."""
        ...
