"""The benchmarks' fast loader (:mod:`benchmarks.fastload`) leaves the embedded store
exactly as its write path does: the same events, the same rollups and basket counts, the
same indexes, and so the same ``/query`` and ``/tock`` answers.

20,000 generated events (two sites, ticks and logs, visits crossing midnight, crawlers,
referrer spam, downloads with formats, visit summaries written again as they grow) are
written once through :meth:`SQLiteStore.write` in batches (the rollups counted as the
store counts them, then the rest at the end) and once through the loader, into two real
SQLite files; then every table is compared row by row and reports are asked of both
stores through the engine that answers ``/query`` and ``/tock``. Embedded store only:
the Elasticsearch loader is ``parallel_bulk`` of the store's own documents."""

from __future__ import annotations

import asyncio
import functools
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fastload import load_sqlite
from metronome.config import Settings
from metronome.events import fields as F
from metronome.events.document import Document, format_timestamp
from metronome.reports.engine import run_query
from metronome.reports.named import REPORTS, run_report
from metronome.reports.query import for_site, parse_query
from metronome.store.sqlite import DB_NAME, SQLiteStore

DAY_MS = 86_400_000
FIRST_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAYS = 45  # a whole month and some: month, day and raw pieces of a range
EVENTS = 20_000
ITEMS = [f"item-{n}" for n in range(300)]
REFERRERS = [None, "news.example/a", "blog.example/b", "spam.example/c"]


def _documents(seed: int) -> Iterator[Document]:
    """Events in time order, and a visit summary (written again as it grows) per visit."""
    rng = random.Random(seed)
    visits: dict[str, dict[str, Any]] = {}
    for n in range(EVENTS):
        ts = FIRST_MS + int((n + rng.random()) / EVENTS * DAYS * DAY_MS)
        site = "default" if rng.random() < 0.85 else "other"
        visitor = f"v{rng.randrange(10_000)}"
        action = rng.choice(["view", "view", "view", "download"])
        source: dict[str, Any] = {
            "@timestamp": format_timestamp(ts),
            "event": {"id": f"e{n}", "action": action},
            "item": {"id": ITEMS[int(len(ITEMS) * rng.random() ** 2)]},
            "bot": rng.random() < 0.05,
            "site": {"id": site},
            "visitor": {"id": visitor},
        }
        if action == "download":
            source["item"]["format"] = rng.choice(["csv", "json", None])
        referrer = rng.choice(REFERRERS)
        if referrer:
            domain = referrer.split("/")[0]
            source["referrer"] = {
                "domain": domain,
                "page": referrer,
                "spam": domain.startswith("spam"),
            }
        if rng.random() < 0.7:
            visit = f"{site}-{visitor}-{ts // (DAY_MS // 3)}"
            source["visit"] = {"id": visit}
            summary = visits.setdefault(visit, {"start": ts, "events": 0})
            summary["events"] += 1
            yield Document(f"e{n}", ts, rng.choice(["ticks", "ticks", "logs"]), source)
            yield Document(
                visit,
                summary["start"],
                F.VISITS_DATASET,
                {
                    "@timestamp": format_timestamp(summary["start"]),
                    "site": {"id": site},
                    "visitor": {"id": visitor},
                    "visit": {"id": visit, "pageviews": summary["events"]},
                },
            )
        else:
            yield Document(f"e{n}", ts, rng.choice(["ticks", "ticks", "logs"]), source)


def _store(path: Path) -> SQLiteStore:
    return SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(path)}))


async def _write(path: Path) -> None:
    async with _store(path) as store:
        await store.ensure_schema()
        batch: list[Document] = []
        for document in _documents(24):
            batch.append(document)
            if len(batch) == 2_000:
                await store.write(batch)
                batch = []
        await store.write(batch)
        await store.refresh_rollups()


@functools.cache
def _all_documents() -> list[Document]:
    return list(_documents(24))


def _part(start: int, stop: int) -> list[Document]:
    return _all_documents()[start:stop]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same documents through the store's write, and through the loader: the first
    9,000 in batches from this process, the rest in parts made by two worker processes;
    the rollups counted in two processes, a UTC month each."""
    written = tmp_path_factory.mktemp("written")
    loaded = tmp_path_factory.mktemp("loaded")
    asyncio.run(_write(written))
    documents = _all_documents()
    parts = [
        functools.partial(_part, start, start + 3_000)
        for start in range(9_000, len(documents), 3_000)
    ]
    counts = load_sqlite(loaded, documents[:9_000], parts=parts, batch=3_000, shards=2)
    assert counts["events"] == len(documents)
    return written, loaded


def _tables(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path / DB_NAME)
    try:
        schema = sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        tables = [row[1] for row in schema if row[0] == "table"]
        found: dict[str, Any] = {"schema": schema}
        for table in tables:
            columns = ", ".join(row[1] for row in conn.execute(f'PRAGMA table_info("{table}")'))
            sql = f'SELECT {columns} FROM "{table}" ORDER BY {columns}'
            found[table] = conn.execute(sql).fetchall()
        found["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()
        return found
    finally:
        conn.close()


def test_every_table_holds_the_same_rows(stores: tuple[Path, Path]) -> None:
    written, loaded = _tables(stores[0]), _tables(stores[1])
    assert written.keys() == loaded.keys()
    assert written["journal_mode"] == ("wal",)
    for table in written:
        assert written[table] == loaded[table], table
    assert len(written["events"]) > EVENTS  # events and visit summaries
    assert written["rollup_items"] and written["related_counts"]
    assert written["rollup_dirty"] == []  # everything counted, both ways


QUERIES: list[dict[str, Any]] = [
    {"source": "ticks", "dimensions": ["item"], "limit": 10},  # top items
    {"source": "all", "dimensions": ["time:day", "referrer"], "limit": 10_000},
    {"source": "all", "dimensions": ["time:day", "domain"], "limit": 10_000},
    {"source": "logs", "dimensions": ["time:month", "event"], "metrics": ["events", "visitors"]},
    {"source": "ticks", "dimensions": ["format"], "bots": "include"},
    {"source": "visits", "dimensions": ["time:week"], "metrics": ["visits"]},
    {"source": "all", "dimensions": ["time:day"], "tz": "America/New_York", "limit": 10_000},
]
RANGES = [
    {"from": "2024-01-01", "to": "2024-02-14"},
    {"from": "2024-01-01", "to": "2024-01-31"},
    {"from": "2024-01-14T06:00:00Z", "to": "2024-02-10T18:30:00Z"},
]


async def _answers(path: Path) -> list[Any]:
    answers: list[Any] = []
    async with _store(path) as store:
        for body in QUERIES:
            for span in RANGES:
                for site in ("default", "other"):
                    query = for_site(parse_query({**body, "range": span}), site)
                    answer = await run_query(store, query)
                    answers.append(answer["results"])
        for item in ITEMS[:3] + ITEMS[150:152]:
            for span in RANGES[:2]:
                params = {"id": item, **span}
                answer = await run_report(
                    store, REPORTS["tock"], params, site_id="default", max_groups=10_000
                )
                answers.append(answer)
    return answers


def test_reports_answer_alike(stores: tuple[Path, Path]) -> None:
    written = asyncio.run(_answers(stores[0]))
    loaded = asyncio.run(_answers(stores[1]))
    assert written == loaded
    top = written[0]
    assert len(top) == 10 and top[0]["metrics"][0] > top[-1]["metrics"][0]  # a real ranking
