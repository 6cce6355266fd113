"""The /tock contract: exact answers from ticks with known timestamps, on every backend.

Every test runs on the embedded store, Elasticsearch, Elasticsearch through TLS with each
credential kind (an API key, a user and password, a client certificate), and OpenSearch.
Each test has its own item and its own ticks; they are all written once per backend (the
``seeded`` fixture: one wait until searchable instead of one per test), then each test
reads its item's reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.backends import Backend

SECURED_CONTRACT = True  # also through TLS with each credential kind (tests/conftest.py)
OPENSEARCH_CONTRACT = True  # and on OpenSearch


GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


Ticks = list[dict[str, object]]


def _seed_shape(item: str, now: datetime) -> Ticks:
    ticks: Ticks = []
    ticks += [
        {
            "id": item,
            "ts": "2015-01-22T08:00:00Z",
            "referrer": "https://www.arcgis.com/home/item.html?id=1",
        }
    ] * 3
    ticks += [
        {
            "id": item,
            "ts": "2015-01-21T23:59:59.999Z",
            "referer": "http://washingtonpost.com/articles/dc-news/?utm=x",
        }
    ] * 2
    ticks += [{"id": item, "event": "download", "format": "CSV", "ts": 1421913600000}] * 4
    ticks += [{"id": item, "event": "download", "format": "kml", "ts": "2015-01-20T12:00:00"}]
    ticks += [{"id": item, "ts": "2015-01-23T00:00:00Z"}]  # after the range: not counted
    ticks += [{"id": "someone-else", "ts": "2015-01-22T08:00:00Z"}]
    return ticks


def _autumn_dst(item: str, now: datetime) -> Ticks:
    # Berlin leaves summer time at 03:00 CEST on 2026-10-25 (a 25-hour day)
    times = [
        "2026-10-24T22:30:00Z",  # 00:30 CEST on the 25th
        "2026-10-25T00:30:00Z",  # 02:30 CEST, the first 02:30
        "2026-10-25T01:30:00Z",  # 02:30 CET, the second 02:30
        "2026-10-25T22:59:00Z",  # 23:59 CET on the 25th
        "2026-10-25T23:00:00Z",
    ]  # 00:00 CET on the 26th
    return [{"id": item, "ts": t} for t in times]


def _spring_day(item: str, now: datetime) -> Ticks:
    # New York skips 02:00-03:00 on 2026-03-08
    times = [
        "2026-03-08T04:30:00Z",  # 23:30 EST on the 7th
        "2026-03-09T03:30:00Z",  # 23:30 EDT on the 8th
        "2026-03-09T04:30:00Z",
    ]  # 00:30 EDT on the 9th
    return [{"id": item, "ts": t} for t in times]


def _weeks_and_months(item: str, now: datetime) -> Ticks:
    times = [
        "2026-01-31T10:00:00Z",
        "2026-02-01T10:00:00Z",
        "2026-02-02T10:00:00Z",
        "2026-02-28T10:00:00Z",
        "2026-03-01T10:00:00Z",
    ]
    return [{"id": item, "ts": t} for t in times]


DOWNLOADS = {"zip": 1, "shp": 3, "csv": 5, "kml": 3, "geojson": 2}
REFERRERS = {"b.example/x": 2, "a.example/y": 2, "c.example": 4, "d.example/z": 1}


def _top(item: str, now: datetime) -> Ticks:
    ts = "2026-05-05T12:00:00Z"
    ticks: Ticks = []
    for fmt, n in DOWNLOADS.items():
        ticks += [{"id": item, "event": "download", "format": fmt, "ts": ts}] * n
    ticks += [{"id": item, "event": "download", "ts": ts}]  # no format
    for ref, n in REFERRERS.items():
        ticks += [{"id": item, "ts": ts, "referrer": f"https://{ref}/?q={n}"}] * n
    return ticks


def _last_30_days(item: str, now: datetime) -> Ticks:
    return [
        {"id": item},  # now, as the server sees it
        {"id": item, "ts": (now - timedelta(days=2)).isoformat()},
        {"id": item, "ts": (now - timedelta(days=45)).isoformat()},
    ]


# each test's ticks, written together by ``seeded`` (the crawler test's, one request per
# user agent, are written there too)
SEEDS: dict[str, Callable[[str, datetime], Ticks]] = {
    "seed_shape": _seed_shape,
    "autumn_dst": _autumn_dst,
    "spring_day": _spring_day,
    "weeks_and_months": _weeks_and_months,
    "top": _top,
    "last_30_days": _last_30_days,
}
CRAWLER_TS = "2026-06-01T10:00:00Z"


@dataclass(frozen=True)
class Seeded:
    """A backend with every test's ticks searchable, and each test's item."""

    backend: Backend
    items: dict[str, str]
    now: datetime

    def tock(self, name: str, **params: str) -> dict[str, dict[str, int]]:
        resp = self.backend.client.get(f"/tock/{self.items[name]}", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def get(self, path: str, **params: Any) -> Any:
        resp = self.backend.client.get(path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()


@pytest.fixture(scope="module")
def seeded(backend: Backend) -> Seeded:
    """Every test's ticks, written once per backend: one ``/ticks`` batch, and the crawler
    test's three ticks one by one with their user agents."""
    now = datetime.now(UTC)
    names = [*SEEDS, "crawlers", "unknown"]
    items = {name: f"item-{name}-{uuid.uuid4().hex[:12]}" for name in names}
    ticks = [tick for name, make in SEEDS.items() for tick in make(items[name], now)]
    resp = backend.client.post("/ticks", json=ticks)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == len(ticks), resp.text
    for agent in (GOOGLEBOT, GOOGLEBOT, FIREFOX):
        resp = backend.client.post(
            "/tick", json={"id": items["crawlers"], "ts": CRAWLER_TS}, headers={"User-Agent": agent}
        )
        assert resp.status_code == 202, resp.text
    backend.settle()
    return Seeded(backend, items, now)


