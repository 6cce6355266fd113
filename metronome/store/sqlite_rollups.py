"""Pre-aggregated counts beside the embedded store's events: what keeps reports fast at a
year of data.

Why: a report over a month of a busy site reads every event of the month (830,000 rows at
10,000,000 events a year) and groups them, so its cost grows with the events. Most reports
(``/tock``, top items, views per day) only count events by a few columns, so the store
keeps those counts per UTC day and per UTC month in rollup tables and answers a query from
them whenever that gives exactly the raw answer: far fewer, narrower rows.

How they stay exact:

* A write marks the (site, dataset, UTC day) of its events *dirty* in its own transaction
  (one row per day in a batch, not per event: counting each event into the rollups as it
  arrives would halve the write rate); deleting events (retention, forgetting) marks
  their days through a trigger, whoever deletes them.
* :func:`refresh_rollups` recounts dirty days from the events, and their months from the
  days, and clears the marks, in one transaction. The store runs it after writes, for
  whole past days, at most every few seconds; ``today`` stays dirty while it is written.
* :func:`rollup_sql` answers a query from the rollups only when every metric is a count or
  a distinct count of a rollup column, every dimension is a time bucket or a rollup column
  and every filter reads rollup columns. Its range is cut at the time buckets' bounds; a
  piece is read from whole clean UTC months, whole clean UTC days, and the events for the
  rest (its edges and the dirty days). Reading the marks and the counts in one read
  transaction gives one consistent answer. A time bucket that does not start on a UTC
  midnight (hour buckets; days in a zone not at UTC+0) never holds a whole UTC day, so
  those queries read the events, as before.

Three tables: ``rollup_pages`` (event, format, referrer page, bot, spam, no item: counts
per day or month by referrer, format or event), ``rollup_items`` (item, event, bot, spam:
top items, views per day; per day and per month) and ``rollup_details`` (all of them: the
rest of ``/tock``; per day only: with an item and a referrer page or a format in the key,
a month holds nearly as many rows as its days, so month rows would double the table for
little). A query uses the first of them that has its columns.

A fourth, ``rollup_fields``, answers "per day (or not) by one keyword field" for the fields
reports break down by that have no column of their own (:data:`FIELD_ROLLUP_FIELDS`:
domain, referrer domain, browser, OS, device, country, method, status, their versions,
error types): a row per day (and month), field, value, event, bot and spam, counted from
the documents in one pass a day. A query uses it when its one non-time dimension is such
a field, every metric is a count and every filter reads its columns (site, event, bot,
spam); the field's value is grouped as the documents hold it, so the answer is the
events' own.
"""

from __future__ import annotations

import heapq
import sqlite3
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from metronome.events import fields as F
from metronome.store.query import BoolNode, FieldRef, FilterNode, GroupQuery, Leaf
from metronome.store.sqlite_query import COLUMNS, Row, condition_sql, json_path, query_groups
from metronome.store.sqlite_related import (
    RELATED_SCHEMA,
    RELATED_TABLES,
    recount_related,
    related_datasets,
)

__all__ = [
    "DAY_MS",
    "FIELD_ROLLUP",
    "FIELD_ROLLUPS",
    "FIELD_ROLLUP_FIELDS",
    "ROLLUPS",
    "ROLLUP_TABLES",
    "VALUE_ROLLUP",
    "VALUE_ROLLUP_FIELDS",
    "FieldRollup",
    "group_rows",
    "Rollup",
    "install_rollups",
    "mark_dirty",
    "refresh_rollups",
    "rollup_sql",
]

DAY_MS = 86_400_000
DAY = 1  # the ``level`` of a row counting one UTC day
MONTH = 2  # ... one UTC calendar month
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_RAW_RANGES = 64  # more pieces of events to read: the plain query is as good


