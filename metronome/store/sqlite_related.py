"""Basket counts per UTC day beside the embedded store's events: what keeps
``GET /items/{id}/related`` fast at a year of data.

Why: a related-items answer needs, for each candidate item ``b``, ``n_b``, the baskets
(visits, or visitors' days) holding ``b`` in the range. Counted from the events, that reads
every event of every candidate: the popular items are candidates of nearly every item, so
a typical item's answer read tens of thousands of documents (947 ms at a year of
generated traffic). The item's own baskets and the baskets it shares (``n_a``, ``n_ab``)
are read through the item and visitor indexes and stay cheap; only ``n_b`` is kept here.

What is kept, per basket kind (``mode``: ``v`` for "an event's visit, else the visitor's
day", ``d`` for "the visitor's day"), exactly as :func:`.sqlite_query.query_baskets`
forms baskets:

* ``related_counts``: per *cell* -- (site, dataset, UTC day, item, action, bot, spam), the
  columns the related-items filters read -- the number of distinct baskets with an event
  in the cell. Summing cells counts a basket once per matching cell it occupies;
* ``related_multi``: every cell of every (basket, item) that occupies more than one cell
  (a visit crossing a UTC midnight, a view and a download of one item in a visit, a
  visitor's day spanning two UTC days). For them, ``count(*) - count(DISTINCT basket)``
  over the matching cells is exactly what the sum counted too often.

So over whole clean UTC days, ``n_b = sum(counts) - (multi rows - distinct multi
baskets)``, reading at most a row per cell and day instead of every event. The rest of the
range (its edges, and days written since their last count, ``today`` among them) is read
from the events as before, and the baskets found both there and in the whole days are
subtracted once (:func:`basket_popularity`).

How they stay exact: they are counted in :func:`.sqlite_rollups.refresh_rollups`, for the
same dirty (site, dataset, day) marks and in the same transaction as the other rollups
(:func:`recount_related`). A day's counts depend on that day's events only; a (basket,
item)'s cells are read from all the visitor's events whenever a day it touches is counted,
and its ``related_multi`` rows replaced, so a basket that grows onto a new day is found
when that day is counted. Rows of a cell whose events were deleted are dropped with the
day's recount; a (basket, item) left with one listed cell adds nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from typing import Any

from metronome.events import fields as F
from metronome.store.query import BasketQuery
from metronome.store.sqlite_query import VISITOR_EXPR, basket_sql, condition_sql, filter_fields

__all__ = [
    "RELATED_SCHEMA",
    "RELATED_TABLES",
    "basket_popularity",
    "recount_related",
    "related_datasets",
]

DAY_MS = 86_400_000
_MAX_RAW_RANGES = 64
_CELL = ("dataset", "day", "action", "bot", "spam")
# the fields whose conditions the tables can evaluate (their columns have the events' names)
FIELDS = frozenset({F.SITE_ID, F.ITEM_ID, F.EVENT_ACTION, F.BOT, F.REFERRER_SPAM})
RELATED_TABLES = ("related_counts", "related_multi")
RELATED_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS related_counts (site_id TEXT NOT NULL, mode TEXT NOT NULL,"
    " item_id TEXT NOT NULL, dataset TEXT NOT NULL, day INTEGER NOT NULL, action, bot"
    " INTEGER NOT NULL, spam, baskets INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS related_counts_item ON related_counts (site_id, mode, item_id,"
    " dataset, day, action, bot, spam, baskets)",
    "CREATE INDEX IF NOT EXISTS related_counts_day ON related_counts (site_id, dataset, day)",
    "CREATE TABLE IF NOT EXISTS related_multi (site_id TEXT NOT NULL, mode TEXT NOT NULL,"
    " basket TEXT NOT NULL, item_id TEXT NOT NULL, dataset TEXT NOT NULL, day INTEGER NOT"
    " NULL, action, bot INTEGER NOT NULL, spam)",
    "CREATE INDEX IF NOT EXISTS related_multi_item ON related_multi (site_id, mode, item_id,"
    " dataset, day, action, bot, spam, basket)",
    "CREATE INDEX IF NOT EXISTS related_multi_basket ON related_multi (site_id, mode, basket,"
    " item_id)",
    "CREATE INDEX IF NOT EXISTS related_multi_day ON related_multi (site_id, dataset, day)",
]
_MODES = (("v", True), ("d", False))


def related_datasets(conn: sqlite3.Connection, site: str) -> list[str]:
    """The datasets a site has events in (a basket may span them): a skip through the
    site's item index, one step per dataset."""
    rows = conn.execute(
        "WITH RECURSIVE d(x) AS (SELECT min(dataset) FROM events WHERE site_id = ?"
        " UNION ALL SELECT (SELECT min(dataset) FROM events WHERE site_id = ? AND dataset > x)"
        " FROM d WHERE x IS NOT NULL) SELECT x FROM d WHERE x IS NOT NULL",
        (site, site),
    )
    return [row[0] for row in rows]


