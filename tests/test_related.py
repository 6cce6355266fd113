"""``GET /items/{id}/related`` on both stores over HTTP: a small planted clickstream with
exact counts, scores and order; one server per store for the module."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from metronome.config import Settings
from metronome.events.document import Document, parse_iso_ms
from metronome.recommend.related import score
from metronome.store.sqlite import SQLiteStore
from tests.support.backends import Backend, running_backend

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
# visitor (address) -> the items it looked at, per day; a visitor's day is one basket
DAY_ONE = {
    "10.1.0.1": ["a", "b", "p"],
    "10.1.0.2": ["a", "b", "p"],
    "10.1.0.3": ["a", "b", "c"],
    "10.1.0.4": ["a", "c", "p"],
    "10.1.0.5": ["p", "b"],
    "10.1.0.6": ["p", "c"],
    "10.1.0.7": ["p"],
    "10.1.0.8": ["p", "r"],
    "10.1.0.9": ["a", "r"],
}
# The first visitor again, a day later: the same visitor id (a tick's visitor id is salted
# by the day it is received, which is today for all of these) but a new visit (more than
# 30 minutes since the last event), so a new basket: a is in 6 visits
DAY_TWO = {
    "10.1.0.1": ["a", "c"],
    "10.1.0.10": ["c"],
}


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    with running_backend(request, tmp_path_factory, request.param, {}) as started:
        yield started


@pytest.fixture(scope="module")
def planted(store: Backend) -> Backend:
    for day, baskets in (("2024-02-05", DAY_ONE), ("2024-02-06", DAY_TWO)):
        for minute, (address, items) in enumerate(baskets.items()):
            ticks = [
                {"id": f"rel-{item}", "ts": f"{day}T10:{minute:02d}:{second:02d}Z"}
                for second, item in enumerate(items)
            ]
            resp = store.client.post(
                "/ticks", json=ticks, headers={"X-Forwarded-For": address, "User-Agent": AGENT}
            )
            assert resp.status_code == 202, resp.text
    # a download of b by a crawler: left out by default
    resp = store.client.post(
        "/tick",
        json={"id": "rel-b", "event": "download", "ts": "2024-02-05T11:00:00Z"},
        headers={"X-Forwarded-For": "10.1.0.1", "User-Agent": "Googlebot/2.1"},
    )
    assert resp.status_code == 202
    store.settle()
    return store


def _related(backend: Backend, item: str, **params: str) -> dict[str, Any]:
    resp = backend.client.get(
        f"/items/{item}/related", params={"from": "2024-02-05", "to": "2024-02-06", **params}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_related_items_favour_specific_association_over_popularity(planted: Backend) -> None:
    answer = _related(planted, "rel-a")
    rows = [
        (r["item"], r["together"], r["item_baskets"], r["other_baskets"]) for r in answer["results"]
    ]
    # b and p are each found with a in 3 baskets, but p is in 7 and b in 4: b first; r shares
    # one basket only (min_support 2)
    assert rows == [("rel-b", 3, 6, 4), ("rel-c", 3, 6, 5), ("rel-p", 3, 6, 7)]
    assert [r["score"] for r in answer["results"]] == [
        round(score(3, 6, 4), 6),
        round(score(3, 6, 5), 6),
        round(score(3, 6, 7), 6),
    ]
    assert answer["meta"]["item_baskets"] == 6
    assert answer["meta"]["within"] == "visit"


def test_related_items_take_min_support_event_and_range(planted: Backend) -> None:
    rows = _related(planted, "rel-a", min_support="1", limit="10")["results"]
    assert [r["item"] for r in rows] == ["rel-b", "rel-c", "rel-p", "rel-r"]
    assert rows[3]["together"] == 1 and rows[3]["other_baskets"] == 2
    one_day = _related(planted, "rel-a", to="2024-02-05")["results"]
    assert [(r["item"], r["together"], r["other_baskets"]) for r in one_day] == [
        ("rel-b", 3, 4),
        ("rel-p", 3, 7),
        ("rel-c", 2, 3),
    ]
    assert _related(planted, "rel-a", event="download")["results"] == []
    by_id = planted.client.get(
        "/items/related", params={"id": "rel-a", "from": "2024-02-05", "limit": "1"}
    )
    assert [r["item"] for r in by_id.json()["results"]] == ["rel-b"]


def test_related_items_refuse_bad_parameters_naming_them(planted: Backend) -> None:
    for params, name in (
        ({"within": "week"}, "within"),
        ({"min_support": "0"}, "min_support"),
        ({"limit": "x"}, "limit"),
        ({"colour": "red"}, "colour"),
        ({"range": "forever"}, "range"),
        ({"tz": "Mars/Olympus"}, "tz"),
    ):
        resp = planted.client.get("/items/rel-a/related", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert resp.json()["details"]["parameter"] == name, resp.json()


def _doc(event_id: str, ts: str, item: str, visitor: str, visit: str) -> Document:
    source = {
        "@timestamp": ts,
        "@version": "1",
        "event": {"id": event_id, "action": "view", "dataset": "metronome.ticks"},
        "item": {"id": item},
        "bot": False,
        "params": {},
        "site": {"id": "default"},
        "visitor": {"id": visitor},
        "visit": {"id": visit},
    }
    ms = parse_iso_ms(ts)
    assert ms is not None
    return Document(id=event_id, timestamp_ms=ms, dataset="ticks", source=source)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_visit_is_one_basket_when_events_carry_it_sqlite(planted: Backend) -> None:
    """Events stored with a ``visit.id`` (what the visits work writes) count per visit: a
    visitor's two visits on one day are two baskets. Embedded store only: Elasticsearch's
    strict mapping takes ``visit.id`` once the visits work maps it."""
    settings = Settings.from_env({"METRONOME_DATA_DIR": str(planted.server.data_dir)})
    docs = [
        _doc("vis-1", "2024-02-07T09:00:00.000Z", "vis-a", "visitor-x", "visit-1"),
        _doc("vis-2", "2024-02-07T09:01:00.000Z", "vis-d", "visitor-x", "visit-1"),
        _doc("vis-3", "2024-02-07T13:00:00.000Z", "vis-e", "visitor-x", "visit-2"),
    ]

    async def write() -> None:
        async with SQLiteStore(settings) as sqlite:
            await sqlite.write(docs)

    asyncio.run(write())
    params = {"from": "2024-02-07", "to": "2024-02-07", "min_support": "1"}
    visits = _related(planted, "vis-a", **params)
    assert [(r["item"], r["together"]) for r in visits["results"]] == [("vis-d", 1)]
    days = _related(planted, "vis-a", within="day", **params)
    assert [(r["item"], r["together"]) for r in days["results"]] == [("vis-d", 1), ("vis-e", 1)]