@dataclass(frozen=True, slots=True)
class Rollup:
    """One rollup table: event counts per level, site, dataset, period and ``columns``;
    per UTC day, and per UTC month too if ``months``."""

    table: str
    columns: tuple[str, ...]
    months: bool = True

    @property
    def fields(self) -> frozenset[str]:
        """The document fields it can group and filter by."""
        return frozenset(f for f, c in COLUMNS.items() if c in self.columns or c == "site_id")

    @property
    def keys(self) -> tuple[str, ...]:
        return ("level", "site_id", "dataset", "ts", *self.columns)

    def schema(self) -> list[str]:
        t = self.table
        statements = [
            f"CREATE TABLE IF NOT EXISTS {t} (level INTEGER NOT NULL, site_id TEXT NOT NULL,"
            " dataset TEXT NOT NULL, ts INTEGER NOT NULL, "
            + ", ".join(self.columns)
            + ", events INTEGER NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {t}_ts ON {t} (level, site_id, dataset, ts)",
        ]
        if "item_id" in self.columns:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {t}_item ON {t} (level, site_id, dataset, item_id, ts)"
            )
        return statements

    def recount(
        self, conn: sqlite3.Connection, site: str, dataset: str, day: int, finer: Rollup | None
    ) -> None:
        """Count one UTC day of events again: from a ``finer`` rollup's fresh counts of
        the day if given (fewer rows than the events), else from the events."""
        conn.execute(
            f"DELETE FROM {self.table} WHERE level = {DAY} AND site_id = ? AND dataset = ?"
            " AND ts = ?",
            (site, dataset, day),
        )
        columns = ", ".join(self.columns)
        source, count = "events INDEXED BY events_site_ts_columns", "count(*)"
        where = "ts >= ? AND ts < ?"
        args = [day, site, dataset, day, day + DAY_MS]
        if finer is not None:
            source = f"{finer.table} INDEXED BY {finer.table}_ts"  # not by item: all days
            count, where = "sum(events)", f"level = {DAY} AND ts = ?"
            args.pop()
        conn.execute(
            f"INSERT INTO {self.table} ({', '.join(self.keys)}, events)"
            f" SELECT {DAY}, site_id, dataset, ?, {columns}, {count} FROM {source}"
            f" WHERE site_id = ? AND dataset = ? AND {where} GROUP BY {columns}",
            args,
        )

    def sum_month(self, conn: sqlite3.Connection, site: str, dataset: str, month: int) -> None:
        """Sum one UTC month again from its days."""
        _sum_month(conn, self.table, self.columns, (site, dataset, month), f"{self.table}_ts")


def _sum_month(
    conn: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    month_of: tuple[str, str, int],
    index: str | None = None,
) -> None:
    """Sum one UTC month (site, dataset, month start) of ``table`` again from its days,
    grouped by ``columns``; ``index``: the one to read the days by."""
    site, dataset, month = month_of
    conn.execute(
        f"DELETE FROM {table} WHERE level = {MONTH} AND site_id = ? AND dataset = ? AND ts = ?",
        (site, dataset, month),
    )
    keys = ", ".join(columns)
    conn.execute(
        f"INSERT INTO {table} (level, site_id, dataset, ts, {keys}, events)"
        f" SELECT {MONTH}, site_id, dataset, ?, {keys}, sum(events)"
        f" FROM {table}{f' INDEXED BY {index}' if index else ''}"
        f" WHERE level = {DAY} AND site_id = ? AND dataset = ? AND ts >= ? AND ts < ?"
        f" GROUP BY {keys}",
        (month, site, dataset, month, _next_month(month)),
    )


# smallest first (what a query prefers); each one's columns within the last one's, which
# is counted from the events and the others from it
ROLLUPS = (
    # no item (issue 24): a day of a month's "per day and referrer / format / event" is a
    # row per referrer page there, where rollup_details has a row per item and page too,
    # nearly one per event at a year of 10,000,000, so such a report grew with the events
    Rollup("rollup_pages", ("action", "format", "referrer_page", "bot", "spam")),
    Rollup("rollup_items", ("item_id", "action", "bot", "spam")),
    Rollup(
        "rollup_details",
        ("item_id", "action", "format", "referrer_page", "bot", "spam"),
        months=False,  # its month rows would be half its rows, for /tock's year a few less
    ),
)

