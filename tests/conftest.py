"""Fixtures shared by the whole suite: a real platform process on loopback, on the real engine.

Nothing here skips: if the Docker engine or an image cannot be had, the tests that need them fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx2
import pytest

from stockade.store.database import Database

REPO = Path(__file__).resolve().parents[1]
# STOCKADE_TEST_DATABASE=postgresql runs the suite against the local PostgreSQL server that
# scripts/test starts; each test (and each platform) gets a database of its own.
TEST_DATABASE = os.environ.get("STOCKADE_TEST_DATABASE", "sqlite")
POSTGRES_DSN = "postgresql+psycopg://stockade_test:stockade_test@127.0.0.1:5432"


def fresh_database_url(directory: Path) -> str:
    """A new, empty database for `directory`; the same one again for the same directory."""
    if TEST_DATABASE == "sqlite":
        return f"sqlite:///{directory / 'stockade.db'}"
    remembered = directory / ".test-database-url"
    if remembered.exists():
        return remembered.read_text()
    if TEST_DATABASE != "postgresql":
        raise AssertionError(f"STOCKADE_TEST_DATABASE must be sqlite or postgresql, not {TEST_DATABASE!r}")
    import sqlalchemy

    name = f"stockade_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(f"{POSTGRES_DSN}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    remembered.write_text(f"{POSTGRES_DSN}/{name}")
    return remembered.read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningPlatform:
    data_dir: Path
    gateway_url: str
    control_url: str
    admin_token: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def api(self) -> httpx2.Client:
        return httpx2.Client(base_url=f"{self.control_url}/api/v1", headers=self.admin_headers, timeout=300)

    def cli_command(self) -> list[str]:
        return [sys.executable, "-m", "stockade.cli"]

    def cli_env(self, token: str | None = None) -> dict[str, str]:
        return dict(self.env, STOCKADE_TOKEN=token if token is not None else self.admin_token)

    def cli(self, *args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.cli_command(), *args], env=self.cli_env(token), capture_output=True, text=True,
                                timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"stockade {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged_errors(self) -> list[str]:
        """Error records the platform logged (with their tracebacks): what a failing assertion should show."""
        errors = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # progress lines are plain text
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                errors.append(f"{record.get('message', '')}\n{record.get('error', '')}".strip())
        return errors

    @property
    def database_url(self) -> str:
        return self.env["STOCKADE_DATABASE_URL"]

    def sql(self, statement: str, **params: object) -> list[tuple]:
        """Run SQL directly against the platform's database (as an attacker with file access would)."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.database_url)
        try:
            with engine.begin() as connection:
                result = connection.execute(sqlalchemy.text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def database_bytes(self) -> bytes:
        """Everything the database holds, as bytes: the files for SQLite, every table's rows otherwise."""
        if self.database_url.startswith("sqlite:///"):
            path = Path(self.database_url.removeprefix("sqlite:///"))
            return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        tables = [row[0] for row in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return repr([self.sql(f'SELECT * FROM "{table}"') for table in tables]).encode()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"platform exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"platform did not answer on {url} within {timeout} s:\n{log_path.read_text()}")


def start_platform(data_dir: Path, **extra_env: str) -> RunningPlatform:
    gateway_port, control_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOCKADE_")},
        "STOCKADE_DATA_DIR": str(data_dir),
        "STOCKADE_GATEWAY_PORT": str(gateway_port),
        "STOCKADE_CONTROL_PORT": str(control_port),
        "STOCKADE_LOG_LEVEL": "warning",
        "STOCKADE_DATABASE_URL": fresh_database_url(data_dir),
        **extra_env,
    }
    admin = subprocess.run([sys.executable, "-m", "stockade.cli", "admin-token", "--name", "tests"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert admin.returncode == 0, admin.stderr
    log_path = data_dir / "platform.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "stockade.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    platform = RunningPlatform(
        data_dir=data_dir,
        gateway_url=f"http://127.0.0.1:{gateway_port}",
        control_url=f"http://127.0.0.1:{control_port}",
        admin_token=admin.stdout.strip(),
        env=env,
        process=process,
        log_path=log_path,
    )
    _wait_healthy(platform.gateway_url, process, log_path)
    _wait_healthy(platform.control_url, process, log_path)
    return platform


def wait_for(predicate, what: str, timeout: float = 120.0):  # noqa: ANN001, ANN201 - any truthy value
    """Poll `predicate` until it returns something truthy (returned); fail naming `what` at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def remove_deployments(platform: RunningPlatform) -> None:
    with platform.api() as api:
        for deployment in api.get("/deployments").json():
            api.delete(f"/deployments/{deployment['slug']}")


def stop_platform(platform: RunningPlatform) -> None:
    if platform.process.poll() is None:
        platform.process.send_signal(signal.SIGTERM)
        try:
            platform.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            platform.process.kill()
            platform.process.wait()


@pytest.fixture(scope="session", autouse=True)
def _drop_old_test_databases() -> None:
    """Test databases of earlier runs on this PostgreSQL server are dropped before this one."""
    if TEST_DATABASE != "postgresql":
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{POSTGRES_DSN}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        names = connection.execute(sqlalchemy.text("SELECT datname FROM pg_database WHERE datname LIKE 'stockade_test_%'"))
        for (name,) in list(names):
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture()
def database_url(tmp_path: Path) -> str:
    return fresh_database_url(tmp_path)


@pytest.fixture()
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    """A migrated SQLite database in either run, for what only SQLite does (work in place on the loop)."""
    db = Database(f"sqlite:///{tmp_path / 'sqlite' / 'stockade.db'}")
    db.migrate()
    yield db
    db.close()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.from_env(version="auto")
    client.ping()  # fails the tests (never skips) when the engine is not running
    yield client
    client.close()


@contextlib.contextmanager
def cleaned_up(running: RunningPlatform) -> Iterator[RunningPlatform]:
    """A started platform that, when the block ends, has its deployments removed and is stopped."""
    try:
        yield running
    finally:
        remove_deployments(running)
        stop_platform(running)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient) -> Iterator[RunningPlatform]:
    with cleaned_up(start_platform(tmp_path_factory.mktemp("platform"))) as running:
        yield running


@dataclass
class HeldStream:
    """A GET SSE stream read in a background thread until the server ends it."""

    connected: threading.Event
    ended: threading.Event
    statuses: list[int]


def hold_stream(url: str, headers: dict[str, str], *, timeout: float = 120) -> HeldStream:
    held = HeldStream(threading.Event(), threading.Event(), [])

    def read() -> None:
        with httpx2.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}, timeout=timeout) as response:
            held.statuses.append(response.status_code)
            held.connected.set()
            for _ in response.iter_raw():
                pass
        held.ended.set()

    threading.Thread(target=read, daemon=True).start()
    return held
