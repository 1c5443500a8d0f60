"""How the gateway finds a server's bridge: a directory the control plane provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Upstream:
    slug: str
    endpoint: str  # http://<container ip>:<port>
    token: str  # the per-bridge secret; never shown to clients
    tool_allowlist: tuple[str, ...] = ("*",)  # the catalog entry's bound on tools, for everyone

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"Upstream(slug={self.slug!r}, endpoint={self.endpoint!r})"


class ServerDirectory(Protocol):
    async def resolve(self, slug: str) -> Upstream | None:
        """The running upstream for `slug`, or None when no such server is running."""
        ...

    async def running(self) -> list[Upstream]:
        """Every running upstream."""
        ...