# Keyword fields with no column that reports break down by, with few values a day each:
# counted per day and value in ``rollup_fields``. A field with about a value per event or
# per item (a visitor, an address, a URL, a path, the previous page) would make it about as
# large as the events, so those are read from the events.
FIELD_ROLLUP_FIELDS: tuple[str, ...] = (
    F.URL_DOMAIN,
    F.REFERRER_DOMAIN,
    F.USER_AGENT_NAME,
    F.USER_AGENT_OS_NAME,
    F.USER_AGENT_DEVICE_NAME,
    F.CLIENT_GEO_COUNTRY_ISO_CODE,
    F.HTTP_REQUEST_METHOD,
    F.HTTP_RESPONSE_STATUS_CODE,
    F.USER_AGENT_VERSION,
    F.USER_AGENT_OS_VERSION,
    F.EVENT_DATASET,
    F.ERROR_TYPE,
    F.ERROR_FINGERPRINT,
    F.HTTP_VERSION,
)


# Keyword fields with many values a day, or few but not in rollup_fields (issue 24): "per
# day by path" or "by visitor" over a month read every event's document, seconds at
# 10,000,000 events a year. ``rollup_values`` keeps their counts per day and value as
# narrow rows read in place of the documents: nearly a row per event for the visitor, but
# a few dozen bytes, not a kilobyte of JSON to parse. No month rows: a month holds about as
# many values as its days, so they would double the table for little. Left out, read from
# the events: fields with a value per event or per visit (``event.id``, ``visit.id``),
# where a report by day stops after its first day (:func:`group_rows`), and long texts
# (``error.stack_trace``).
VALUE_ROLLUP_FIELDS: tuple[str, ...] = (
    F.URL_PATH,
    F.VISITOR_ID,
    F.URL_ORIGINAL,
    F.URL_QUERY,
    F.HTTP_ROUTE,
    F.HTTP_REQUEST_REFERRER,
    F.USER_AGENT_ORIGINAL,
    F.VISIT_PREV,
    F.USER_ID,
    F.SOURCE_ADDRESS,
    F.ERROR_GROUP,
    F.ERROR_SOURCE,
    F.ERROR_MESSAGE,
)


