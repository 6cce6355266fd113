"""The embedded store's rollups give exactly the answers the events give (embedded store only:
Elasticsearch has no rollups of these).

One real SQLite store holds events over five months across month ends, two sites, both
datasets, items, formats and referrers with missing values, crawlers and referrer spam;
some events are delivered twice, some are forgotten (deleted), and some days are left dirty
(written after the last count), as on a live server. Hypothesis then draws ``/query``
requests -- counts and distinct counts, a time bucket in any kind of zone and a field,
filters -- and each must give the same groups through the rollups as through the events."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from metronome.config import Settings
from metronome.errors import InvalidQuery
from metronome.events.document import Document, format_timestamp
from metronome.reports.query import for_site, parse_query
from metronome.store.query import GroupQuery
from metronome.store.sqlite import SQLiteStore
from metronome.store.sqlite_query import install_functions, query_groups, query_top
from metronome.store.sqlite_rollups import _merged_bucket, _plan, group_rows, rollup_sql
from tests.support.fuzz import TIME_ZONES, fuzz

START = datetime(2025, 11, 20, tzinfo=UTC)
DAYS = 140  # past the end of March: four month ends
NOW_MS = int((START + timedelta(days=DAYS + 1)).timestamp() * 1000)
ITEMS = [None, "a", "b", "c", "d[1]", "é"]
FIELDS = ["item", "event", "format", "referrer", "bot"]
# no column of their own: counted by value in rollup_fields
KEYWORDS = ["referrer_domain", "domain", "browser", "os", "device", "country", "method", "status"]
# about a value per event or per item: counted by value per day in rollup_values
VALUES = ["path", "visitor", "url.original", "user_agent.original", "visit.prev"]
PATHS = ["/", "/a", "/b/", "/é", "", "/d[1]"]


def _document(rng: random.Random, n: int) -> Document:
    ts = int((START + timedelta(days=DAYS * rng.random())).timestamp() * 1000)
    if n % 97 == 0:  # on a UTC midnight, and the millisecond before one
        ts = ts // 86_400_000 * 86_400_000 - (n % 2)
    action = rng.choice(["view", "view", "download", None])
    source: dict[str, Any] = {
        "@timestamp": format_timestamp(ts),
        "event": {"id": f"e{n}", "dataset": "metronome.ticks"},
        "bot": rng.random() < 0.1,
        "visitor": {"id": f"v{rng.randrange(40)}"},
        "site": {"id": rng.choice(["default", "default", "other"])},
    }
    if action:
        source["event"]["action"] = action
    item = rng.choice(ITEMS)
    if item is not None:
        source["item"] = {"id": item}
        if action == "download" and rng.random() < 0.8:
            source["item"]["format"] = rng.choice(["csv", "kml"])
    if rng.random() < 0.7:
        page = rng.choice(["news.example/a", "search.example", "spam.example/x"])
        source["referrer"] = {"page": page, "domain": page.split("/")[0]}
        if rng.random() < 0.8:
            source["referrer"]["spam"] = page.startswith("spam")
    if rng.random() < 0.9:
        source["url"] = {"domain": rng.choice(["example.org", "data.example.org"])}
        if rng.random() < 0.9:
            path = rng.choice(PATHS)
            source["url"]["path"] = path
            source["url"]["original"] = f"{path}?n={n % 7}" if n % 3 else path
    if rng.random() < 0.5:
        source["visit"] = {"prev": rng.choice(PATHS)}
    if rng.random() < 0.8:
        agent: dict[str, Any] = {"name": rng.choice(["Firefox", "Chrome", "Other"])}
        if rng.random() < 0.7:
            agent["original"] = f"Mozilla/5.0 ({agent['name']}) {n % 11}"
        agent["os"] = {"name": rng.choice(["Linux", "Windows"])}
        if rng.random() < 0.5:
            agent["device"] = {"name": rng.choice(["Other", "iPhone"])}
        source["user_agent"] = agent
    if rng.random() < 0.7:
        source["client"] = {"geo": {"country_iso_code": rng.choice(["DE", "FR", "NZ"])}}
    dataset = rng.choice(["ticks", "ticks", "logs"])
    if dataset == "logs":
        source["http"] = {
            "request": {"method": rng.choice(["GET", "GET", "HEAD", "POST"])},
            "response": {"status_code": rng.choice([200, 200, 304, 404, 500])},
        }
    return Document(f"e{n}", ts, dataset, source)


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    data = tmp_path_factory.mktemp("rollups")
    rng = random.Random(24)
    docs = [_document(rng, n) for n in range(3000)]
    dirty_days = {0, 41, 42, 70, 100, 139}
    late = [
        d
        for d in docs[2200:]
        if (d.timestamp_ms - int(START.timestamp() * 1000)) // 86_400_000 in dirty_days
    ]

    async def load() -> None:
        settings = Settings.from_env({"METRONOME_DATA_DIR": str(data)})
        # only the refreshes below count days: a write also counts some every few seconds,
        # which on a slow machine counted the days this module keeps dirty
        async with SQLiteStore(settings, rollup_every_s=math.inf) as store:
            await store.ensure_schema()
            await store.write(docs[:2000])
            await store.write(docs[1500:2200])  # 500 delivered again
            await store.refresh_rollups()
            forget = parse_query(
                {"range": {"from": "2025-11-01"}, "filters": [["is", "visitor", ["v7"]]]}
            )
            await store.delete_matching(forget.group)  # forgotten after they were counted
            await store.refresh_rollups()
            await store.write(late)  # on a few days
            await store.refresh_rollups(max_days=2)  # the others stay dirty, as today is

    asyncio.run(load())
    connection = sqlite3.connect(Path(data) / "metronome.sqlite3")
    install_functions(connection)
    yield connection
    connection.close()


def _merged(connection: sqlite3.Connection, query: GroupQuery, limit: int) -> list[Any] | None:
    """A month bucket's groups merged from its days (None: not whole clean days)."""
    plan = _plan(connection, query)
    assert plan is not None, "counted by value in rollup_values"
    return _merged_bucket(connection, query, limit, plan)


