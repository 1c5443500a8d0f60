"""Group commit of audit records against a real database (SQLite, or PostgreSQL in the PG run)."""

from collections.abc import Iterator

import anyio
import pytest
from sqlalchemy import event, func, select, text

from stockade.errors import AuditUnavailable
from stockade.gateway.audit import AuditEvent, AuditLog, verify_database
from stockade.gateway.audit_writer import AuditWriter
from stockade.store.database import Database
from stockade.store.models import AuditRecord


@pytest.fixture()
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    yield db
    db.close()


def call(n: int) -> AuditEvent:
    return AuditEvent(member="ada", token_id="t1", server="time", method="tools/call",
                      tool="get_current_time", latency_ms=1.0, outcome="ok", request_id=str(n))


def append_concurrently(writer: AuditWriter, count: int) -> tuple[list[int], list[BaseException]]:
    """`count` calls appending at once while the writer runs; which were acknowledged, which failed."""
    acknowledged: list[int] = []
    failures: list[BaseException] = []

    async def one(n: int) -> None:
        try:
            await writer.append(call(n))
            acknowledged.append(n)
        except Exception as exc:  # noqa: BLE001 - the test records whatever reaches the caller
            failures.append(exc)

    async def main() -> None:
        async with anyio.create_task_group() as outer:
            await outer.start(writer.run)
            async with anyio.create_task_group() as calls:
                for n in range(count):
                    calls.start_soon(one, n)
            outer.cancel_scope.cancel()

    anyio.run(main)
    return acknowledged, failures


def test_concurrent_calls_share_commits_and_keep_one_chain(database: Database) -> None:
    commits = 0

    def count(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(database.engine, "commit", count)
    acknowledged, failures = append_concurrently(AuditWriter(AuditLog(database)), 300)
    assert failures == [] and sorted(acknowledged) == list(range(300))
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == 300
        assert sorted(int(r) for r in session.scalars(select(AuditRecord.request_id))) == list(range(300))
        assert verify_database(session) == []
    # Batched: far fewer transactions than records (the exact number depends on scheduling).
    assert commits < 300 / 2


def test_a_writer_that_is_not_running_acknowledges_nothing(database: Database) -> None:
    writer = AuditWriter(AuditLog(database))
    with pytest.raises(AuditUnavailable):
        anyio.run(writer.append, call(1))


def test_a_failed_commit_reaches_every_caller_of_its_batch(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit RENAME TO audit_gone"))
    acknowledged, failures = append_concurrently(AuditWriter(AuditLog(database)), 5)
    assert acknowledged == [] and len(failures) == 5
