"""The embedded store: SQLite in WAL mode, in ``METRONOME_DATA_DIR``.

Why SQLite: it ships with Python, keeps everything in one file, and its WAL mode lets
several server processes read while one writes, with a busy timeout serialising writers;
``synchronous=FULL`` makes an acknowledged write survive power loss. Reports compile to
SQL (GROUP BY, and a join on generated bucket bounds for time series) over indexed columns.

One row per document: the columns reports filter and group by, plus the whole document as
JSON (``doc``) so any other field stays queryable with ``json_extract``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import orjson

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.events import fields as F
from metronome.events.document import Document
from metronome.files import create_private, open_private
from metronome.store.base import (
    EncodedWrite,
    GroupRow,
    Removal,
    RetentionResult,
    SchemaChange,
    WriteOutcome,
)
from metronome.store.query import BasketCounts, BasketQuery, GroupQuery
from metronome.store.sqlite_query import COLUMNS as QUERY_COLUMNS
from metronome.store.sqlite_query import (
    VISITOR_EXPR,
    delete_sql,
    documents_sql,
    install_functions,
    json_path,
    names_sql,
    query_baskets,
    query_top,
)
from metronome.store.sqlite_related import basket_popularity
from metronome.store.sqlite_rollups import (
    group_rows,
    install_rollups,
    mark_dirty,
    refresh_rollups,
    rollup_sql,
)

__all__ = [
    "COLUMNS",
    "DB_NAME",
    "ConnectionThread",
    "SQLiteDefinitions",
    "SQLiteStore",
    "connect",
    "setup_lock",
    "sqlite_rows",
]

DB_NAME = "metronome.sqlite3"
_DELETE_BATCH = 5000  # rows per retention transaction
_ROLLUP_EVERY_S = 5.0  # how often a write also counts the past days written into rollups
_ROLLUP_DAYS = 8  # at most this many (site, dataset, day) per such pass: a bounded delay
# A connection that writes in bulk (``metronome import``): its batches touch index pages
# all over the file, which SQLite's default 2 MB page cache re-read each time; and its WAL
# is copied into the database (a checkpoint, with an fsync) every 40 MB instead of 4 MB,
# so a page written by many batches is copied once. Durability is the commits' own.
# 16 MiB, not 32: the import's peak memory (goal 300 MB) fell 20 MiB at 100,000 lines,
# its CPU per line did not rise (the pages evicted are still in the OS's cache).
_BULK_CACHE_KIB = 16384
_BULK_CHECKPOINT_PAGES = 10000

# document field -> column; fields without a column are read from the JSON document
COLUMNS: dict[str, str] = {F.TIMESTAMP: "ts", **QUERY_COLUMNS}

# A table with rowids, not WITHOUT ROWID (databases made before keep theirs; both answer
# alike): its rows (about 1 KB of JSON each) are appended in rowid order and only the id's
# own index takes keys in random order, where a WITHOUT ROWID table kept whole rows in id
# order, so each batch rewrote pages all over the file (issue 24: a bulk import wrote 40%
# fewer bytes and stored 1,800 bytes per event instead of 2,900).
# Every report filters on the site, so it leads both indexes. An item's index has the time
# right after the item, so "this item's events in the last 5 minutes" (a live subscription)
# reads those rows only, whatever the action; the action follows, for /tock's "this item's
# views". (Before, (site_id, dataset, item_id, action, ts) could not bound the time without
# an action, so SQLite read every event of the range through events_site_ts instead.)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    ts INTEGER NOT NULL,
    item_id TEXT,
    action TEXT,
    format TEXT,
    referrer_page TEXT,
    bot INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL,
    site_id TEXT NOT NULL DEFAULT 'default',
    spam,
    visitor
);
DROP INDEX IF EXISTS events_item_action_ts;
DROP INDEX IF EXISTS events_ts;
DROP INDEX IF EXISTS events_site_item_action_ts;
CREATE INDEX IF NOT EXISTS events_site_item_ts_action
    ON events (site_id, dataset, item_id, ts, action);
"""
# A range of a site's events, with the columns reports count by (the rollups, and the
# usual filters) in the index itself: counting a day never reads the documents.
_RANGE_INDEX = """
DROP INDEX IF EXISTS events_site_ts;
CREATE INDEX IF NOT EXISTS events_site_ts_columns
    ON events (site_id, dataset, ts, item_id, action, format, referrer_page, bot, spam);
"""
_SCHEMA += """
CREATE VIEW IF NOT EXISTS visits AS
    SELECT id, ts, site_id, doc FROM events WHERE dataset = 'visits';
"""
# Related items (issue 25) read every event of the visitors who saw an item: by visitor.
# The visitor is a column (``visitor.id`` as json_extract reads it from the document,
# written with the row), not an index on json_extract(doc, '$.visitor.id'): that index
# parsed each row's whole JSON document on every insert, 40% of an import's insert time.
# Only rows with an item are in it: every statement that reads by visitor asks for events
# with an item (``item_id IS NOT NULL``, ``= ?``, ``IN (...)``, which SQLite takes as
# implying the index's WHERE), and the others (a log line no URL rule matched, every visit
# summary: 60% of an import's rows) were the costliest part of a bulk write: a visitor is
# a random key, so each row rewrote an index page of its own (issue 24: 8 of the writer's
# 28 us per line at 200,000 lines, 3.5 of its 7.8 KB written).
_VISITOR_INDEX = f"""
CREATE INDEX IF NOT EXISTS events_site_visitor_items
    ON events (site_id, dataset, {VISITOR_EXPR}, ts) WHERE item_id IS NOT NULL;
"""
# The index of every row by visitor, as Metronome made it before: it goes once the one
# above is built.
_FULL_VISITOR_INDEX = "events_site_visitor_column"
# A database made before: its expression index (or one that an older Metronome made
# again) goes, after the column holds every row's visitor.
_OLD_VISITOR_INDEX = "events_site_visitor"
_ADD_VISITOR = "ALTER TABLE events ADD COLUMN visitor"
_FILL_VISITOR = (
    f"UPDATE events SET visitor = json_extract(doc, {json_path(F.VISITOR_ID)})"
    " WHERE visitor IS NULL"
)
# A database made before sites existed: its events belong to the default site.
_ADD_SITE = "ALTER TABLE events ADD COLUMN site_id TEXT NOT NULL DEFAULT 'default'"
# Referrer spam as a column (what json_extract reads from the document): the default
# filter of every report reads it, and the rollups count by it, without parsing JSON.
_ADD_SPAM = "ALTER TABLE events ADD COLUMN spam"
_FILL_SPAM = f"UPDATE events SET spam = json_extract(doc, {json_path(F.REFERRER_SPAM)})"