def _both(connection: sqlite3.Connection, query: GroupQuery) -> tuple[Any, Any, bool]:
    compiled = rollup_sql(connection, query)
    raw = query_groups(connection, query, None, 100_000)
    rolled = query_groups(connection, query, None, 100_000, compiled)
    return raw, rolled, compiled is not None


def _group(body: dict[str, Any], site: str = "default") -> GroupQuery:
    return for_site(parse_query(body, now_ms=NOW_MS), site).group


def test_rollups_answer_the_item_report_and_top_items_exactly(conn: sqlite3.Connection) -> None:
    views = {
        "source": "all",
        "range": {"from": "2025-11-20", "to": "2026-04-08"},
        "dimensions": ["time:day"],
        "filters": [["is", "item", ["a"]], ["is", "event", ["view"]]],
    }
    top = {
        "source": "ticks",
        "range": {"from": "2026-01-01", "to": "2026-02-28"},
        "dimensions": ["item"],
    }
    referrers = {
        **views,
        "dimensions": ["referrer"],
        "filters": [*views["filters"], ["matches", "referrer", ["*"]]],
    }
    browsers = {**views, "dimensions": ["time:day", "browser"], "filters": views["filters"][1:]}
    statuses = {"source": "logs", "range": top["range"], "dimensions": ["status"]}
    paths = {**browsers, "dimensions": ["time:day", "path"]}
    visitors = {
        **top,
        "dimensions": ["time:week", "visitor"],
        "filters": [["is_not", "bot", [True]]],
    }
    for body in (views, top, referrers, browsers, statuses, paths, visitors):
        raw, rolled, used = _both(conn, _group(body))
        assert used, body
        assert rolled == raw and sum(row[1][0] for row in raw) > 0
    query = _group(top)
    compiled = rollup_sql(conn, query)
    assert query_top(conn, query, 0, True, 3, compiled) == query_top(conn, query, 0, True, 3)


