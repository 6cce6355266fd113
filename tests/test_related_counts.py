"""The embedded store's basket counts per UTC day (:mod:`metronome.store.sqlite_related`)
give exactly the related-items answer counted from the events, whatever the clickstream:
visits crossing UTC midnight, a view and a download of one item in a visit, crawlers and
referrer spam, two datasets and two sites, days counted and days written since (dirty),
events deleted after they were counted; ranges of whole UTC days, ranges with edges inside
a day, another time zone, event filters, both basket kinds. Real SQLite files, no server:
``tests/test_related.py`` asks the same store over HTTP."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metronome.config import Settings
from metronome.events.document import Document, format_timestamp
from metronome.recommend.related import CANDIDATES, parse_related
from metronome.reports.query import for_site, parse_query
from metronome.store.query import BasketQuery
from metronome.store.sqlite import DB_NAME, SQLiteStore
from metronome.store.sqlite_query import query_baskets
from metronome.store.sqlite_related import basket_popularity

DAY_MS = 86_400_000
FIRST_DAY_MS = 1_709_251_200_000  # 2024-03-01T00:00:00Z
ITEMS = [f"it-{n}" for n in range(5)]
# minutes into a day: mornings, and the minutes around midnight (visits crossing it)
MINUTES = st.sampled_from([0, 1, 30, 600, 601, 1380, 1438, 1439])

EVENT = st.fixed_dictionaries(
    {
        "visitor": st.integers(0, 3),
        "visit": st.one_of(st.none(), st.integers(0, 1)),
        "item": st.sampled_from(ITEMS),
        "day": st.integers(0, 3),
        "minute": MINUTES,
        "action": st.sampled_from(["view", "view", "download"]),
        "bot": st.sampled_from([False, False, False, True]),
        "spam": st.sampled_from([None, None, True, False]),
        "dataset": st.sampled_from(["ticks", "ticks", "logs"]),
        "site": st.sampled_from(["default", "default", "other"]),
    }
)


def _document(n: int, event: dict[str, Any]) -> Document:
    ts = FIRST_DAY_MS + event["day"] * DAY_MS + event["minute"] * 60_000 + n
    source: dict[str, Any] = {
        "@timestamp": format_timestamp(ts),
        "@version": "1",
        "event": {"id": f"e{n}", "action": event["action"], "dataset": "metronome.x"},
        "item": {"id": event["item"]},
        "bot": event["bot"],
        "site": {"id": event["site"]},
        "visitor": {"id": f"vis-{event['visitor']}"},
    }
    if event["visit"] is not None:
        source["visit"] = {"id": f"visit-{event['visitor']}-{event['visit']}"}
    if event["spam"] is not None:
        source["referrer"] = {"spam": event["spam"]}
    return Document(id=f"e{n}", timestamp_ms=ts, dataset=event["dataset"], source=source)


REQUESTS = [
    {"from": "2024-03-01", "to": "2024-03-04"},
    {"from": "2024-03-02", "to": "2024-03-03"},
    {"from": "2024-03-01T12:00:00Z", "to": "2024-03-03T06:00:00Z"},
    {"from": "2024-03-01", "to": "2024-03-04", "tz": "America/New_York"},
    {"from": "2024-03-01", "to": "2024-03-04", "event": "download"},
    {"from": "2024-03-01", "to": "2024-03-04", "event": "view,download", "bots": "include"},
    {"from": "2024-03-01", "to": "2024-03-04", "source": "ticks"},
]


def _queries(item: str) -> list[BasketQuery]:
    queries = []
    for params in REQUESTS:
        for within in ("visit", "day"):
            request = parse_related(item, {**params, "within": within, "min_support": "1"})
            for site in ("default", "other"):
                group = for_site(parse_query(request.body), site).group
                queries.append(BasketQuery(group, item, request.visits, 1, CANDIDATES))
    return queries


def _compare(path: Path) -> int:
    """Compares every query both ways; returns how many the counts answered."""
    conn = sqlite3.connect(path / DB_NAME, isolation_level=None)
    answered = 0
    try:
        for item in ITEMS:
            for query in _queries(item):
                conn.execute("BEGIN")
                raw = query_baskets(conn, query)
                fast = query_baskets(conn, query, basket_popularity)
                items = [other for other, _, _ in raw.pairs]
                answered += bool(items) and basket_popularity(conn, query, items) is not None
                conn.execute("COMMIT")
                assert fast == raw, (query, fast, raw)
    finally:
        conn.close()
    return answered


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=st.lists(EVENT, min_size=1, max_size=40),
    later=st.lists(EVENT, max_size=15),
    deleted=st.lists(st.integers(0, 39), max_size=5),
    recount_later=st.booleans(),
)
def test_counts_per_day_give_the_events_answer(
    tmp_path_factory: Any,
    first: list[dict[str, Any]],
    later: list[dict[str, Any]],
    deleted: list[int],
    recount_later: bool,
) -> None:
    path = tmp_path_factory.mktemp("related-counts")

    async def build() -> None:
        async with SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(path)})) as store:
            await store.ensure_schema()
            await store.write([_document(n, e) for n, e in enumerate(first)])
            await store.refresh_rollups()  # every day counted
            await store.write([_document(100 + n, e) for n, e in enumerate(later)])
        conn = sqlite3.connect(path / DB_NAME, isolation_level=None)
        try:  # deleted after being counted: their days are marked by the trigger
            conn.executemany("DELETE FROM events WHERE id = ?", [(f"e{n}",) for n in deleted])
        finally:
            conn.close()
        if recount_later:
            async with SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(path)})) as store:
                await store.refresh_rollups()

    asyncio.run(build())
    _compare(path)


def test_counts_answer_a_counted_range_and_cross_midnight_visits(tmp_path: Path) -> None:
    """A hand-built case the counts must answer (not fall back): a visit crossing UTC
    midnight holds ``a`` on both days, a view and a download of ``b`` in one visit."""
    events = [
        {"visitor": 0, "visit": 0, "item": "it-0", "day": 0, "minute": 1439},
        {"visitor": 0, "visit": 0, "item": "it-1", "day": 1, "minute": 0},
        {"visitor": 0, "visit": 0, "item": "it-0", "day": 1, "minute": 1},
        {"visitor": 1, "visit": 0, "item": "it-0", "day": 1, "minute": 600},
        {"visitor": 1, "visit": 0, "item": "it-1", "day": 1, "minute": 601},
        {"visitor": 1, "visit": 0, "item": "it-1", "day": 1, "minute": 601, "action": "download"},
        {"visitor": 2, "visit": None, "item": "it-1", "day": 2, "minute": 30},
    ]
    base = {"action": "view", "bot": False, "spam": None, "dataset": "ticks", "site": "default"}

    async def build() -> None:
        async with SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(tmp_path)})) as store:
            await store.ensure_schema()
            await store.write([_document(n, {**base, **e}) for n, e in enumerate(events)])
            await store.refresh_rollups()

    asyncio.run(build())
    assert _compare(tmp_path) > 0
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        (query,) = [q for q in _queries("it-0")[:1]]
        counts = basket_popularity(conn, query, ["it-0", "it-1"])
    finally:
        conn.close()
    # it-0: one visit over two days, one more visit; it-1: two visits and a visitor's day
    assert counts == {"it-0": 2, "it-1": 3}
