"""The events table's visitor column (issue 24): a database made before it, whose visitor
index was on ``json_extract(doc, '$.visitor.id')``, gets the column filled from each
row's document and that index replaced, once; rows written since carry it themselves.
A database whose visitor index holds every row (before the index of rows with an item)
gets the narrower one instead, once, and related items answer as before from it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from metronome.config import Settings
from metronome.events.document import Document, format_timestamp
from metronome.recommend.related import CANDIDATES, parse_related
from metronome.reports.query import for_site, parse_query
from metronome.store.query import BasketCounts, BasketQuery
from metronome.store.sqlite import DB_NAME, SQLiteStore
from metronome.store.sqlite_query import query_baskets

# the events table and its visitor index as Metronome made them before the column
_BEFORE = """
CREATE TABLE events (
    id TEXT PRIMARY KEY, dataset TEXT NOT NULL, ts INTEGER NOT NULL, item_id TEXT,
    action TEXT, format TEXT, referrer_page TEXT, bot INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL, site_id TEXT NOT NULL DEFAULT 'default', spam
);
CREATE INDEX events_site_visitor
    ON events (site_id, dataset, json_extract(doc, '$."visitor"."id"'), ts);
"""


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {row[0] for row in rows}


def test_a_database_made_before_gets_the_column_filled_and_the_index_replaced(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    with sqlite3.connect(path) as conn:
        conn.executescript(_BEFORE)
        for i, source in enumerate(
            [{"visitor": {"id": "v1"}}, {"visitor": {"id": 7}}, {"visitor": "odd"}, {}]
        ):
            conn.execute(
                "INSERT INTO events (id, dataset, ts, doc) VALUES (?, 'logs', ?, ?)",
                (f"e{i}", i, orjson.dumps(source).decode()),
            )
    path.chmod(0o600)
    tmp_path.chmod(0o700)
    settings = Settings.from_env({"METRONOME_DATA_DIR": str(tmp_path)})

    async def upgrade() -> None:
        async with SQLiteStore(settings) as store:
            changes = await store.ensure_schema()
            assert ("events", "updated") in [(c.name, c.action) for c in changes]
            await store.write([Document("e9", 9, "logs", {"visitor": {"id": "v2"}})])
            again = await store.ensure_schema()  # nothing left to do
            assert ("events", "unchanged") in [(c.name, c.action) for c in again]

    asyncio.run(upgrade())
    with sqlite3.connect(path) as conn:
        stored = dict(conn.execute("SELECT id, visitor FROM events"))
        expected = dict(conn.execute("SELECT id, json_extract(doc, '$.visitor.id') FROM events"))
    assert stored == expected == {"e0": "v1", "e1": 7, "e2": None, "e3": None, "e9": "v2"}
    indexes = _indexes(path)
    assert "events_site_visitor" not in indexes
    assert "events_site_visitor_items" in indexes


# the visitor index as Metronome made it before: every row, with an item or not
_FULL_INDEX = """
DROP INDEX events_site_visitor_items;
CREATE INDEX events_site_visitor_column ON events (site_id, dataset, visitor, ts);
"""
_DAY_MS = 86_400_000
_FIRST_DAY_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z


def _clickstream() -> list[Document]:
    """Views by four visitors over two days, some with an item and some without (a page
    no URL rule names), and the visit summaries, which have none."""
    documents = []
    for n in range(60):
        visitor = f"vis-{n % 4}"
        ts = _FIRST_DAY_MS + (n % 2) * _DAY_MS + n * 60_000
        source: dict[str, object] = {
            "@timestamp": format_timestamp(ts),
            "event": {"id": f"e{n}", "action": "view"},
            "site": {"id": "default"},
            "visitor": {"id": visitor},
            "visit": {"id": f"visit-{visitor}-{n % 2}"},
        }
        if n % 3:
            source["item"] = {"id": f"it-{n % 5}"}
        documents.append(Document(f"e{n}", ts, "logs", source))
    for visitor in range(4):
        for day in range(2):
            ts = _FIRST_DAY_MS + day * _DAY_MS
            source = {
                "@timestamp": format_timestamp(ts),
                "visitor": {"id": f"vis-{visitor}"},
                "visit": {"id": f"visit-vis-{visitor}-{day}", "events": 1},
            }
            documents.append(Document(f"visit-{visitor}-{day}", ts, "visits", source))
    return documents


def _baskets(path: Path) -> list[BasketCounts]:
    answers = []
    with sqlite3.connect(path) as conn:
        for item in (f"it-{n}" for n in range(5)):
            for within in ("visit", "day"):
                request = parse_related(
                    item,
                    {
                        "from": "2024-03-01",
                        "to": "2024-03-03",
                        "within": within,
                        "min_support": "1",
                    },
                )
                group = for_site(parse_query(request.body), "default").group
                query = BasketQuery(group, item, request.visits, 1, CANDIDATES)
                answers.append(query_baskets(conn, query))
    return answers


def test_a_full_visitor_index_is_replaced_by_one_of_the_rows_with_an_item(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o700)
    path = tmp_path / DB_NAME
    settings = Settings.from_env({"METRONOME_DATA_DIR": str(tmp_path)})

    async def write() -> None:
        async with SQLiteStore(settings) as store:
            await store.ensure_schema()
            await store.write(_clickstream())

    asyncio.run(write())
    with sqlite3.connect(path) as conn:
        conn.executescript(_FULL_INDEX)
    before = _baskets(path)
    assert sum(answer.item_baskets for answer in before) > 0
    assert any(answer.pairs for answer in before)

    async def upgrade() -> None:
        async with SQLiteStore(settings) as store:
            changes = await store.ensure_schema()
            assert ("events", "updated") in [(c.name, c.action) for c in changes]
            again = await store.ensure_schema()  # nothing left to do
            assert ("events", "unchanged") in [(c.name, c.action) for c in again]

    asyncio.run(upgrade())
    indexes = _indexes(path)
    assert "events_site_visitor_column" not in indexes
    assert "events_site_visitor_items" in indexes
    assert _baskets(path) == before
    with sqlite3.connect(path) as conn:
        # the rows without an item are not in it, yet a visitor's events with one are
        # read through it
        entries = conn.execute(
            "SELECT count(*) FROM events INDEXED BY events_site_visitor_items"
            " WHERE site_id = 'default' AND dataset = 'logs' AND visitor = 'vis-1'"
            " AND item_id IS NOT NULL"
        ).fetchone()[0]
        assert entries == sum(1 for n in range(60) if n % 4 == 1 and n % 3)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT item_id FROM events WHERE site_id = 'default'"
            " AND dataset = 'logs' AND visitor IN ('vis-1', 'vis-2') AND item_id IS NOT NULL"
        ).fetchall()
        assert any("events_site_visitor_items" in row[3] for row in plan), plan