@pytest.mark.parametrize("field", ["path", "visitor", "url.original"])
def test_a_bucket_of_many_values_is_merged_from_its_days_in_order(
    conn: sqlite3.Connection, field: str
) -> None:
    """A month bucket by a field of rollup_values is merged from its days' rows, which come
    in value order; the groups are those of one statement over the events, and the first
    few of them when only a few are asked for."""
    for body in (
        {"source": "all", "range": {"from": "2026-03-01", "to": "2026-03-31"}},
        {"source": "ticks", "range": {"from": "2026-03-01", "to": "2026-03-31"}, "bots": "include"},
    ):
        query = _group({**body, "dimensions": ["time:month", field]})
        raw = query_groups(conn, query, None, 100_000)
        merged = _merged(conn, query, 100_000)
        assert merged == raw and len(raw) > 5
        assert _merged(conn, query, 5) == raw[:5]
        assert group_rows(conn, query, None, 5) == raw[:5]
    dirty = _group(
        {"range": {"from": "2026-01-01", "to": "2026-01-31"}, "dimensions": ["time:month", field]}
    )
    assert _merged(conn, dirty, 10) is None  # a day of it is not counted yet


def test_rollups_leave_what_they_cannot_count_to_the_events(conn: sqlite3.Connection) -> None:
    for body in (
        {"dimensions": ["time:hour"], "range": "3d"},  # no whole UTC day in a bucket
        {"dimensions": ["visit.id"], "range": "90d"},  # no such column, nor counted by value
        {"dimensions": ["path"], "range": "90d", "filters": [["is", "browser", ["Firefox"]]]},
        {"dimensions": ["browser", "item"], "range": "90d"},  # a value and a column
        {"dimensions": ["browser"], "metrics": ["items"], "range": "90d"},  # not a count
        {"dimensions": ["country"], "range": "90d", "filters": [["is", "item", ["a"]]]},
        {"metrics": ["visitors"], "range": "90d"},  # distinct of no column
        {"range": "90d", "filters": [["is", "params.x", ["1"]]]},
    ):
        assert rollup_sql(conn, _group(body)) is None


_dates = st.integers(0, DAYS).map(lambda d: (START + timedelta(days=d)).strftime("%Y-%m-%d"))
_moments = st.integers(0, DAYS * 86_400_000).map(lambda ms: int(START.timestamp() * 1000) + ms)
_leaf = st.one_of(
    st.tuples(
        st.just("is"), st.just("item"), st.lists(st.sampled_from(ITEMS[1:]), min_size=1, max_size=2)
    ),
    st.tuples(st.sampled_from(["is", "is_not"]), st.just("event"), st.just(["view"])),
    st.tuples(st.just("matches"), st.sampled_from(["referrer", "format"]), st.just(["*"])),
    st.tuples(st.just("contains"), st.just("referrer"), st.just(["example/"])),
    st.tuples(st.just("is"), st.just("bot"), st.just([True])),
)
_filters = st.lists(_leaf.map(list), max_size=2).flatmap(
    lambda leaves: st.sampled_from(
        [
            leaves,
            [["not", leaves[0]]] if leaves else [],
            [["or", *leaves]] if len(leaves) > 1 else leaves,
        ]
    )
)


@st.composite
def _bodies(draw: st.DrawFn) -> dict[str, Any]:
    low, high = sorted((draw(_dates), draw(_dates)))
    if draw(st.booleans()):
        low_ms, high_ms = sorted((draw(_moments), draw(_moments)))
        span: dict[str, Any] = {"from": low_ms, "to": high_ms + 1}
    else:
        span = {"from": low, "to": high}
    dims = (
        [f"time:{draw(st.sampled_from(['day', 'week', 'month', 'hour']))}"]
        if draw(st.booleans())
        else []
    )
    dims += draw(st.lists(st.sampled_from(FIELDS + KEYWORDS + VALUES), max_size=1))
    return {
        "source": draw(st.sampled_from(["ticks", "logs", "all"])),
        "range": span,
        "tz": draw(st.sampled_from(["UTC", "UTC", *TIME_ZONES])),
        "metrics": draw(
            st.lists(st.sampled_from(["events", "items"]), min_size=1, max_size=2, unique=True)
        ),
        "dimensions": dims,
        "filters": draw(_filters),
        "bots": draw(st.sampled_from(["exclude", "include"])),
        "limit": 10_000,
    }


