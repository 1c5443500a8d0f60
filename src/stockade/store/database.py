"""Engine and session factory, with the schema brought to the newest migration on open."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from stockade.errors import ConfigError

BUSY_TIMEOUT_MS = 5000


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        sqlite = make_url(url).get_backend_name() == "sqlite"
        # A pre-ping finds connections a database server dropped; a SQLite file has no server.
        self.engine: Engine = create_engine(url, pool_pre_ping=not sqlite)
        self._sqlite = sqlite
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Apply every pending Alembic migration (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(resources.files("stockade.store") / "migrations"))
        config.attributes["engine"] = self.engine
        try:
            command.upgrade(config, "head")
        except OperationalError as exc:
            raise ConfigError(
                f"cannot open the database at {self.engine.url.render_as_string(hide_password=True)}: {exc.orig}",
                hint="check STOCKADE_DATABASE_URL and that the database server is running",
            ) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for queries that write nothing (no ORM session around them)."""
        with self.engine.connect() as connection:
            yield connection

    @property
    def is_sqlite(self) -> bool:
        return self._sqlite

    @contextmanager
    def loop_connection(self) -> Iterator[DBAPIConnection]:
        """SQLite's own driver connection, for statements the event loop runs in place.

        A write on it fails at once ("database is locked") instead of waiting while another
        connection writes: the loop must never sleep on a lock. From the pool, so the file's
        pragmas (WAL, foreign keys) hold on it as on every other connection.
        """
        if not self._sqlite:
            raise TypeError("only a SQLite database is used in place; a database server is asked from a thread")
        pooled = self.engine.raw_connection()
        try:
            pooled.driver_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
            try:
                yield pooled.dbapi_connection  # type: ignore[misc]
            finally:
                pooled.driver_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # type: ignore[union-attr]
        finally:
            pooled.close()

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    # WAL lets the gateway read while the audit writer writes; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()
