"""Group commit of audit records against a real database (SQLite, or PostgreSQL in the PG run)."""

import sqlite3
from collections.abc import Iterator, Sequence

import anyio
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine.interfaces import DBAPIConnection

from stockade.errors import AuditUnavailable
from stockade.gateway.audit import AuditEvent, AuditLog, verify_database
from stockade.gateway.audit_writer import AuditWriter
from stockade.store.database import BUSY_TIMEOUT_MS, Database
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


def append_concurrently(
    writer: AuditWriter, count: int, in_place: DBAPIConnection | None = None,
) -> tuple[list[int], list[BaseException]]:
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
            await outer.start(writer.run, in_place)
            async with anyio.create_task_group() as calls:
                for n in range(count):
                    calls.start_soon(one, n)
            outer.cancel_scope.cancel()

    anyio.run(main)
    return acknowledged, failures


def test_concurrent_calls_share_commits_and_keep_one_chain(database: Database) -> None:
    """Without a connection to commit on in place (always so on a database server), the writer
    commits waiting records in batches."""
    commits = 0

    def count(_connection: object) -> None:
        nonlocal commits
        commits += 1

    event.listen(database.engine, "commit", count)
    acknowledged, failures = append_concurrently(AuditWriter(AuditLog(database)), 300)
    assert failures == [] and sorted(acknowledged) == list(range(300))
    # Batched: far fewer transactions than records (the exact number depends on scheduling).
    assert commits < 300 / 2
    assert_chained(database, 300)


def test_a_database_server_is_never_written_in_place() -> None:
    """A database server is always asked from a thread: nothing offers to write it on the loop."""
    server = Database("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connected to
    with pytest.raises(TypeError), server.loop_connection():
        pass
    with pytest.raises(TypeError):
        AuditLog(server).append_in_place(None, [call(1)])  # type: ignore[arg-type]
    server.close()


def test_on_sqlite_each_call_commits_its_own_record_in_place(sqlite_database: Database) -> None:
    database = sqlite_database
    threads_used = 0
    log = AuditLog(database)
    original = log.append_many

    def counted(events: Sequence[AuditEvent]) -> None:
        nonlocal threads_used
        threads_used += 1
        original(events)

    log.append_many = counted  # type: ignore[method-assign]
    with database.loop_connection() as connection:
        acknowledged, failures = append_concurrently(AuditWriter(log), 300, connection)
    assert failures == [] and sorted(acknowledged) == list(range(300))
    assert threads_used == 0
    assert_chained(database, 300)


def assert_chained(database: Database, count: int) -> None:
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditRecord)) == count
        assert sorted(int(r) for r in session.scalars(select(AuditRecord.request_id))) == list(range(count))
        assert verify_database(session) == []


def test_a_writer_that_is_not_running_acknowledges_nothing(database: Database) -> None:
    writer = AuditWriter(AuditLog(database))
    with pytest.raises(AuditUnavailable):
        anyio.run(writer.append, call(1))


def test_a_failed_commit_reaches_every_caller_of_its_batch(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE audit RENAME TO audit_gone"))
    acknowledged, failures = append_concurrently(AuditWriter(AuditLog(database)), 5)
    assert acknowledged == [] and len(failures) == 5


def test_a_locked_sqlite_file_never_stalls_the_event_loop(sqlite_database: Database) -> None:
    """On SQLite a call commits its record in place, but never waits there for another writer's
    lock: while the file is locked the loop keeps running, the record queues for the writer (which
    waits in a thread), and it lands once the lock is gone, with later records after it."""
    database = sqlite_database
    with database.loop_connection() as connection:
        assert connection.execute("PRAGMA busy_timeout").fetchone() == (0,)  # fails at once when locked
    with database.reading() as pooled:
        assert pooled.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS  # restored
    other_writer = sqlite3.connect(database.url.removeprefix("sqlite:///"), isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    writer = AuditWriter(AuditLog(database))
    ticks = 0
    acknowledged: list[int] = []

    async def one(n: int) -> None:
        await writer.append(call(n))
        acknowledged.append(n)

    async def main() -> None:
        nonlocal ticks
        async with anyio.create_task_group() as outer:
            await outer.start(writer.run, in_place)
            outer.start_soon(one, 1)
            for _ in range(20):
                await anyio.sleep(0.01)
                ticks += 1
            assert acknowledged == []  # not committed while locked...
            other_writer.rollback()
            outer.start_soon(one, 2)  # queued behind the first, though the file is free again
            with anyio.fail_after(30):
                while len(acknowledged) < 2:
                    await anyio.sleep(0.01)  # ...and committed once the lock is released
            await one(3)  # nothing queued any more: in place again
            outer.cancel_scope.cancel()

    with database.loop_connection() as in_place:
        anyio.run(main)
    other_writer.close()
    assert ticks == 20
    with database.session() as session:
        assert list(session.scalars(select(AuditRecord.request_id).order_by(AuditRecord.id))) == ["1", "2", "3"]
        assert verify_database(session) == []


def test_a_record_another_process_appended_is_chained_onto(sqlite_database: Database) -> None:
    """In place, a call chains onto the record it appended last without reading it back; when
    another process appended meanwhile, nothing is written and the next attempt reads the chain's end."""
    database = sqlite_database
    ours, theirs = AuditLog(database), AuditLog(database)
    with database.loop_connection() as connection:
        assert ours.append_in_place(connection, [call(1)])
        theirs.append_many([call(2)])
        assert not ours.append_in_place(connection, [call(3)])
        assert ours.append_in_place(connection, [call(3)])
    with database.session() as session:
        assert list(session.scalars(select(AuditRecord.request_id).order_by(AuditRecord.id))) == ["1", "2", "3"]
        assert verify_database(session) == []