def test_tock_answers_the_seed_shape_with_exact_counts(seeded: Seeded) -> None:
    window = {"from": "2015-01-19", "to": "2015-01-22"}
    report = seeded.tock("seed_shape", **window)

    assert list(report) == ["views", "downloads", "referers"]
    assert list(report["views"].items()) == [
        ("2015-01-22", 3),
        ("2015-01-21", 2),
        ("2015-01-20", 0),
        ("2015-01-19", 0),
    ]
    assert list(report["downloads"].items()) == [("csv", 4), ("kml", 1)]
    assert list(report["referers"].items()) == [
        ("arcgis.com/home/item.html", 3),
        ("washingtonpost.com/articles/dc-news", 2),
    ]
    item = seeded.items["seed_shape"]
    assert seeded.get(f"/tock/{item}.json", **window) == report
    assert seeded.get("/tock", id=item, **window) == report


def test_tock_counts_days_in_the_requested_time_zone_across_dst(seeded: Seeded) -> None:
    window = {"from": "2026-10-24", "to": "2026-10-26"}
    berlin = seeded.tock("autumn_dst", tz="Europe/Berlin", **window)
    assert list(berlin["views"].items()) == [
        ("2026-10-26", 1),
        ("2026-10-25", 4),
        ("2026-10-24", 0),
    ]

    utc = seeded.tock("autumn_dst", **window)
    assert list(utc["views"].items()) == [("2026-10-26", 0), ("2026-10-25", 4), ("2026-10-24", 1)]

    hours = seeded.tock(
        "autumn_dst",
        tz="Europe/Berlin",
        interval="hour",
        **{"from": "2026-10-25T00:00:00Z", "to": "2026-10-25T03:00:00Z"},
    )
    assert list(hours["views"].items()) == [
        ("2026-10-25T03:00+01:00", 0),
        ("2026-10-25T02:00+01:00", 1),
        ("2026-10-25T02:00+02:00", 1),
    ]


def test_tock_handles_a_23_hour_spring_day(seeded: Seeded) -> None:
    report = seeded.tock(
        "spring_day", tz="America/New_York", **{"from": "2026-03-07", "to": "2026-03-09"}
    )
    assert list(report["views"].items()) == [
        ("2026-03-09", 1),
        ("2026-03-08", 1),
        ("2026-03-07", 1),
    ]


def test_tock_weeks_and_months_start_on_monday_and_the_first(seeded: Seeded) -> None:
    window = {"from": "2026-01-26", "to": "2026-03-01"}
    weeks = seeded.tock("weeks_and_months", interval="week", **window)
    assert list(weeks["views"].items()) == [
        ("2026-02-23", 2),
        ("2026-02-16", 0),
        ("2026-02-09", 0),
        ("2026-02-02", 1),
        ("2026-01-26", 2),
    ]
    months = seeded.tock("weeks_and_months", interval="month", **window)
    assert list(months["views"].items()) == [("2026-03", 1), ("2026-02", 3), ("2026-01", 1)]


def test_tock_top_keeps_the_most_frequent_with_ties_by_name(seeded: Seeded) -> None:
    window = {"from": "2026-05-05", "to": "2026-05-05"}
    report = seeded.tock("top", top="3", **window)
    assert list(report["downloads"].items()) == [("csv", 5), ("kml", 3), ("shp", 3)]
    assert list(report["referers"].items()) == [
        ("c.example", 4),
        ("a.example/y", 2),
        ("b.example/x", 2),
    ]
    everything = seeded.tock("top", **window)
    assert everything["downloads"] == {**DOWNLOADS, "unknown": 1}
    assert everything["views"] == {"2026-05-05": 9}


def test_tock_defaults_to_the_last_30_days_zero_filled(seeded: Seeded) -> None:
    now = seeded.now
    report = seeded.tock("last_30_days")
    days = list(report["views"])
    assert len(days) == 30
    assert days[0] == now.strftime("%Y-%m-%d")
    assert days[-1] == (now - timedelta(days=29)).strftime("%Y-%m-%d")
    assert report["views"][days[0]] + report["views"][days[2]] >= 2
    assert sum(report["views"].values()) == 2
    assert report["downloads"] == {} and report["referers"] == {}


def test_tock_leaves_out_known_crawlers_unless_asked(seeded: Seeded) -> None:
    window = {"from": "2026-06-01", "to": "2026-06-01"}
    assert seeded.tock("crawlers", **window)["views"] == {"2026-06-01": 1}
    assert seeded.tock("crawlers", bots="include", **window)["views"] == {"2026-06-01": 3}


def test_unknown_item_gets_an_all_zero_report(seeded: Seeded) -> None:
    report = seeded.tock("unknown", **{"from": "2020-02-27", "to": "2020-03-01"})
    assert report == {
        "views": {"2020-03-01": 0, "2020-02-29": 0, "2020-02-28": 0, "2020-02-27": 0},
        "downloads": {},
        "referers": {},
    }
