"""Group commit for the gateway's audit records.

A call is acknowledged only after its record is committed. One transaction per call would make the
database's commit the ceiling on calls per second and serialize every concurrent caller behind the
chain lock; instead one writer task takes every record waiting at that moment, commits them as one
chained batch, and then releases all their callers. A lone call still waits for exactly one commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import anyio.abc

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
        self._wake = anyio.Event()
        self._running = False

    async def append(self, event: AuditEvent) -> None:
        """Return once `event` is committed; raise if it could not be."""
        if not self._running:
            raise AuditUnavailable("the audit writer is not running; the call was not acknowledged")
        pending = _Pending(event)
        self._queue.append(pending)
        self._wake.set()
        with anyio.fail_after(APPEND_TIMEOUT):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled; its owner (the gateway's lifespan) cancels it last."""
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
            for pending in self._queue:
                pending.error = AuditUnavailable("the gateway is shutting down; the call was not acknowledged")
                pending.done.set()
            self._queue = []

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            # Not abandoned on cancellation: a batch in flight is finished before the writer stops.
            await anyio.to_thread.run_sync(self._audit.append_many, [pending.event for pending in batch])
        except Exception as exc:  # noqa: BLE001 - whatever failed, every caller of the batch must hear it
            log.error("audit batch of %d records failed: %s", len(batch), type(exc).__name__)
            for pending in batch:
                pending.error = exc
        finally:
            for pending in batch:
                pending.done.set()