@fuzz(200)
@given(body=_bodies(), site=st.sampled_from(["default", "other"]))
def test_rollups_give_the_answers_of_the_events_on_random_queries(
    conn: sqlite3.Connection, body: dict[str, Any], site: str
) -> None:
    try:
        query = _group(body, site)
    except InvalidQuery:  # too many buckets, an empty range: no question to compare on
        assume(False)
    raw, rolled, _ = _both(conn, query)
    assert rolled == raw
    # what the store runs: a time bucket at a time where that pays, the first ``limit``
    # groups after a cursor as one statement over the events gives them
    assert group_rows(conn, query, None, 100_000) == raw
    if len(raw) > 2:
        cut = len(raw) // 3
        assert group_rows(conn, query, raw[cut][0], 2) == raw[cut + 1 : cut + 3]
        assert group_rows(conn, query, None, cut) == raw[:cut]
    if query.dimensions and not query.dimensions[0].interval:
        compiled = rollup_sql(conn, query)
        assert query_top(conn, query, 0, True, 2, compiled) == query_top(conn, query, 0, True, 2)


def test_a_database_made_before_the_rollups_is_counted_after_the_upgrade(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "metronome.sqlite3")
    old.executescript(
        "CREATE TABLE events (id TEXT PRIMARY KEY, dataset TEXT NOT NULL, ts INTEGER NOT NULL,"
        " item_id TEXT, action TEXT, format TEXT, referrer_page TEXT,"
        " bot INTEGER NOT NULL DEFAULT 0, doc TEXT NOT NULL,"
        " site_id TEXT NOT NULL DEFAULT 'default') WITHOUT ROWID;"
        " CREATE INDEX events_site_ts ON events (site_id, dataset, ts);"
    )
    rng = random.Random(7)
    docs = [_document(rng, n) for n in range(300)]
    old.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                d.id,
                d.dataset,
                d.timestamp_ms,
                d.source.get("item", {}).get("id"),
                d.source["event"].get("action"),
                d.source.get("item", {}).get("format"),
                d.source.get("referrer", {}).get("page"),
                int(d.source["bot"]),
                orjson.dumps(d.source).decode(),
                d.source["site"]["id"],
            )
            for d in docs
        ],
    )
    old.commit()
    old.close()

    async def upgrade() -> list[str]:
        settings = Settings.from_env({"METRONOME_DATA_DIR": str(tmp_path)})
        async with SQLiteStore(settings) as store:
            changes = [f"{c.action} {c.name}" for c in await store.ensure_schema()]
            await store.refresh_rollups()
            return changes

    assert asyncio.run(upgrade()) == [
        "updated events",
        "created rollup_pages",
        "created rollup_items",
        "created rollup_details",
        "created rollup_fields",
        "created rollup_values",
        "created related_counts",  # related items' basket counts (issue 25)
        "created related_multi",
    ]
    connection = sqlite3.connect(tmp_path / "metronome.sqlite3")
    install_functions(connection)
    spam = {d.id: d.source.get("referrer", {}).get("spam") for d in docs}
    stored = dict(connection.execute("SELECT id, spam FROM events"))
    assert stored == {k: None if v is None else int(v) for k, v in spam.items()}
    body = {
        "source": "all",
        "range": {"from": "2025-11-01", "to": "2026-04-30"},
        "dimensions": ["item"],
    }
    for dims in (["item"], ["time:month", "domain"], ["time:day", "visitor"]):
        raw, rolled, used = _both(connection, _group({**body, "dimensions": dims}))
        assert used and rolled == raw and sum(row[1][0] for row in raw) > 0
    connection.close()
