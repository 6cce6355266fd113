"""The events table's visitor column (issue 24): a database made before it, whose visitor
index was on ``json_extract(doc, '$.visitor.id')``, gets the column filled from each
row's document and that index replaced, once; rows written since carry it themselves."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from metronome.config import Settings
from metronome.events.document import Document
from metronome.store.sqlite import DB_NAME, SQLiteStore

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
    assert "events_site_visitor_column" in indexes
