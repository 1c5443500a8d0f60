"""Commits the gateway's audit records: a call is acknowledged only after its record is committed.

On SQLite a record is committed in place, by the call itself, on a connection that never waits
for a lock (a commit to a local file costs less than handing it to a thread). When that cannot be
done (another writer holds the file, or the database is a server), records queue for one writer
task, which takes every record waiting at that moment, commits them from a thread as one chained
batch (group commit: the database's commit rate does not cap calls per second), then releases
all their callers. Records are committed in the order their calls finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import anyio.abc
from sqlalchemy.engine.interfaces import DBAPIConnection

from stockade.errors import AuditUnavailable
from stockade.gateway.audit import AuditEvent, AuditLog

log = logging.getLogger(__name__)

# Long enough for a database under load, short enough that a caller never hangs on a dead writer.
APPEND_TIMEOUT = 30.0
MAX_BATCH = 512


@dataclass(eq=False)
class _Pending:
    event: AuditEvent
    done: anyio.Event = field(default_factory=anyio.Event)
    error: BaseException | None = None


class AuditWriter:
    def __init__(self, audit: AuditLog, *, max_batch: int = MAX_BATCH) -> None:
        self._audit = audit
        self._max_batch = max_batch
        self._queue: list[_Pending] = []
        self._committing = False  # a batch is on its way to the database from a thread
        self._in_place: DBAPIConnection | None = None
        self._wake = anyio.Event()
        self._running = False

    async def append(self, event: AuditEvent) -> None:
        """Return once `event` is committed; raise if it could not be."""
        if not self._running:
            raise AuditUnavailable("the audit writer is not running; the call was not acknowledged")
        # In place only when nothing is queued or in flight: records must not overtake earlier ones.
        if (self._in_place is not None and not self._queue and not self._committing
                and self._audit.append_in_place(self._in_place, [event])):
            return
        pending = _Pending(event)
        self._queue.append(pending)
        self._wake.set()
        with anyio.fail_after(APPEND_TIMEOUT):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def run(
        self, in_place: DBAPIConnection | None = None, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write batches until cancelled; its owner (the gateway's lifespan) cancels it last.

        `in_place`: SQLite's loop connection (`Database.loop_connection`), for calls to commit
        their own records; its owner keeps it open until this returns.
        """
        self._in_place = in_place
        self._running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                if self._queue:
                    self._wake.set()
                await self._commit(batch)
        finally:
            self._running = False
            self._in_place = None
            for pending in self._queue:
                pending.error = AuditUnavailable("the gateway is shutting down; the call was not acknowledged")
                pending.done.set()
            self._queue = []

    async def _commit(self, batch: list[_Pending]) -> None:
        self._committing = True
        try:
            # Not abandoned on cancellation: a batch in flight is finished before the writer stops.
            await anyio.to_thread.run_sync(self._audit.append_many, [pending.event for pending in batch])
        except Exception as exc:  # noqa: BLE001 - whatever failed, every caller of the batch must hear it
            log.error("audit batch of %d records failed: %s", len(batch), type(exc).__name__)
            for pending in batch:
                pending.error = exc
        finally:
            self._committing = False
            for pending in batch:
                pending.done.set()