def recount_related(
    conn: sqlite3.Connection, site: str, dataset: str, day: int, datasets: list[str]
) -> None:
    """Count one (site, dataset, UTC day) again from the events; in the caller's
    transaction (:func:`.sqlite_rollups.refresh_rollups`). ``datasets``: the site's
    (:func:`related_datasets`)."""
    conn.execute(
        "DELETE FROM related_counts WHERE site_id = ? AND dataset = ? AND day = ?",
        (site, dataset, day),
    )
    conn.execute(
        "DELETE FROM related_multi WHERE site_id = ? AND dataset = ? AND day = ?",
        (site, dataset, day),
    )
    visitors = [
        row[0]
        for row in conn.execute(
            f"SELECT DISTINCT {VISITOR_EXPR} FROM events WHERE site_id = ? AND dataset = ?"
            f" AND ts >= ? AND ts < ? AND item_id IS NOT NULL AND {VISITOR_EXPR} IS NOT NULL",
            (site, dataset, day, day + DAY_MS),
        )
    ]
    if not visitors:
        return
    marks = ", ".join("?" for _ in datasets)
    rows = conn.execute(
        f"SELECT dataset, ts - ts % {DAY_MS}, action, bot, spam, item_id, {basket_sql(True)},"
        f" {basket_sql(False)} FROM events WHERE site_id = ? AND dataset IN ({marks})"
        f" AND {VISITOR_EXPR} IN (SELECT value FROM json_each(?)) AND item_id IS NOT NULL",
        [site, *datasets, json.dumps(visitors)],
    ).fetchall()
    for position, (mode, _) in enumerate(_MODES):
        cells: dict[tuple[str, Any], set[tuple[Any, ...]]] = defaultdict(set)
        for row in rows:
            cells[(row[6 + position], row[5])].add(row[:5])
        counts: dict[tuple[Any, ...], int] = defaultdict(int)
        multi: list[tuple[Any, ...]] = []
        touched: list[tuple[Any, ...]] = []
        for (basket, item), found in cells.items():
            mine = [cell for cell in found if cell[0] == dataset and cell[1] == day]
            if not mine:
                continue
            for cell in mine:
                counts[(item, *cell)] += 1
            touched.append((site, mode, basket, item))
            if len(found) > 1:
                multi.extend((site, mode, basket, item, *cell) for cell in sorted(found, key=str))
        conn.executemany(
            "DELETE FROM related_multi WHERE site_id = ? AND mode = ? AND basket = ?"
            " AND item_id = ?",
            touched,
        )
        conn.executemany(
            "INSERT INTO related_multi (site_id, mode, basket, item_id, dataset, day, action,"
            " bot, spam) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            multi,
        )
        conn.executemany(
            "INSERT INTO related_counts (site_id, mode, item_id, dataset, day, action, bot,"
            " spam, baskets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(site, mode, *key, n) for key, n in counts.items()],
        )


