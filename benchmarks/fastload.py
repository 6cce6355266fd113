"""Load benchmark data fast, into the same tables and rows the stores' write paths make.

The growth benchmark needs 10,000,000 events; the embedded store's ``write`` stores about
1,100 a second here (each batch a durable transaction updating four indexes, the rollups
recounted as it goes), so 10,000,000 would take hours. This loader writes the rows the
store's own encoding makes (:func:`metronome.store.sqlite.sqlite_rows`, inserted with the
store's own ``INSERT``), marks their days with the store's :func:`mark_dirty`, and counts
the rollups with the store's :func:`refresh_rollups` once at the end: the tables hold
what the write path leaves, only written faster:

* the events' secondary indexes are dropped while loading and made again afterwards from
  the very definitions the schema gave them (``sqlite_master``): a sorted build instead
  of 10,000,000 random inserts;
* no rollback journal and no fsync while loading (``journal_mode=OFF``,
  ``synchronous=OFF``), a large page cache; the database is switched back to WAL (what
  :func:`metronome.store.sqlite.connect` expects) when done. A crash while loading
  leaves a broken file: it is benchmark data, loaded again.

``tests/test_fastload.py`` loads the same events both ways and compares reports.

Elasticsearch: :func:`benchmarks.reports.load_elasticsearch` already bulk-loads the
documents the store writes (its index names, its ids) with ``parallel_bulk``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["load_sqlite"]

_BATCH = 50_000
_CACHE_KIB = 2 * 1024 * 1024  # 2 GiB page cache while loading


def load_sqlite(data_dir: Path, documents: Iterable[Any], *, batch: int = _BATCH) -> dict[str, Any]:
    """Load ``documents`` (:class:`metronome.events.document.Document`) into the embedded
    store in ``data_dir`` (made and given its schema by the store if new). Returns the
    seconds spent writing rows, building indexes and counting rollups."""
    from metronome.config import Settings
    from metronome.events import fields as F
    from metronome.store.sqlite import _INSERT, DB_NAME, SQLiteStore, sqlite_rows
    from metronome.store.sqlite_query import install_functions
    from metronome.store.sqlite_rollups import mark_dirty, refresh_rollups

    store = SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(data_dir)}))

    async def schema() -> None:
        async with store:
            await store.ensure_schema()

    asyncio.run(schema())
    conn = sqlite3.connect(Path(data_dir) / DB_NAME, isolation_level=None)
    install_functions(conn)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
        " AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    replace = _INSERT.replace("OR IGNORE", "OR REPLACE")

    def flush(docs: list[Any]) -> None:
        rows = sqlite_rows(docs)
        conn.execute("BEGIN")
        mark_dirty(conn, ((row[9], row[1], row[2]) for row in rows))
        conn.executemany(replace, [r for r in rows if r[1] in F.REPLACED_DATASETS])
        conn.executemany(_INSERT, [r for r in rows if r[1] not in F.REPLACED_DATASETS])
        conn.execute("COMMIT")

    started = time.perf_counter()
    pending: list[Any] = []
    count = 0
    for document in documents:
        pending.append(document)
        if len(pending) == batch:
            flush(pending)
            count += len(pending)
            pending = []
    if pending:
        flush(pending)
        count += len(pending)
    written = time.perf_counter()
    for _, sql in indexes:
        conn.execute(sql)
    indexed = time.perf_counter()
    refresh_rollups(conn)
    rolled = time.perf_counter()
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return {
        "events": count,
        "write_seconds": round(written - started, 1),
        "index_seconds": round(indexed - written, 1),
        "rollup_seconds": round(rolled - indexed, 1),
    }
