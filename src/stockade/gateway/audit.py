"""The audit trail: one row per call, chained by hash so edits, insertions and deletions show.

A record's hash covers its own fields and the previous record's hash. Records never hold call
arguments or results: only who, which server and tool, how long, and the outcome.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from stockade.store.database import Database
from stockade.store.driver import DriverStatement
from stockade.store.models import AuditAnchor, AuditRecord, utcnow

GENESIS = "0" * 64
_APPEND_ATTEMPTS = 20
_EXPORT_BATCH = 1000
# Audit ids are 32-bit on PostgreSQL; a larger bound in a query would overflow SQLite's integers
# instead of matching nothing.
MAX_AUDIT_ID = 2**31 - 1
_CHAIN_LOCK_KEY = 0x5740CADE  # any fixed number: the one advisory lock that guards the chain


@dataclass(frozen=True)
class AuditEvent:
    member: str | None
    token_id: str | None
    server: str | None
    method: str
    tool: str | None
    latency_ms: float
    outcome: str  # "ok", "error", "denied"
    error_code: int | None = None
    request_id: str | None = None


CHAINED_FIELDS = ("id", "ts", "member", "token_id", "server", "method", "tool", "latency_ms", "outcome", "error_code",
                  "request_id", "prev_hash")


def digest_of(values: Mapping[str, Any]) -> str:
    """The hash of one record: its chained fields, the previous record's hash among them."""
    fields = {name: values[name] for name in CHAINED_FIELDS}
    fields["ts"] = fields["ts"].isoformat()
    fields["latency_ms"] = round(fields["latency_ms"], 3)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_digest(record: AuditRecord) -> str:
    return digest_of({name: getattr(record, name) for name in CHAINED_FIELDS})


# Built once: on the path of every call, where constructing a statement costs more than running it.
_LAST_RECORD = select(AuditRecord.id, AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1)
_INSERT_RECORDS = insert(AuditRecord)


def _chained(events: Sequence[AuditEvent], last: Sequence[Any] | None) -> list[dict[str, Any]]:
    """The rows for `events`, chained after `last` (the newest record's id and hash, or None)."""
    last_id, last_hash = (last[0], last[1]) if last else (0, GENESIS)
    rows = []
    for event in events:
        row: dict[str, Any] = {
            "id": last_id + 1,
            "ts": utcnow(),
            "member": event.member,
            "token_id": event.token_id,
            "server": event.server,
            "method": event.method,
            "tool": event.tool,
            "latency_ms": round(event.latency_ms, 3),
            "outcome": event.outcome,
            "error_code": event.error_code,
            "request_id": event.request_id,
            "prev_hash": last_hash,
        }
        row["hash"] = digest_of(row)
        rows.append(row)
        last_id, last_hash = row["id"], row["hash"]
    return rows


