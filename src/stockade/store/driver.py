"""Core statements run on the database driver's own connection, for the gateway's per-call work.

Why not SQLAlchemy's execution path: the token lookup and the audit insert run on every call
through the gateway, and there SQLAlchemy's execution machinery (connection checkout, execution
context, result objects) costs 0.35-0.45 ms of CPU per statement on this machine, against about
0.12 ms for the driver's own call (measured with the CPU caches holding the rest of a request's
code, as they do in the gateway; README.md, "Benchmarks"). What stays SQLAlchemy's is everything
that decides what is stored: the SQL text (a Core statement compiled once for the dialect) and the
value conversions (each column's own bind and result processors), so a row reads and writes here
exactly as it does through SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ClauseElement, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import DBAPIConnection


class DriverStatement:
    """One Core statement, compiled once for `dialect`, run on a DB-API connection of that dialect."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.positiontup is None:
            raise TypeError(f"{dialect.name} uses named parameters; DriverStatement supports positional ones")
        self.sql = compiled.string
        # Binds the caller supplies are required; the others carry their value (a LIMIT, say).
        self._binds: tuple[tuple[str, Callable[[Any], Any] | None, bool, Any], ...] = tuple(
            (name, bind.type.dialect_impl(dialect).bind_processor(dialect), bind.required, bind.effective_value)
            for name in compiled.positiontup
            for bind in (compiled.binds[name],)
        )
        columns = statement.selected_columns if isinstance(statement, Select) else ()
        self._results: tuple[Callable[[Any], Any] | None, ...] = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )

    def _parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        parameters = []
        for name, process, required, default in self._binds:
            value = values[name] if required else values.get(name, default)
            parameters.append(value if process is None else process(value))
        return tuple(parameters)

    def first(self, connection: DBAPIConnection, values: Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
        """The first row, its values converted as SQLAlchemy would; None when there is none."""
        cursor = connection.cursor()
        try:
            cursor.execute(self.sql, self._parameters(values or {}))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        return tuple(value if process is None else process(value) for process, value in zip(self._results, row, strict=True))

    def execute_many(self, connection: DBAPIConnection, rows: Sequence[Mapping[str, Any]]) -> None:
        cursor = connection.cursor()
        try:
            cursor.executemany(self.sql, [self._parameters(row) for row in rows])
        finally:
            cursor.close()