_INSERT = (
    "INSERT OR IGNORE INTO events (id, dataset, ts, item_id, action, format,"
    " referrer_page, bot, doc, site_id, spam, visitor)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_Row = tuple[str, str, int, Any, Any, Any, Any, int, str, str, Any, Any]


# the document fields of the indexed columns as (object, key): one row is made per document
_ITEM, _ITEM_ID = F.ITEM_ID.split(".")
_ITEM_AGAIN, _ITEM_FORMAT = F.ITEM_FORMAT.split(".")
_EVENT, _ACTION = F.EVENT_ACTION.split(".")
_REFERRER, _PAGE = F.REFERRER_PAGE.split(".")
_REFERRER_AGAIN, _SPAM = F.REFERRER_SPAM.split(".")
_SITE, _SITE_ID = F.SITE_ID.split(".")
_VISITOR, _VISITOR_ID = F.VISITOR_ID.split(".")
assert _ITEM == _ITEM_AGAIN and _REFERRER == _REFERRER_AGAIN and "." not in F.BOT
_NO_ITEM: dict[str, Any] = {}


def _row(d: Document) -> _Row:
    source = d.source
    item = source.get(_ITEM)
    event = source.get(_EVENT)
    referrer = source.get(_REFERRER)
    site = source.get(_SITE)
    visitor = source.get(_VISITOR)
    if not isinstance(item, dict):
        item = _NO_ITEM
    return (
        d.id,
        d.dataset,
        d.timestamp_ms,
        item.get(_ITEM_ID),
        event.get(_ACTION) if isinstance(event, dict) else None,
        item.get(_ITEM_FORMAT),
        referrer.get(_PAGE) if isinstance(referrer, dict) else None,
        int(bool(source.get(F.BOT))),
        orjson.dumps(source).decode(),
        (site.get(_SITE_ID) if isinstance(site, dict) else None) or F.DEFAULT_SITE,
        _json_value(referrer.get(_SPAM)) if isinstance(referrer, dict) else None,
        _json_value(visitor.get(_VISITOR_ID)) if isinstance(visitor, dict) else None,
    )


def sqlite_rows(documents: Sequence[Document]) -> list[_Row]:
    """The ``events`` rows of documents, as :meth:`SQLiteStore.write_encoded` inserts them:
    the indexed columns and the document as JSON (a pure function: ``metronome import``
    runs it in its parsing process)."""
    return [_row(d) for d in documents]


def _json_value(value: Any) -> Any:
    """``value`` as SQLite's ``json_extract`` reads it from the stored document."""
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | float | str):
        return value
    return orjson.dumps(value).decode()