@dataclass(frozen=True, slots=True)
class FieldRollup:
    """Event counts per level, site, dataset, period, field, value and ``columns``, for
    ``fields``: ``rollup_fields`` (few values a day; per UTC day and UTC month) and
    ``rollup_values`` (about a value per event or item; per UTC day only)."""

    table: str = "rollup_fields"
    fields: tuple[str, ...] = FIELD_ROLLUP_FIELDS
    months: bool = True
    # the day's combinations of every field's value are few (so they are grouped once
    # before each field is summed); not so for fields with a value per event
    few: bool = True
    columns: tuple[str, ...] = ("action", "bot", "spam")

    @property
    def filter_fields(self) -> frozenset[str]:
        """The document fields a query answered from it may filter by."""
        return frozenset(f for f, c in COLUMNS.items() if c in self.columns or c == "site_id")

    def schema(self) -> list[str]:
        t, columns = self.table, ", ".join(self.columns)
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (level INTEGER NOT NULL, site_id TEXT NOT NULL,"
            f" dataset TEXT NOT NULL, ts INTEGER NOT NULL, field TEXT NOT NULL, value,"
            f" {columns}, events INTEGER NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {t}_ts ON {t} (level, site_id, dataset, field, ts"
            + (")" if self.few else ", value)"),  # a day's values in order: _merged_bucket
        ]

    def recount(self, conn: sqlite3.Connection, site: str, dataset: str, day: int) -> None:
        """Count one UTC day of events again from their documents, in one read of each:
        the day's values of all the fields at once (each document parsed once; grouped
        first if their combinations are ``few``), then counted per field."""
        conn.execute(
            f"DELETE FROM {self.table} WHERE level = {DAY} AND site_id = ? AND dataset = ?"
            " AND ts = ?",
            (site, dataset, day),
        )
        columns = ", ".join(self.columns)
        values = ", ".join(
            f"json_extract(doc, {json_path(name)}) AS v{i}" for i, name in enumerate(self.fields)
        )
        keys = ", ".join(f"v{i}" for i in range(len(self.fields)))
        group = f" GROUP BY {keys}, {columns}" if self.few else ""
        per_field = " UNION ALL ".join(
            f"SELECT '{name}', v{i}, {columns}, sum(n) FROM day GROUP BY v{i}, {columns}"
            for i, name in enumerate(self.fields)
        )
        conn.execute(
            f"WITH day AS MATERIALIZED (SELECT {values}, {columns},"
            f" {'count(*)' if self.few else '1'} AS n"
            " FROM events INDEXED BY events_site_ts_columns"
            f" WHERE site_id = ? AND dataset = ? AND ts >= ? AND ts < ?{group})"
            f" INSERT INTO {self.table} (level, site_id, dataset, ts, field, value, {columns},"
            f" events) SELECT {DAY}, ?, ?, ?, * FROM ({per_field})",
            (site, dataset, day, day + DAY_MS, site, dataset, day),
        )

    def sum_month(self, conn: sqlite3.Connection, site: str, dataset: str, month: int) -> None:
        """Sum one UTC month again from its days."""
        _sum_month(conn, self.table, ("field", "value", *self.columns), (site, dataset, month))


FIELD_ROLLUP = FieldRollup()
VALUE_ROLLUP = FieldRollup("rollup_values", VALUE_ROLLUP_FIELDS, months=False, few=False)
FIELD_ROLLUPS = (FIELD_ROLLUP, VALUE_ROLLUP)
ROLLUP_TABLES: tuple[str, ...] = (*(r.table for r in ROLLUPS), *(r.table for r in FIELD_ROLLUPS))
"""Every rollup table, for those who copy or compare them."""

_DIRTY = [
    "CREATE TABLE IF NOT EXISTS rollup_dirty (site_id TEXT NOT NULL, dataset TEXT NOT NULL,"
    " day INTEGER NOT NULL, PRIMARY KEY (day, site_id, dataset)) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS rollup_dirty_delete AFTER DELETE ON events BEGIN"
    " INSERT OR IGNORE INTO rollup_dirty VALUES (OLD.site_id, OLD.dataset,"
    f" OLD.ts - (((OLD.ts % {DAY_MS}) + {DAY_MS}) % {DAY_MS})); END",
]