def _spans(start: int, end: int, dirty: list[int]) -> tuple[list[tuple[int, int]], ...]:
    """``[start, end)`` as merged (whole clean UTC days, the rest)."""
    first, last = -(-start // DAY_MS) * DAY_MS, end // DAY_MS * DAY_MS
    clean: list[tuple[int, int]] = []
    raw: list[tuple[int, int]] = []

    def add(spans: list[tuple[int, int]], low: int, high: int) -> None:
        if low >= high:
            return
        if spans and spans[-1][1] == low:
            spans[-1] = (spans[-1][0], high)
        else:
            spans.append((low, high))

    if first >= last:
        add(raw, start, end)
        return clean, raw
    add(raw, start, first)
    dirty_days = set(dirty)
    for day in range(first, last, DAY_MS):
        add(raw if day in dirty_days else clean, day, day + DAY_MS)
    add(raw, last, end)
    return clean, raw


def _between(column: str, spans: list[tuple[int, int]], args: list[Any]) -> str:
    args.extend(bound for span in spans for bound in span)
    return "(" + " OR ".join(f"({column} >= ? AND {column} < ?)" for _ in spans) + ")"


def basket_popularity(
    conn: sqlite3.Connection, query: BasketQuery, items: list[str]
) -> dict[str, int] | None:
    """Per item of ``items``, the baskets of ``query`` holding it, exactly as the events
    give them; None when the tables cannot answer (filters on other fields, no whole clean
    UTC day in the range, or too many pieces to read from the events)."""
    where = query.where
    if not filter_fields(where.filter) <= FIELDS:
        return None
    datasets = list(where.datasets)
    marks = ", ".join("?" for _ in datasets)
    dirty = [
        int(row[0])
        for row in conn.execute(
            f"SELECT DISTINCT day FROM rollup_dirty WHERE dataset IN ({marks})"
            " AND day >= ? AND day < ? ORDER BY day",
            (*datasets, where.start_ms - DAY_MS, where.end_ms),
        )
    ]
    clean, raw = _spans(where.start_ms, where.end_ms, dirty)
    if not clean or len(raw) > _MAX_RAW_RANGES:
        return None
    mode = "v" if query.visits else "d"
    wanted = json.dumps(items)

    def common(column: str, spans: list[tuple[int, int]]) -> tuple[str, list[Any]]:
        args: list[Any] = [*datasets, wanted]
        sql = (
            f"dataset IN ({marks}) AND item_id IN (SELECT value FROM json_each(?))"
            f" AND {_between(column, spans, args)}"
        )
        if where.filter is not None:
            sql += " AND " + condition_sql(where.filter, args)
        return sql, args

    sql, args = common("day", clean)
    found: dict[str, int] = defaultdict(int)
    for item, n in conn.execute(
        f"SELECT item_id, sum(baskets) FROM related_counts WHERE mode = ? AND {sql}"
        " GROUP BY item_id",
        [mode, *args],
    ):
        found[item] += int(n)
    for item, n in conn.execute(
        f"SELECT item_id, count(*) - count(DISTINCT basket) FROM related_multi"
        f" WHERE mode = ? AND {sql} GROUP BY item_id",
        [mode, *args],
    ):
        found[item] -= int(n)
    if raw:
        basket = basket_sql(query.visits)
        sql, args = common("ts", raw)
        edges: dict[str, set[str]] = defaultdict(set)
        visitors: set[str] = set()
        for item, visitor, key in conn.execute(
            f"SELECT item_id, {VISITOR_EXPR}, {basket} FROM events WHERE {sql}"
            f" AND {VISITOR_EXPR} IS NOT NULL",
            args,
        ):
            edges[item].add(key)
            visitors.add(visitor)
        if visitors:
            sql, args = common("ts", clean)
            both: dict[str, set[str]] = defaultdict(set)
            for item, key in conn.execute(
                f"SELECT DISTINCT item_id, {basket} FROM events WHERE {sql}"
                f" AND {VISITOR_EXPR} IN (SELECT value FROM json_each(?))",
                [*args, json.dumps(sorted(visitors))],
            ):
                both[item].add(key)
            for item, keys in edges.items():
                found[item] += len(keys - both[item])
    return {item: n for item, n in found.items() if n > 0}