def _column(field: str) -> str:
    if field in COLUMNS:
        return COLUMNS[field]
    return f"json_extract(doc, {json_path(field)})"


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def _replaced(document: Document) -> bool:
    return document.dataset in F.REPLACED_DATASETS


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value


@contextlib.contextmanager
def setup_lock(path: Path) -> Iterator[None]:
    """Serialise first-time setup (WAL switch, schema) between server processes."""
    with open_private(path.with_suffix(".lock"), "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the shared database file: WAL, a busy timeout, durable commits.

    Autocommit mode (``isolation_level=None``): callers say ``BEGIN IMMEDIATE`` when they
    write more than one statement. Usable from one thread at a time.
    """
    with setup_lock(path):
        if not path.exists():
            # SQLite gives its -wal and -shm files the database file's mode. Only a file
            # that does not exist yet is touched: closing any descriptor of an open
            # database drops every POSIX lock this process holds on it, so a connection
            # elsewhere would take the file for unused and delete the -wal being written
            create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    install_functions(conn)
    return conn


class ConnectionThread:
    """One connection to the shared database file, used from its own single thread (what
    the store and the sites registry each hold). Subclasses open it in ``_connect``."""

    def __init__(self, path: Path, thread_name: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the connection's thread; SQLite failures become a 503."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the embedded store failed: {exc}") from exc

    async def open(self) -> None:
        """Nothing here: the connection opens on first use (subclasses may open it now)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection on its thread, then the thread."""

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(_close)
        self._executor.shutdown(wait=True)


class SQLiteDefinitions(ConnectionThread):
    """Saved definitions (KPIs, funnels) in one table of the database file, keyed by
    ``(site_id, id)``: rows of ``site_id, id, definition`` (JSON text) and the columns
    that follow it (times). Subclasses turn rows into their own objects."""

    def __init__(self, data_dir: str | Path, table: str, columns: tuple[str, ...], schema: str):
        super().__init__(Path(data_dir) / DB_NAME, table)
        self._table = table
        self._schema = schema
        names = ", ".join(columns)
        self._select = f"SELECT {names} FROM {table}"
        marks = ", ".join("?" for _ in columns)
        self._insert = f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})"

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self._path)
            with setup_lock(self._path):
                conn.executescript(self._schema)
            self._conn = conn
        return self._conn

    async def _rows(self, site_id: str | None) -> list[tuple[Any, ...]]:
        """Every row, or a site's."""

        def _read() -> list[tuple[Any, ...]]:
            if site_id is None:
                return self._db().execute(self._select).fetchall()
            return self._db().execute(self._select + " WHERE site_id = ?", (site_id,)).fetchall()

        rows: list[tuple[Any, ...]] = await self._run(_read)
        return rows

    async def _row(self, site_id: str, item_id: str) -> tuple[Any, ...] | None:
        def _read() -> tuple[Any, ...] | None:
            sql = self._select + " WHERE site_id = ? AND id = ?"
            row: tuple[Any, ...] | None = self._db().execute(sql, (site_id, item_id)).fetchone()
            return row

        found: tuple[Any, ...] | None = await self._run(_read)
        return found

    async def _put_row(self, row: tuple[Any, ...]) -> None:
        """Write a row (its definition already JSON text), replacing one of the same key."""

        def _write() -> None:
            with self._db() as conn:
                conn.execute(self._insert, row)

        await self._run(_write)

    async def _delete_row(self, site_id: str, item_id: str) -> bool:
        """Remove a row; False when there was none."""

        def _delete() -> int:
            with self._db() as conn:
                sql = f"DELETE FROM {self._table} WHERE site_id = ? AND id = ?"
                return conn.execute(sql, (site_id, item_id)).rowcount

        return bool(await self._run(_delete))


class SQLiteStore(ConnectionThread):
    """The embedded store. Each process opens its own connection to the shared file."""

    backend = "sqlite"

    def __init__(self, settings: Settings, *, rollup_every_s: float = _ROLLUP_EVERY_S) -> None:
        """``rollup_every_s``: how often a write also counts the past days written into the
        rollups (``math.inf``: only :meth:`refresh_rollups` counts them)."""
        super().__init__(Path(settings.data_dir) / DB_NAME, "sqlite")
        self._rollup_every_s = rollup_every_s
        self._rolled_at = 0.0
        self._durable = True  # synchronous=FULL, as connect() leaves it
        self._bulk = False  # the connection has the bulk writer's page cache
        self._related_rollups = settings.related_rollups

    @property
    def path(self) -> Path:
        return self._path

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._path)
        return self._conn

    async def open(self) -> None:
        await self._run(self._connect)

    async def ensure_schema(self) -> list[SchemaChange]:
        def _install() -> list[SchemaChange]:
            conn = self._connect()
            with setup_lock(self._path):
                existed = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
                ).fetchone()
                columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
                if existed and "site_id" not in columns:
                    conn.execute(_ADD_SITE)
                    action = "updated"
                else:
                    action = "unchanged" if existed else "created"
                conn.executescript(_SCHEMA)
                if "spam" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(_ADD_SPAM)
                    conn.execute(_FILL_SPAM)
                    conn.execute("COMMIT")
                    action = "updated"
                conn.executescript(_RANGE_INDEX)
                if "visitor" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
                    conn.execute(_ADD_VISITOR)
                    action = "updated"
                # rows written before the column (or without it)
                if _has_index(conn, _OLD_VISITOR_INDEX):
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute(_FILL_VISITOR)
                    conn.execute(f"DROP INDEX {_OLD_VISITOR_INDEX}")
                    conn.execute("COMMIT")
                    action = "updated"
                conn.executescript(_VISITOR_INDEX)
                if _has_index(conn, _FULL_VISITOR_INDEX):
                    conn.execute(f"DROP INDEX {_FULL_VISITOR_INDEX}")
                    action = "updated"
                made = install_rollups(conn)
            changes = [SchemaChange("events", action)]  # type: ignore[arg-type]  # action holds one of its Literal values
            changes += [SchemaChange(table, "created") for table in made]
            return changes

        result: list[SchemaChange] = await self._run(_install)
        return result

    async def check_ready(self) -> str | None:
        def _check() -> str | None:
            conn = self._connect()
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
            return None if row else "the embedded store has no schema yet"

        try:
            result: str | None = await self._run(_check)
        except StoreUnavailable as exc:
            return exc.message
        return result

    async def write(
        self,
        documents: Sequence[Document],
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> list[WriteOutcome]:
        """Store every document, or none (one transaction; a failure raises
        :class:`StoreUnavailable`). ``also(conn)`` writes more rows of the same database
        in that transaction (the shipper's visit state): committed with the documents."""
        rows = sqlite_rows(documents)
        insert = _INSERT

        replaced = [row for d, row in zip(documents, rows, strict=True) if _replaced(d)]
        if replaced:  # summaries (visits): written again as they grow, stored up to date
            rows = [row for d, row in zip(documents, rows, strict=True) if not _replaced(d)]

        def _insert() -> list[bool] | None:
            """Which rows were stored already (None: none was, the usual case)."""
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            existed: list[bool] | None = None
            try:
                mark_dirty(conn, ((row[9], row[1], row[2]) for row in [*rows, *replaced]))
                if replaced:
                    conn.executemany(insert.replace("OR IGNORE", "OR REPLACE"), replaced)
                before = conn.total_changes
                conn.executemany(insert, rows)
                if conn.total_changes - before != len(rows):  # some were: again, row by row
                    conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                    mark_dirty(conn, ((row[9], row[1], row[2]) for row in [*rows, *replaced]))
                    if replaced:  # the rollback took the summaries too
                        conn.executemany(insert.replace("OR IGNORE", "OR REPLACE"), replaced)
                    existed = []
                    for row in rows:
                        before = conn.total_changes
                        conn.execute(insert, row)
                        existed.append(conn.total_changes == before)
                if also is not None:
                    also(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if time.monotonic() - self._rolled_at >= self._rollup_every_s:
                self._rolled_at = time.monotonic()
                with contextlib.suppress(sqlite3.OperationalError):  # stored; counted next time
                    refresh_rollups(conn, before_ms=int(time.time() * 1000), max_days=_ROLLUP_DAYS)
            return existed

        existed: list[bool] | None = await self._run(_insert)
        if existed is None:
            return [WriteOutcome(d.id, True) for d in documents]
        stored = iter(existed)  # one per row written with OR IGNORE, in order
        return [
            WriteOutcome(d.id, True, existed=not _replaced(d) and next(stored)) for d in documents
        ]

    async def refresh_rollups(self, *, max_days: int | None = None) -> int:
        """Count every dirty day (today's too) into the rollups now; returns the days."""

        def _refresh() -> int:
            return refresh_rollups(self._connect(), max_days=max_days)

        days: int = await self._run(_refresh)
        return days

    def _read(self, run: Any) -> list[GroupRow]:
        """``run(conn, rollup SELECT or None)`` in one read transaction: the rollups' dirty
        marks and the counts it reads are of the same moment."""
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            rows: list[GroupRow] = run(conn)
        finally:
            conn.execute("COMMIT")
        return rows

    async def write_encoded(self, batch: Sequence[Any], *, durable: bool = True) -> EncodedWrite:
        """Insert :func:`sqlite_rows` rows in one transaction; rows whose id is stored
        already are left as they are (counted in ``already``), except summaries (the
        ``visits`` dataset), which replace the stored one, as :meth:`write` does, and are
        not counted.

        ``durable=False`` commits with ``synchronous=NORMAL``: in WAL mode the commit is
        in the WAL file (a crash of any process loses nothing) but not yet fsynced, so a
        power cut may roll back the latest such commits, never half of one, and never a
        durable commit or anything before it: a ``synchronous=FULL`` commit fsyncs the
        WAL, every earlier commit's frames with it."""

        replaced = [row for row in batch if row[1] in F.REPLACED_DATASETS]
        rows = [row for row in batch if row[1] not in F.REPLACED_DATASETS] if replaced else batch

        def _insert() -> int:
            conn = self._connect()
            if durable != self._durable:
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            if not self._bulk:
                conn.execute(f"PRAGMA cache_size = -{_BULK_CACHE_KIB}")
                conn.execute(f"PRAGMA wal_autocheckpoint = {_BULK_CHECKPOINT_PAGES}")
                self._bulk = True
            conn.execute("BEGIN IMMEDIATE")
            try:
                mark_dirty(conn, ((row[9], row[1], row[2]) for row in batch))  # the rollups
                if replaced:
                    conn.executemany(_INSERT.replace("OR IGNORE", "OR REPLACE"), replaced)
                before = conn.total_changes
                conn.executemany(_INSERT, rows)
                stored = conn.total_changes - before
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return stored

        stored: int = await self._run(_insert)
        return EncodedWrite(stored, len(rows) - stored)

    async def groups(
        self, query: GroupQuery, *, after: tuple[Any, ...] | None, limit: int
    ) -> list[GroupRow]:
        def _query(conn: sqlite3.Connection) -> list[GroupRow]:
            return group_rows(conn, query, after, limit)

        rows: list[GroupRow] = await self._run(self._read, _query)
        return rows

    async def top(
        self, query: GroupQuery, *, metric: int, descending: bool, size: int
    ) -> list[GroupRow]:
        def _query(conn: sqlite3.Connection) -> list[GroupRow]:
            return query_top(conn, query, metric, descending, size, rollup_sql(conn, query))

        rows: list[GroupRow] = await self._run(self._read, _query)
        return rows

    async def baskets(self, query: BasketQuery) -> BasketCounts:
        popularity = basket_popularity if self._related_rollups else None

        def _query() -> BasketCounts:
            conn = self._connect()
            conn.execute("BEGIN")  # the dirty marks and the counts of the same moment
            try:
                return query_baskets(conn, query, popularity)
            finally:
                conn.execute("COMMIT")

        counts: BasketCounts = await self._run(_query)
        return counts

    async def documents(self, query: GroupQuery, *, limit: int) -> list[dict[str, Any]]:
        sql, args = documents_sql(query, limit)

        def _read() -> list[dict[str, Any]]:
            return [orjson.loads(row[0]) for row in self._connect().execute(sql, args)]

        found: list[dict[str, Any]] = await self._run(_read)
        return found

    async def field_names(
        self, query: GroupQuery, under: str, partition: str | None = None
    ) -> list[str]:
        sql, args = names_sql(query, under)

        def _names() -> list[str]:
            return [str(row[0]) for row in self._connect().execute(sql, args)]

        names: list[str] = await self._run(_names)
        return names

    async def delete_matching(self, query: GroupQuery) -> int:
        sql, args = delete_sql(query)

        def _delete() -> int:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                deleted = conn.execute(sql, args).rowcount
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return int(deleted)

        count: int = await self._run(_delete)
        return count

    async def delete_before(
        self, datasets: Sequence[str], cutoff_ms: int, *, dry_run: bool = False
    ) -> RetentionResult:
        """Delete rows older than the cutoff, in batches of short transactions so the
        shipper's writes and the API's reads never wait long. The file does not shrink:
        SQLite reuses the freed pages for new rows."""

        def _count(conn: sqlite3.Connection, dataset: str) -> int:
            row = conn.execute(
                "SELECT count(*) FROM events WHERE dataset = ? AND ts < ?", (dataset, cutoff_ms)
            ).fetchone()
            return int(row[0])

        def _delete() -> RetentionResult:
            conn = self._connect()
            removed: list[Removal] = []
            if not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone():
                return RetentionResult("rows", (), dry_run)  # nothing stored yet
            for dataset in datasets:
                if dry_run:
                    count = _count(conn, dataset)
                else:
                    count = 0
                    while True:
                        conn.execute("BEGIN IMMEDIATE")
                        try:
                            done = conn.execute(
                                "DELETE FROM events WHERE id IN (SELECT id FROM events"
                                " WHERE dataset = ? AND ts < ? LIMIT ?)",
                                (dataset, cutoff_ms, _DELETE_BATCH),
                            ).rowcount
                        except BaseException:
                            conn.execute("ROLLBACK")
                            raise
                        conn.execute("COMMIT")
                        count += done
                        if done < _DELETE_BATCH:
                            break
                if count:
                    removed.append(Removal(dataset, count))
            return RetentionResult("rows", tuple(removed), dry_run)

        result: RetentionResult = await self._run(_delete)
        return result