def install_rollups(conn: sqlite3.Connection) -> list[str]:
    """Create the rollup tables (idempotent). A database that had events before them has
    every day of its events marked dirty, to be counted by :func:`refresh_rollups`.
    Returns the tables made. Call under the store's setup lock."""
    made: list[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for statement in _DIRTY + [s for r in (*ROLLUPS, *FIELD_ROLLUPS) for s in r.schema()]:
            conn.execute(statement)
        for statement in RELATED_SCHEMA:  # basket counts for related items (issue 25)
            conn.execute(statement)
        made = [table for table in ROLLUP_TABLES if table not in tables]
        made += [table for table in RELATED_TABLES if table not in tables]
        if made:
            conn.execute(
                "INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT site_id, dataset,"
                f" ts - (((ts % {DAY_MS}) + {DAY_MS}) % {DAY_MS}) FROM events"
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return made


def mark_dirty(conn: sqlite3.Connection, rows: Iterable[tuple[str, str, int]]) -> None:
    """Mark the UTC days of written events (site, dataset, ts in ms) to be counted again;
    in the writer's transaction."""
    days = {(site, dataset, ts - ts % DAY_MS) for site, dataset, ts in rows}
    conn.executemany("INSERT OR IGNORE INTO rollup_dirty VALUES (?, ?, ?)", sorted(days))


def refresh_rollups(
    conn: sqlite3.Connection, *, before_ms: int | None = None, max_days: int | None = None
) -> int:
    """Count the dirty days (those before ``before_ms``; at most ``max_days``, oldest
    first) and their months again, in one transaction. Returns the days counted."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        sql = "SELECT site_id, dataset, day FROM rollup_dirty"
        args: list[Any] = []
        if before_ms is not None:
            sql += f" WHERE day + {DAY_MS} <= ?"  # whole days only
            args.append(before_ms)
        sql += " ORDER BY day"
        if max_days is not None:
            sql += f" LIMIT {int(max_days)}"
        dirty = conn.execute(sql, args).fetchall()
        months = sorted({(site, dataset, _month_start(day)) for site, dataset, day in dirty})
        finest = ROLLUPS[-1]
        for rollup in (finest, *ROLLUPS[:-1]):  # the finest first, the others summed from it
            for site, dataset, day in dirty:
                rollup.recount(conn, site, dataset, day, None if rollup is finest else finest)
            for site, dataset, month in months if rollup.months else ():
                rollup.sum_month(conn, site, dataset, month)
        for field_rollup in FIELD_ROLLUPS:
            for site, dataset, day in dirty:
                field_rollup.recount(conn, site, dataset, day)
            for site, dataset, month in months if field_rollup.months else ():
                field_rollup.sum_month(conn, site, dataset, month)
        datasets = {site: related_datasets(conn, site) for site in {row[0] for row in dirty}}
        for site, dataset, day in dirty:  # related items' basket counts (issue 25)
            recount_related(conn, site, dataset, day, datasets[site])
        conn.executemany(
            "DELETE FROM rollup_dirty WHERE site_id = ? AND dataset = ? AND day = ?", dirty
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(dirty)


def _ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _month_start(ms: int, *, up: bool = False) -> int:
    """The first UTC month start at or after (``up``) or at or before ``ms``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if up and first < moment:
        first = (first + timedelta(days=32)).replace(day=1)
    return _ms(first)


def _next_month(month: int) -> int:
    return _month_start(month + 32 * DAY_MS)


def _pieces(start: int, end: int, dirty: list[int], months: bool) -> list[tuple[int, int, int]]:
    """``[start, end)`` as (level, from, to): whole clean UTC months (if ``months``), whole
    clean UTC days, and the rest (level 0: read the events) at the edges and dirty days."""
    first_day, last_day = -(-start // DAY_MS) * DAY_MS, end // DAY_MS * DAY_MS
    if first_day >= last_day:
        return [(0, start, end)]
    pieces = [(0, start, first_day)]
    day = first_day
    while day < last_day:
        next_month = _month_start(day + 1, up=True)
        whole = months and _month_start(day) == day and next_month <= last_day
        if whole and not _any_between(dirty, day, next_month):
            pieces.append((MONTH, day, next_month))
            day = next_month
            continue
        stop = min(next_month, last_day)
        while day < stop:  # the days to the next month start, dirty ones raw
            pieces.append((0 if _any_between(dirty, day, day + DAY_MS) else DAY, day, day + DAY_MS))
            day += DAY_MS
    pieces.append((0, last_day, end))
    return [p for p in pieces if p[1] < p[2]]


def _any_between(sorted_days: list[int], low: int, high: int) -> bool:
    index = bisect_right(sorted_days, low - 1)
    return index < len(sorted_days) and sorted_days[index] < high


def _ranges(
    query: GroupQuery, dirty: list[int], months: bool
) -> dict[int, list[tuple[int, int]]] | None:
    """Per level, the merged time ranges it answers; None when rollups do not pay."""
    bounds = [query.start_ms, query.end_ms]
    if any(d.interval for d in query.dimensions):
        bounds[1:1] = [b for b in query.bucket_starts if query.start_ms < b < query.end_ms]
    ranges: dict[int, list[tuple[int, int]]] = {0: [], DAY: [], MONTH: []}
    for low, high in zip(bounds, bounds[1:], strict=False):
        for level, start, end in _pieces(low, high, dirty, months):
            spans = ranges[level]
            if spans and spans[-1][1] == start:  # each row still lies in one bucket
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
    if len(ranges[0]) > _MAX_RAW_RANGES or not (ranges[DAY] or ranges[MONTH]):
        return None
    return ranges


def _leaves(node: FilterNode | None) -> list[Leaf]:
    if node is None:
        return []
    if isinstance(node, Leaf):
        return [node]
    assert isinstance(node, BoolNode)
    return [leaf for item in node.items for leaf in _leaves(item)]


def _rollup_for(query: GroupQuery) -> Rollup | None:
    """The smallest rollup that answers ``query`` exactly, if any."""
    used: set[str] = set()
    for leaf in _leaves(query.filter):
        if leaf.field.param:
            return None
        used.add(leaf.field.name)
    for dim in query.dimensions:
        if dim.field is not None:
            used.add(dim.field.name)
    for metric in query.metrics:
        if metric.kind == "distinct" and metric.field is not None and not metric.field.param:
            used.add(metric.field.name)
        elif metric.kind != "count":
            return None
    return next((r for r in ROLLUPS if used <= r.fields), None)


def _field_for(query: GroupQuery) -> tuple[FieldRollup, FieldRef] | None:
    """The field rollup and the field it answers ``query`` by, if it does exactly: one
    dimension on one of its fields (any others time buckets), only counts, filters on its
    columns."""
    fields = [d.field for d in query.dimensions if d.field is not None]
    if len(fields) != 1 or fields[0].param:
        return None
    rollup = next((r for r in FIELD_ROLLUPS if fields[0].name in r.fields), None)
    if rollup is None or any(metric.kind != "count" for metric in query.metrics):
        return None
    allowed = rollup.filter_fields
    if any(leaf.field.param or leaf.field.name not in allowed for leaf in _leaves(query.filter)):
        return None
    return rollup, fields[0]


def _dirty_days(conn: sqlite3.Connection, query: GroupQuery) -> list[int]:
    """The UTC days of ``query``'s range and datasets not counted yet, sorted."""
    marks = ", ".join("?" for _ in query.datasets)
    return [
        int(row[0])
        for row in conn.execute(
            f"SELECT DISTINCT day FROM rollup_dirty WHERE dataset IN ({marks})"
            " AND day >= ? AND day < ? ORDER BY day",
            (*query.datasets, query.start_ms - DAY_MS, query.end_ms),
        )
    ]


@dataclass(frozen=True)
class _Plan:
    """How the rollups answer a query: found once for a query, whatever the time buckets
    it is read in."""

    rollup: Rollup | FieldRollup
    field: FieldRef | None  # the dimension's field, for a rollup by field values
    dirty: list[int]  # the days of the query's whole range not counted yet, sorted


def _plan(conn: sqlite3.Connection, query: GroupQuery) -> _Plan | None:
    """The rollup that answers ``query`` exactly, if any, with the days it has not counted."""
    rollup: Rollup | FieldRollup | None = _rollup_for(query)
    field = None
    if rollup is None:
        found = _field_for(query)
        if found is None:
            return None
        rollup, field = found
    return _Plan(rollup, field, _dirty_days(conn, query))


def rollup_sql(
    conn: sqlite3.Connection, query: GroupQuery, plan: _Plan | None = None
) -> tuple[str, list[Any]] | None:
    """The query's ``SELECT`` (the shape :mod:`.sqlite_query` reads: keys ``k<i>``, metrics
    ``m<i>``) over the rollups and the events, or None when the rollups cannot answer it
    exactly or would not pay. Run it in the read transaction that ran this. ``plan``: the
    one found for a query this one is a time range of (:func:`group_rows`)."""
    if plan is None:
        plan = _plan(conn, query)
        if plan is None:
            return None
    rollup, field = plan.rollup, plan.field
    marks = ", ".join("?" for _ in query.datasets)
    ranges = _ranges(query, plan.dirty, rollup.months)
    if ranges is None:
        return None
    columns = ", ".join(["ts", "site_id", *rollup.columns])
    branches: list[str] = []
    args: list[Any] = []
    for level, spans in ranges.items():
        if not spans:
            continue
        where = ""
        if level and field is not None:
            where = "field = ? AND "
            args.append(field.name)
        args.extend(query.datasets)
        where += f"dataset IN ({marks}) AND ("
        where += " OR ".join("(ts >= ? AND ts < ?)" for _ in spans) + ")"
        args.extend(bound for span in spans for bound in span)
        if level:
            where = f"level = {level} AND {where}"
        if query.filter is not None:
            where += " AND " + condition_sql(query.filter, args)
        table, count = (rollup.table, "events") if level else ("events", "1")
        value = ""
        if field is not None:  # the field's value: a column of rollup_fields, else the doc's
            value = ", value" if level else f", json_extract(doc, {json_path(field.name)}) AS value"
        branches.append(f"SELECT {columns}{value}, {count} AS n FROM {table} WHERE {where}")
    select: list[str] = []
    starts = query.bucket_starts
    for index, dim in enumerate(query.dimensions):
        if dim.interval:
            conn.create_function(
                "mbucket",
                1,
                lambda ts: starts[max(bisect_right(starts, ts) - 1, 0)],
                deterministic=True,
            )
            select.append(f"mbucket(ts) AS k{index}")
        else:
            assert dim.field is not None
            column = "value" if field is not None else COLUMNS[dim.field.name]
            select.append(f"{column} AS k{index}")
    for index, metric in enumerate(query.metrics):
        if metric.kind == "count":
            select.append(f"coalesce(sum(n), 0) AS m{index}")
        else:
            assert metric.field is not None
            select.append(f"count(DISTINCT {COLUMNS[metric.field.name]}) AS m{index}")
    sql = f"SELECT {', '.join(select)} FROM ({' UNION ALL '.join(branches)})"
    if query.dimensions:
        sql += " GROUP BY " + ", ".join(f"k{i}" for i in range(len(query.dimensions)))
    return sql, args


def _by_bucket(query: GroupQuery, plan: _Plan | None) -> bool:
    """Whether ``query`` is read one time bucket at a time: its first dimension is a time
    bucket, and its rows are not the few of a rollup table counted by columns or by
    fields with few values (one statement reads those at once)."""
    if not query.dimensions or not query.dimensions[0].interval:
        return False
    return plan is None or plan.rollup is VALUE_ROLLUP


def group_rows(
    conn: sqlite3.Connection, query: GroupQuery, after: tuple[Any, ...] | None, limit: int
) -> list[Row]:
    """The first ``limit`` groups of ``query`` after ``after``, in composite order (what
    :func:`~metronome.store.sqlite_query.query_groups` gives), from the rollups where
    they answer.

    Why by time buckets (issue 24): a report by day and a field with about a value per
    event (the visitor, the path) over a month has more groups than a report may return
    (``METRONOME_QUERY_MAX_GROUPS``), so only the first ``limit`` in order are wanted; one
    statement grouped and sorted the whole month to find them (seconds at 10,000,000
    events a year). Groups never span time buckets and the time is the first key, so the
    buckets are read in order, a statement for the first bucket, then for the next two,
    four..., until ``limit`` groups are found: the first day of the month there. Doubling
    keeps a report with few groups to as many statements as doublings (an hour at a time
    over a year would be 8,760), each range read once."""
    plan = _plan(conn, query)

    def compiled(part: GroupQuery) -> tuple[str, list[Any]] | None:
        return None if plan is None else rollup_sql(conn, part, plan)

    if not _by_bucket(query, plan):
        return query_groups(conn, query, after, limit, compiled(query))
    inner = [b for b in query.bucket_starts if query.start_ms < b < query.end_ms]
    bounds = [query.start_ms, *inner, query.end_ms]
    first = 0
    if after is not None:  # the cursor's bucket: those before it were given whole
        while first + 1 < len(bounds) - 1 and _bucket_of(query, bounds[first + 1]) <= after[0]:
            first += 1
    rows: list[Row] = []
    width = 1
    while first < len(bounds) - 1 and len(rows) < limit:
        last = min(first + width, len(bounds) - 1)
        part = replace(query, start_ms=bounds[first], end_ms=bounds[last])
        cursor = (
            after if after is not None and _bucket_of(query, bounds[first]) <= after[0] else None
        )
        merged = None
        if last == first + 1 and cursor is None and plan is not None:
            merged = _merged_bucket(conn, part, limit - len(rows), plan)
        if merged is None:
            merged = query_groups(conn, part, cursor, limit - len(rows), compiled(part))
        rows += merged
        first, width = last, width * 2
    return rows


def _merged_bucket(
    conn: sqlite3.Connection, part: GroupQuery, limit: int, plan: _Plan
) -> list[Row] | None:
    """The first ``limit`` groups of ``part`` (one time bucket, by a field of
    ``rollup_values``) merged from its days' rows in value order, or None when it is not
    made of clean whole UTC days of that table.

    Why: a month bucket of visitors is about a row per event of the month; grouping and
    sorting them all to find the first 10,001 values took seconds. Each day's rows come in
    value order from the table's index (no sort), so merging the days' streams and summing
    equal values gives the groups in order, reading about ``limit`` rows per day."""
    if plan.rollup is not VALUE_ROLLUP or plan.field is None or len(part.dimensions) != 2:
        return None
    ranges = _ranges(part, plan.dirty, months=False)
    if ranges is None or ranges[0] or ranges[MONTH]:
        return None
    days = [day for low, high in ranges[DAY] for day in range(low, high, DAY_MS)]
    streams = []
    for dataset in part.datasets:
        for day in days:
            args: list[Any] = [plan.field.name, dataset, day]
            where = f"level = {DAY} AND field = ? AND dataset = ? AND ts = ?"
            if part.filter is not None:
                where += " AND " + condition_sql(part.filter, args)
            streams.append(
                conn.execute(
                    f"SELECT value, sum(events) FROM {VALUE_ROLLUP.table} WHERE {where}"
                    # a value among the first ``limit`` of the merge is among the first
                    # ``limit`` of every day that has it: the rest is never needed
                    f" GROUP BY value ORDER BY value LIMIT {int(limit)}",
                    args,
                )
            )
    bucket = _bucket_of(part, part.start_ms)
    rows: list[Row] = []
    key: tuple[int, Any] | None = None
    group: Any = None  # the value of the group being summed
    total = 0
    for value, count in heapq.merge(*streams, key=lambda row: _sql_order(row[0])):
        order = _sql_order(value)
        if key is not None and order != key:
            rows.append(((bucket, group), tuple(total for _ in part.metrics)))
            if len(rows) >= limit:
                break
            total = 0
        if order != key:
            key, group = order, value
        total += count
    else:
        if key is not None:
            rows.append(((bucket, group), tuple(total for _ in part.metrics)))
    for stream in streams:
        stream.close()
    return rows


def _sql_order(value: Any) -> tuple[int, Any]:
    """A value's place in SQLite's ``ORDER BY``: NULL, numbers, text, then blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    return (2, value) if isinstance(value, str) else (3, value)


def _bucket_of(query: GroupQuery, ms: int) -> int:
    starts = query.bucket_starts
    return starts[max(bisect_right(starts, ms) - 1, 0)]
