"""Tool pinning: a tool is offered only while its definition matches the one approved.

A server could change a tool's description or schema after review (a "rug pull"). At approval the
control plane stores a hash of each tool's name, description and input schema; the gateway hides
any tool whose current definition hashes differently, or that was never approved, and flags it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from stockade.single_flight import SingleFlight
from stockade.store.database import Database
from stockade.store.models import ToolPin, utcnow

CACHE_SECONDS = 1.0


def tool_digest(tool: Mapping[str, Any]) -> str:
    material = {"name": tool.get("name"), "description": tool.get("description"), "inputSchema": tool.get("inputSchema")}
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _callable(pin: tuple[str, str | None] | None) -> bool:
    """Approved, and not changed since."""
    return pin is not None and pin[1] is None


@dataclass(frozen=True)
class Review:
    """The outcome of comparing offered tools with their pins."""

    approved: frozenset[str]
    newly_flagged: tuple[str, ...]  # changed or unapproved, seen for the first time


class ToolPins:
    def __init__(self, database: Database) -> None:
        self._db = database
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, tuple[str, str | None]]]] = {}
        self._reads = SingleFlight(self._read)

    def _cached(self, server: str) -> dict[str, tuple[str, str | None]] | None:
        with self._lock:
            cached = self._cache.get(server)
            if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
                return cached[1]
        return None

    def _pins(self, server: str) -> dict[str, tuple[str, str | None]]:
        cached = self._cached(server)
        return cached if cached is not None else self._read(server)

    def _read(self, server: str) -> dict[str, tuple[str, str | None]]:
        read_at = time.monotonic()
        with self._db.session() as session:
            pins = {p.tool: (p.digest, p.changed_digest) for p in session.scalars(select(ToolPin).where(ToolPin.server == server))}
        with self._lock:
            self._cache[server] = (read_at, pins)
        return pins

    def _forget(self, server: str) -> None:
        with self._lock:
            self._cache.pop(server, None)

    def approve(self, server: str, tools: Iterable[Mapping[str, Any]], *, only: set[str] | None = None) -> list[str]:
        """Pin the given definitions (all, or the names in `only`); returns the names pinned."""
        pinned = []
        with self._db.session() as session:
            for tool in tools:
                name = str(tool.get("name"))
                if only is not None and name not in only:
                    continue
                session.merge(ToolPin(server=server, tool=name, digest=tool_digest(tool), approved_at=utcnow(),
                                      changed_digest=None, changed_at=None))
                pinned.append(name)
        self._forget(server)
        return pinned

    def is_callable(self, server: str, tool: str) -> bool:
        return _callable(self._pins(server).get(tool))

    async def is_callable_now(self, server: str, tool: str) -> bool:
        """`is_callable` for the event loop: from the cache, else from one database read in a
        thread, shared with every call that asks meanwhile."""
        pins = self._cached(server)
        if pins is None:
            pins = await self._reads(server)
        return _callable(pins.get(tool))

    def review(self, server: str, tools: Iterable[Mapping[str, Any]]) -> Review:
        pins = self._pins(server)
        approved, flagged = set(), []
        for tool in tools:
            name, digest = str(tool.get("name")), tool_digest(tool)
            pin = pins.get(name)
            if pin is not None and pin[0] == digest and pin[1] is None:
                approved.add(name)
            elif pin is None or pin[1] != digest:
                flagged.append((name, digest))
        if flagged:
            self._flag(server, flagged)
        return Review(frozenset(approved), tuple(name for name, _ in flagged))

    def _flag(self, server: str, flagged: list[tuple[str, str]]) -> None:
        with self._db.session() as session:
            for name, digest in flagged:
                pin = session.get(ToolPin, (server, name))
                if pin is None:
                    # Never approved: recorded as a pending change with no approved digest.
                    session.add(ToolPin(server=server, tool=name, digest="", changed_digest=digest, changed_at=utcnow()))
                else:
                    pin.changed_digest, pin.changed_at = digest, utcnow()
        self._forget(server)

    def listing(self, server: str) -> list[ToolPin]:
        with self._db.session() as session:
            return list(session.scalars(select(ToolPin).where(ToolPin.server == server).order_by(ToolPin.tool)))

    def drop(self, server: str) -> None:
        with self._db.session() as session:
            session.execute(delete(ToolPin).where(ToolPin.server == server))
        self._forget(server)
