"""Per-member rate limits: a token bucket each, refilled continuously.

One process keeps its buckets in memory. Several gateway processes sharing PostgreSQL keep them
in the database, updated by one atomic statement per request (timed by the database's clock), so
a member's limit holds across all of them.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import text

from stockade.store.database import Database


class RateLimiter(Protocol):
    # Whether acquire waits on I/O (and so belongs on a worker thread, off the event loop).
    blocking: bool

    def acquire(self, key: str) -> float:
        """Take one token; returns 0 when admitted, else the seconds until one is available."""
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class MemoryRateLimiter:
    blocking = False

    def __init__(self, *, per_minute: int, burst: int) -> None:
        if per_minute <= 0 or burst <= 0:
            raise ValueError("rate limits must be positive")
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self._burst, now))
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self._rate


class DatabaseRateLimiter:
    """Buckets in PostgreSQL, shared by every gateway process (row-locked, the database's clock)."""

    blocking = True

    def __init__(self, database: Database, *, per_minute: int, burst: int) -> None:
        if database.engine.dialect.name != "postgresql":
            raise ValueError("shared rate limits need PostgreSQL; one process uses MemoryRateLimiter")
        self._db = database
        self._rate = per_minute / 60.0
        self._burst = float(burst)

    def acquire(self, key: str) -> float:
        with self._db.session() as session:
            session.execute(
                text("INSERT INTO rate_buckets (member, tokens, updated) "
                     "VALUES (:member, :burst, extract(epoch FROM clock_timestamp())) ON CONFLICT (member) DO NOTHING"),
                {"member": key, "burst": self._burst},
            )
            tokens, updated, now = session.execute(
                text("SELECT tokens, updated, extract(epoch FROM clock_timestamp())::float8 "
                     "FROM rate_buckets WHERE member = :member FOR UPDATE"),
                {"member": key},
            ).one()
            tokens = min(self._burst, float(tokens) + max(0.0, float(now) - float(updated)) * self._rate)
            admitted = tokens >= 1.0
            session.execute(
                text("UPDATE rate_buckets SET tokens = :tokens, updated = :now WHERE member = :member"),
                {"member": key, "tokens": tokens - 1.0 if admitted else tokens, "now": now},
            )
        return 0.0 if admitted else (1.0 - tokens) / self._rate


def create_rate_limiter(database: Database, *, per_minute: int, burst: int) -> RateLimiter:
    if database.engine.dialect.name == "postgresql":
        return DatabaseRateLimiter(database, per_minute=per_minute, burst=burst)
    return MemoryRateLimiter(per_minute=per_minute, burst=burst)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
