"""A SQL source: a SQLAlchemy URL and a query returning one number, or rows of
``(type, count)``.

The query runs in a thread of its own on a fresh connection each run (no pool kept between
periods that may be hours apart). A query that outlives the collector's timeout is
recorded as timed out; its thread is left to finish (a database driver call cannot be
interrupted from Python), and PostgreSQL is asked to give up too (``statement_timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metronome.jobs.sources import Measured, count_of, in_daemon_thread

__all__ = ["SQLSource", "parse"]

_KEYS = ("url", "query")


@dataclass(frozen=True, slots=True)
class SQLSource:
    url: str
    query: str

    def describe(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            shown = make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # a URL SQLAlchemy cannot read is refused when the run starts
            shown = "(unreadable URL)"
        return f"sql {shown}"

    async def measure(self, default_type: str, timeout_s: float) -> Measured:
        return await in_daemon_thread(lambda: self._query(default_type, timeout_s), "collector-sql")

    def _query(self, default_type: str, timeout_s: float) -> Measured:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        connect_args: dict[str, Any] = {}
        if self.url.startswith("postgresql"):
            connect_args["options"] = f"-c statement_timeout={int(timeout_s * 1000)}"
        engine = create_engine(self.url, poolclass=NullPool, connect_args=connect_args)
        try:
            with engine.connect() as conn:
                result = conn.execute(text(self.query))
                rows = [tuple(row) for row in result.fetchall()]
        finally:
            engine.dispose()
        return rows_to_points(rows, default_type)


def rows_to_points(rows: list[tuple[Any, ...]], default_type: str) -> Measured:
    """One row of one number: one point of ``default_type``; rows of two columns: one
    point per row, ``(type, count)``."""
    if len(rows) == 1 and len(rows[0]) == 1:
        return [(default_type, count_of(rows[0][0], "the query's one value"))]
    points: Measured = []
    for index, row in enumerate(rows):
        if len(row) != 2:
            raise ValueError(
                f"row {index} has {len(row)} columns; the query returns one number, or rows"
                " of (type, count)"
            )
        kind, value = row
        if kind is None:
            raise ValueError(f"row {index} has no type (NULL)")
        points.append((str(kind), count_of(value, f"row {index}'s count")))
    return points


def parse(table: Any, key: str) -> SQLSource:
    if not isinstance(table, dict):
        raise ValueError(f"{key}: expected a table with url and query")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ValueError(f"{key}: unknown key {unknown[0]!r}; sql takes url and query")
    for name in _KEYS:
        if not isinstance(table.get(name), str) or not table[name].strip():
            raise ValueError(f"{key}.{name}: expected a non-empty string")
    return SQLSource(table["url"], table["query"])
