"""Load benchmark data fast, into the same tables and rows the stores' write paths make.

The growth benchmark needs 10,000,000 events; the embedded store's ``write`` stores about
1,100 a second here (each batch a durable transaction updating four indexes, the rollups
recounted as it goes), so 10,000,000 would take hours. This loader writes the rows the
store's own encoding makes (:func:`metronome.store.sqlite.sqlite_rows`, inserted with the
store's own ``INSERT``), marks their days with the store's :func:`mark_dirty`, and counts
the rollups with the store's :func:`refresh_rollups`: the tables hold what the write
path leaves, only written faster:

* documents are made and encoded in worker processes (``parts``), the rows inserted in
  order by this one;
* the events' secondary indexes are dropped while loading and made again afterwards from
  the very definitions the schema gave them (``sqlite_master``): a sorted build instead
  of 10,000,000 random inserts;
* no rollback journal and no fsync while loading (``journal_mode=OFF``,
  ``synchronous=OFF``), a large page cache; the database is switched back to WAL (what
  :func:`metronome.store.sqlite.connect` expects) when done. A crash while loading
  leaves a broken file: it is benchmark data, loaded again;
* with ``shards`` > 1 the rollups are counted in that many processes, each on its own
  copy of the file and for its own UTC months (a month's rows are summed from its days,
  so a month is never split), then copied into the database. A day's counts depend on
  that day's events only; the one table whose rows a day's count may also write for
  other days (``related_multi``: every cell of a basket that spans days, each time one
  of its days is counted) gets the rows of all copies once, as the last count would
  have left them.

``tests/test_fastload.py`` loads the same events both ways and compares every table and
reports.

Elasticsearch: :func:`benchmarks.reports.load_elasticsearch` already bulk-loads the
documents the store writes (its index names, its ids) with ``parallel_bulk``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["load_sqlite"]

_BATCH = 50_000
_CACHE_KIB = 2 * 1024 * 1024  # 2 GiB page cache while loading


def _open(path: Path) -> sqlite3.Connection:
    from metronome.store.sqlite_query import install_functions

    conn = sqlite3.connect(path, isolation_level=None)
    install_functions(conn)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
    return conn


def _rows_of(part: Callable[[], Iterable[Any]]) -> list[Any]:
    from metronome.store.sqlite import sqlite_rows

    return sqlite_rows(list(part()))


def _batches(documents: Iterable[Any], batch: int) -> Iterator[list[Any]]:
    from metronome.store.sqlite import sqlite_rows

    pending: list[Any] = []
    for document in documents:
        pending.append(document)
        if len(pending) == batch:
            yield sqlite_rows(pending)
            pending = []
    if pending:
        yield sqlite_rows(pending)


def _month(day_ms: int) -> int:
    moment = datetime.fromtimestamp(day_ms / 1000, UTC)
    return moment.year * 12 + moment.month


def _count_shard(path: Path, shard: int, shards: int) -> None:
    """Count the rollups of this shard's UTC months in ``path`` (a copy, or the file)."""
    from metronome.store.sqlite_rollups import refresh_rollups

    conn = _open(path)
    dirty = conn.execute("SELECT site_id, dataset, day FROM rollup_dirty").fetchall()
    others = [row for row in dirty if _month(row[2]) % shards != shard]
    conn.execute("BEGIN")
    conn.executemany(
        "DELETE FROM rollup_dirty WHERE site_id = ? AND dataset = ? AND day = ?", others
    )
    conn.execute("COMMIT")
    refresh_rollups(conn)
    conn.close()


def _count_rollups(path: Path, shards: int) -> None:
    from metronome.store.sqlite_related import RELATED_TABLES
    from metronome.store.sqlite_rollups import ROLLUP_TABLES, refresh_rollups

    if shards <= 1:
        conn = _open(path)
        refresh_rollups(conn)
        conn.close()
        return
    copies = [path.with_name(f"{path.name}.shard{k}") for k in range(1, shards)]
    for copy in copies:
        shutil.copyfile(path, copy)
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_count_shard, args=(file, k, shards))
        for k, file in enumerate([path, *copies])
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"counting rollups failed in a shard ({worker.exitcode})")
    conn = _open(path)
    for copy in copies:
        conn.execute("ATTACH DATABASE ? AS shard", (str(copy),))
        conn.execute("BEGIN")
        for table in [*ROLLUP_TABLES] + [t for t in RELATED_TABLES if t != "related_multi"]:
            conn.execute(f"INSERT INTO main.{table} SELECT * FROM shard.{table}")
        conn.execute(
            "INSERT INTO main.related_multi SELECT * FROM shard.related_multi"
            " EXCEPT SELECT * FROM main.related_multi"
        )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE shard")
        copy.unlink()
    conn.execute("DELETE FROM rollup_dirty")  # every shard counted its own
    conn.close()


def load_sqlite(
    data_dir: Path,
    documents: Iterable[Any] = (),
    *,
    parts: Sequence[Callable[[], Iterable[Any]]] = (),
    workers: int = 2,
    batch: int = _BATCH,
    shards: int = 1,
) -> dict[str, Any]:
    """Load ``documents`` (:class:`metronome.events.document.Document`), in batches of
    ``batch``, then the documents of each of ``parts`` (picklable callables, run in
    ``workers`` processes; a part is a batch), into the embedded store in ``data_dir``
    (made and given its schema by the store if new); the rollups counted in ``shards``
    processes. Returns the events and the seconds spent writing rows, building indexes
    and counting rollups, and the CPU seconds of this process and its workers."""
    from metronome.config import Settings
    from metronome.events import fields as F
    from metronome.store.sqlite import _INSERT, DB_NAME, SQLiteStore
    from metronome.store.sqlite_rollups import mark_dirty

    store = SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(data_dir)}))

    async def schema() -> None:
        async with store:
            await store.ensure_schema()

    asyncio.run(schema())
    path = Path(data_dir) / DB_NAME
    conn = _open(path)
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
        " AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    replace = _INSERT.replace("OR IGNORE", "OR REPLACE")
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    count = 0

    def flush(rows: list[Any]) -> None:
        conn.execute("BEGIN")
        mark_dirty(conn, ((row[9], row[1], row[2]) for row in rows))
        conn.executemany(replace, [r for r in rows if r[1] in F.REPLACED_DATASETS])
        conn.executemany(_INSERT, [r for r in rows if r[1] not in F.REPLACED_DATASETS])
        conn.execute("COMMIT")

    for rows in _batches(documents, batch):
        flush(rows)
        count += len(rows)
    if parts:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for rows in pool.imap(_rows_of, parts):
                flush(rows)
                count += len(rows)
    written = time.perf_counter()
    for _, sql in indexes:
        conn.execute(sql)
    conn.close()
    indexed = time.perf_counter()
    _count_rollups(path, shards)
    rolled = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return {
        "events": count,
        "write_seconds": round(written - started, 1),
        "index_seconds": round(indexed - written, 1),
        "rollup_seconds": round(rolled - indexed, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu_before, 1),
    }


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
