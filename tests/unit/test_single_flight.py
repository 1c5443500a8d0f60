"""Single-flight loading, alone and in the gateway's caches that use it (on a real database)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from anyio import wait_all_tasks_blocked
from sqlalchemy import event

from stockade.catalog import Catalog
from stockade.control.directory import DeploymentDirectory, seal_context
from stockade.gateway.pins import ToolPins
from stockade.secrets import Sealer
from stockade.single_flight import SingleFlight
from stockade.store.database import Database
from stockade.store.models import Deployment, Instance

CALLERS = 20


class GatedLoad:
    """A load that blocks in its worker thread until released, counting how often it ran."""

    def __init__(self, result: object = "value") -> None:
        self.result = result
        self.calls: list[str] = []
        self.release = threading.Event()

    def __call__(self, key: str) -> object:
        self.calls.append(key)
        if not self.release.wait(30):
            raise TimeoutError("never released")
        if isinstance(self.result, Exception):
            raise self.result
        return f"{self.result}:{key}"


async def _callers(flight: SingleFlight[str, object], load: GatedLoad, key: str) -> list[object]:
    """CALLERS concurrent calls for `key`, released once every one of them is waiting."""
    answers: list[object] = []

    async def call() -> None:
        try:
            answers.append(await flight(key))
        except Exception as exc:  # noqa: BLE001 - the test compares what each caller got
            answers.append(exc)

    async with anyio.create_task_group() as tasks:
        for _ in range(CALLERS):
            tasks.start_soon(call)
        await wait_all_tasks_blocked()
        load.release.set()
    return answers


def test_concurrent_callers_share_one_load_and_the_next_call_loads_again() -> None:
    load = GatedLoad()
    flight = SingleFlight(load)

    async def main() -> None:
        assert await _callers(flight, load, "a") == ["value:a"] * CALLERS
        assert load.calls == ["a"]
        assert await flight("a") == "value:a"  # nothing is cached here: a later call loads anew
        assert load.calls == ["a", "a"]

    anyio.run(main)


def test_a_failed_load_reaches_every_waiter_and_is_not_kept() -> None:
    load = GatedLoad(ConnectionError("database away"))
    flight = SingleFlight(load)

    async def main() -> None:
        answers = await _callers(flight, load, "a")
        assert len(answers) == CALLERS and all(isinstance(a, ConnectionError) for a in answers)
        assert load.calls == ["a"]
        load.result = "back"
        assert await flight("a") == "back:a"

    anyio.run(main)


def test_different_keys_load_side_by_side() -> None:
    load = GatedLoad()
    flight = SingleFlight(load)

    async def main() -> None:
        answers: dict[str, object] = {}

        async def call(key: str) -> None:
            answers[key] = await flight(key)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "a")
            tasks.start_soon(call, "b")
            with anyio.fail_after(10):  # both loads start while neither may finish: side by side
                while len(load.calls) < 2:
                    await anyio.sleep(0.01)
            assert sorted(load.calls) == ["a", "b"]
            load.release.set()
        assert answers == {"a": "value:a", "b": "value:b"}

    anyio.run(main)


def test_a_cancelled_loader_still_answers_its_waiters() -> None:
    load = GatedLoad()
    flight = SingleFlight(load)

    async def main() -> None:
        waited: list[object] = []

        async def wait() -> None:
            waited.append(await flight("a"))

        loader = anyio.CancelScope()

        async def load_then_be_cancelled() -> None:
            with loader:
                await flight("a")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(load_then_be_cancelled)
            await wait_all_tasks_blocked()
            tasks.start_soon(wait)
            await wait_all_tasks_blocked()
            loader.cancel()  # while its load runs in the worker thread
            load.release.set()
        assert waited == ["value:a"] and load.calls == ["a"]

    anyio.run(main)


@contextmanager
def counting_selects(database: Database, table: str) -> Iterator[list[str]]:
    """The SELECTs from `table` that reach the database while the block runs."""
    seen: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
            seen.append(statement)

    event.listen(database.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(database.engine, "before_cursor_execute", before)


def test_stale_tool_pins_are_read_once_for_all_concurrent_calls(database_url: str) -> None:
    database = Database(database_url)
    database.migrate()
    pins = ToolPins(database)
    pins.approve("svc", [{"name": "echo", "description": "Echo", "inputSchema": {"type": "object"}}])

    async def main() -> list[bool]:
        answers: list[bool] = []

        async def check(tool: str) -> None:
            answers.append(await pins.is_callable_now("svc", tool))

        async with anyio.create_task_group() as tasks:
            for n in range(CALLERS):
                tasks.start_soon(check, "echo" if n % 2 else "unapproved")
        return answers

    try:
        with counting_selects(database, "tool_pins") as selects:  # approval left the cache empty
            answers = anyio.run(main)
        assert sorted(answers) == [False] * (CALLERS // 2) + [True] * (CALLERS // 2)
        assert len(selects) == 1
    finally:
        database.close()


def test_a_stale_deployment_is_read_once_for_all_concurrent_calls(database_url: str) -> None:
    database = Database(database_url)
    database.migrate()
    sealer = Sealer(os.urandom(32))
    deployment_id = str(uuid.uuid4())
    with database.session() as session:
        session.add(Deployment(id=deployment_id, slug="svc", entry="time",
                               bridge_token=sealer.seal(b"bridge-secret", context=seal_context(deployment_id, "bridge-token")),
                               instances=[Instance(number=0, status="running", endpoint="http://192.0.2.7:8080")]))
    directory = DeploymentDirectory(database, sealer, Catalog.load())

    async def main() -> list[object]:
        found: list[object] = []

        async def resolve() -> None:
            found.append(await directory.resolve("svc"))

        async with anyio.create_task_group() as tasks:
            for _ in range(CALLERS):
                tasks.start_soon(resolve)
        return found

    try:
        with counting_selects(database, "deployments") as selects:
            found = anyio.run(main)
        assert len(selects) == 1
        assert len(found) == CALLERS and all(u is found[0] for u in found)
        upstream = found[0]
        assert upstream is not None and upstream.token == "bridge-secret"  # type: ignore[attr-defined]
        assert [r.endpoint for r in upstream.replicas] == ["http://192.0.2.7:8080"]  # type: ignore[attr-defined]
    finally:
        database.close()