class AuditLog:
    def __init__(self, database: Database) -> None:
        self._db = database
        # Chaining needs "read the last hash, insert the next" to be atomic within this process.
        self._lock = threading.Lock()
        dialect = database.engine.dialect
        self._driver = (
            (DriverStatement(_LAST_RECORD, dialect), DriverStatement(_INSERT_RECORDS, dialect)) if database.is_sqlite else None
        )
        # The (id, hash) of the record last appended in place: the next chains onto it unread. Had
        # another process appended since, the next id is taken and the insert fails, so it is re-read.
        self._tail: tuple[int, str] | None = None

    def append(self, event: AuditEvent) -> None:
        """Write one record durably; returns only after commit (an acknowledged call is audited)."""
        self.append_many([event])

    def append_many(self, events: Sequence[AuditEvent]) -> None:
        """Write records in order, chained, in one transaction; returns only after commit.

        Several gateway processes may append at once: on PostgreSQL an advisory lock serializes
        the read-last-then-insert; on any database a lost race (the same id taken) is retried.
        """
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                with self._lock:
                    self._append_once(events)
                return
            except (IntegrityError, OperationalError):
                if attempt == _APPEND_ATTEMPTS - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))

    def append_in_place(self, connection: DBAPIConnection, events: Sequence[AuditEvent]) -> bool:
        """`append_many` on SQLite's loop connection (`Database.loop_connection`), unless another
        writer holds the file right now: then False, and nothing was written.

        A SQLite commit is a write to a local file, cheap enough for the gateway's event loop to
        do in place and far cheaper than handing it to a thread; waiting for a lock, it must not.
        """
        if self._driver is None:
            raise TypeError("records are appended in place only to a SQLite database")
        last_record, insert_records = self._driver
        if not self._lock.acquire(blocking=False):
            return False
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")  # the write lock now, or "database is locked" at once
                rows = _chained(events, self._tail or last_record.first(connection))
                insert_records.execute_many(connection, rows)
                connection.commit()
                self._tail = rows[-1]["id"], rows[-1]["hash"]
                return True
            except sqlite3.Error:  # locked, or another process took the next id: the waiting path retries
                connection.rollback()
                self._tail = None
                return False
            finally:
                cursor.close()
        finally:
            self._lock.release()

    def _append_once(self, events: Sequence[AuditEvent]) -> None:
        self._tail = None
        # Core statements, not ORM objects: the unit of work's bookkeeping costs more than the insert.
        with self._db.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
            connection.execute(_INSERT_RECORDS, _chained(events, connection.execute(_LAST_RECORD).first()))

    def export_lines(self, **filters: Any) -> Iterator[bytes]:
        """Matching records as JSON Lines, in batches (for downloads of any size)."""
        after_id = 0
        while records := self.query(**filters, limit=_EXPORT_BATCH, after_id=after_id):
            yield "".join(json.dumps(record_dict(r), separators=(",", ":")) + "\n" for r in records).encode()
            after_id = records[-1].id

    def prune(self, older_than: datetime) -> int:
        """Delete records before `older_than`; the chain stays verifiable from an anchor. Returns the count."""
        with self._lock, self._db.session() as session:
            self._tail = None
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK_KEY})
            last = session.execute(
                select(AuditRecord.id, AuditRecord.hash).where(AuditRecord.ts < older_than)
                .order_by(AuditRecord.id.desc()).limit(1)
            ).first()
            if last is None:
                return 0
            count = session.execute(delete(AuditRecord).where(AuditRecord.id <= last.id)).rowcount or 0
            anchor = session.get(AuditAnchor, 1) or AuditAnchor(id=1)
            anchor.last_pruned_id, anchor.last_pruned_hash, anchor.pruned_at = last.id, last.hash, utcnow()
            session.add(anchor)
            return count

    def query(
        self,
        *,
        member: str | None = None,
        server: str | None = None,
        tool: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[AuditRecord]:
        statement = select(AuditRecord).where(AuditRecord.id > after_id).order_by(AuditRecord.id).limit(limit)
        for column, value in (
            (AuditRecord.member, member),
            (AuditRecord.server, server),
            (AuditRecord.tool, tool),
            (AuditRecord.outcome, outcome),
        ):
            if value is not None:
                statement = statement.where(column == value)
        if since is not None:
            statement = statement.where(AuditRecord.ts >= since)
        if until is not None:
            statement = statement.where(AuditRecord.ts < until)
        with self._db.session() as session:
            return list(session.scalars(statement))


def record_dict(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id, "ts": record.ts.isoformat(), "member": record.member, "token_id": record.token_id,
        "server": record.server, "method": record.method, "tool": record.tool, "latency_ms": record.latency_ms,
        "outcome": record.outcome, "error_code": record.error_code, "request_id": record.request_id,
        "prev_hash": record.prev_hash, "hash": record.hash,
    }


@dataclass(frozen=True)
class ChainProblem:
    record_id: int
    problem: str


def verify_chain(records: Iterable[AuditRecord], *, start: tuple[int, str] = (0, GENESIS)) -> list[ChainProblem]:
    """Check every record's own hash and its link to the one before; name each broken record.

    `start` is (id, hash) of the last record retention pruned, where the kept chain begins.
    """
    problems: list[ChainProblem] = []
    previous_id, previous_hash = start
    for record in records:
        if record.hash != record_digest(record):
            problems.append(ChainProblem(record.id, "edited: its contents do not match its hash"))
        if record.prev_hash != previous_hash:
            kind = "a record before it was deleted" if record.id > previous_id + 1 else "inserted or reordered"
            problems.append(ChainProblem(record.id, f"chain broken: {kind}"))
        elif record.id != previous_id + 1:
            problems.append(ChainProblem(record.id, "chain broken: record ids skip"))
        previous_hash, previous_id = record.hash, record.id
    return problems


def verify_database(session: Session) -> list[ChainProblem]:
    anchor = session.get(AuditAnchor, 1)
    start = (anchor.last_pruned_id, anchor.last_pruned_hash) if anchor else (0, GENESIS)
    return verify_chain(session.scalars(select(AuditRecord).order_by(AuditRecord.id)), start=start)
