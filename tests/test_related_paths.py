"""Related items from the counts kept beside the events (Elasticsearch: the basket events copied
into ``<prefix>-related``; embedded: the per-day basket counts) answer exactly what counting
the events answers (``METRONOME_RELATED_ROLLUPS=off``, a second server on the same data),
after events sent out of order and sent twice, and after ``metronome forget`` and
``metronome retention`` removed some; on both stores, through real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest

from metronome.events.document import FORWARDED_HEADER, new_event_id
from tests.support.backends import Backend, running_backend
from tests.support.metronome_server import MetronomeServer

AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
BOT = "Googlebot/2.1 (+http://www.google.com/bot.html)"
# address -> (ts, item, event) in time order; every address is one visitor (ids are salted
# by the day a tick is received: today), its visits split by 30-minute gaps
VISITS: dict[str, list[tuple[str, str, str]]] = {
    "10.2.0.1": [  # 1990-06-01: the day retention removes
        ("1990-06-01T10:00:00Z", "pa", "view"),
        ("1990-06-01T10:01:00Z", "pb", "view"),
        ("1990-06-01T10:02:00Z", "pc", "view"),
    ],
    "10.2.0.2": [  # two visits, the second crossing midnight
        ("1990-06-02T10:00:00Z", "pa", "view"),
        ("1990-06-02T10:01:00Z", "pb", "view"),
        ("1990-06-02T23:50:00Z", "pa", "view"),
        ("1990-06-03T00:10:00Z", "pc", "view"),
    ],
    "10.2.0.3": [
        ("1990-06-02T11:00:00Z", "pb", "view"),
        ("1990-06-02T11:01:00Z", "pa", "view"),
        ("1990-06-02T11:02:00Z", "pb", "download"),
    ],
    "10.2.0.4": [
        ("1990-06-03T09:00:00Z", "pa", "view"),
        ("1990-06-03T09:01:00Z", "pc", "view"),
        ("1990-06-03T09:02:00Z", "pq", "view"),
    ],
    "10.2.0.5": [
        ("1990-06-03T09:00:00Z", "pb", "view"),
        ("1990-06-03T09:01:00Z", "pc", "download"),
        ("1990-06-03T09:02:00Z", "pq", "view"),
    ],
}
LATE = ("10.2.0.2", ("1990-06-02T10:02:00Z", "pc", "view"))  # arrives after everything
WHOLE = {"from": "1990-06-01", "to": "1990-06-03"}
ASKED: list[tuple[str, dict[str, str]]] = [
    (item, {**WHOLE, **extra})
    for item in ("pa", "pb", "pc", "pq")
    for extra in (
        {"min_support": "1"},
        {"min_support": "1", "within": "day"},
        {"min_support": "1", "event": "view"},
        {"min_support": "1", "bots": "include"},
        {"min_support": "1", "source": "ticks"},
        {},
    )
] + [
    ("pa", {"from": "1990-06-02T10:30:00Z", "to": "1990-06-03T09:01:30Z", "min_support": "1"}),
    ("pc", {"from": "1990-06-02", "to": "1990-06-02", "tz": "America/New_York"}),
    ("pb", {"from": "1990-06-02", "to": "1990-06-03", "min_support": "1", "within": "day"}),
]


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def paths(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, httpx.Client]]:
    """The store's server (counts kept beside the events) and a second one counting
    from the events, on the same data."""
    with running_backend(request, tmp_path_factory, request.param, {}) as backend:
        env = {
            k: v
            for k, v in backend.server.env.items()
            if k.startswith("METRONOME_")
            and k not in ("METRONOME_HOST", "METRONOME_PORT", "METRONOME_DATA_DIR")
        }
        old = MetronomeServer(
            {**env, "METRONOME_RELATED_ROLLUPS": "off"},
            data_dir=backend.server.data_dir if not backend.es_url else None,
            args=("--no-shipper",),
        )
        old.start()
        try:
            with httpx.Client(base_url=old.url, timeout=30) as client:
                _plant(backend)
                yield backend, client
        finally:
            assert old.stop() == 0, old.log_tail()


def _send(backend: Backend, address: str, ticks: list[dict[str, Any]], agent: str) -> None:
    """Forwarded ticks (each with its sender's event id), sent twice: a resend."""
    headers = {"X-Forwarded-For": address, "User-Agent": agent, FORWARDED_HEADER: "1"}
    for _ in range(2):
        resp = backend.client.post("/ticks", json=ticks, headers=headers)
        assert resp.status_code == 202 and resp.json()["accepted"] == len(ticks), resp.text


def _tick(ts: str, item: str, event: str) -> dict[str, Any]:
    return {"id": item, "ts": ts, "event": event, "event_id": new_event_id()}


def _plant(backend: Backend) -> None:
    for address, events in reversed(VISITS.items()):  # later visitors first
        ticks = [_tick(*event) for event in events]
        if address == "10.2.0.3":
            ticks.reverse()  # out of order within a batch
        _send(backend, address, ticks, AGENT)
    # a crawler's visit: left out by default
    _send(
        backend,
        "10.2.0.9",
        [_tick("1990-06-02T12:00:00Z", i, "view") for i in ("pa", "pb", "pc")],
        BOT,
    )
    backend.settle()
    address, event = LATE  # out of order across batches, after the rest was stored
    _send(backend, address, [_tick(*event)], AGENT)
    backend.settle()


def _answer(client: httpx.Client, item: str, params: dict[str, str]) -> dict[str, Any]:
    resp = client.get(f"/items/{item}/related", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _same_answers(paths: tuple[Backend, httpx.Client]) -> dict[tuple[str, str], Any]:
    backend, old = paths
    backend.settle()
    answers = {}
    for item, params in ASKED:
        new = _answer(backend.client, item, params)
        assert new == _answer(old, item, params), (item, params)
        answers[(item, str(sorted(params.items())))] = new
    return answers


def _pairs(answer: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {
        r["item"]: (r["together"], r["item_baskets"], r["other_baskets"]) for r in answer["results"]
    }


def _copies(backend: Backend, item: str | None) -> int:
    """Copies of an item's events (or all) in ``<prefix>-related`` (Elasticsearch only)."""
    resp = httpx.post(
        f"{backend.es_url}/{backend.index_prefix}-related/_count",
        json={"query": {"term": {"item.id": item}} if item else {"match_all": {}}},
        timeout=30,
    )
    resp.raise_for_status()
    return int(resp.json()["count"])


def test_kept_counts_answer_as_the_events_after_resent_and_out_of_order_events(
    paths: tuple[Backend, httpx.Client],
) -> None:
    backend, _ = paths
    _same_answers(paths)
    # the visitors' days of 06-02 and 06-03 (one basket per visitor: ids are salted by the
    # day of receipt), counted by hand: a in 2, 3, 4; b in 2, 3, 5; c in 2, 4, 5; q in 4, 5
    day = _answer(
        backend.client,
        "pa",
        {"from": "1990-06-02", "to": "1990-06-03", "within": "day", "min_support": "1"},
    )
    assert _pairs(day) == {"pb": (2, 3, 3), "pc": (2, 3, 3), "pq": (1, 3, 2)}
    # a visit crossing midnight is one basket: a (23:50) with c (00:10)
    night = {"from": "1990-06-02T23:00:00Z", "to": "1990-06-03T01:00:00Z", "min_support": "1"}
    assert _pairs(_answer(backend.client, "pa", night)) == {"pc": (1, 1, 1)}
    if backend.es_url:  # the answers came from the copies: each event there once
        assert _copies(backend, "pq") == 2
        copies = _copies(backend, None)
        assert copies == sum(len(v) for v in VISITS.values()) + 1 + 3  # late, crawler
        mapping = httpx.get(
            f"{backend.es_url}/{backend.index_prefix}-related/_mapping", timeout=30
        ).json()
        # created before the first event: it holds every event, so every range is its
        assert mapping[f"{backend.index_prefix}-related"]["mappings"]["_meta"] == {
            "complete_from": 0
        }


def test_forgotten_events_leave_the_kept_counts(paths: tuple[Backend, httpx.Client]) -> None:
    backend, _ = paths
    done = backend.server.run_cli("forget", "--where", '[["is", "item", ["pq"]]]', "--yes")
    assert done.returncode == 0, done.stderr
    answers = _same_answers(paths)
    for (item, _), answer in answers.items():
        assert item == "pq" or "pq" not in _pairs(answer)
    if backend.es_url:
        assert _copies(backend, "pq") == 0


def test_retention_removes_old_days_from_the_kept_counts(
    paths: tuple[Backend, httpx.Client],
) -> None:
    backend, _ = paths
    before = _pairs(_answer(backend.client, "pa", {**WHOLE, "min_support": "1"}))
    keep = f"{(datetime.now(UTC).date() - date(1990, 6, 2)).days}d"  # 06-01 goes
    done = backend.server.run_cli("retention", "--keep", keep)
    assert done.returncode == 0, done.stderr
    _same_answers(paths)
    after = _pairs(_answer(backend.client, "pa", {**WHOLE, "min_support": "1"}))
    assert after["pb"][0] == before["pb"][0] - 1  # visitor 1's visit of 06-01 is gone
    assert after["pc"][0] == before["pc"][0] - 1


def test_copies_are_made_of_the_events_a_basket_search_can_find() -> None:
    """What the store copies after a bulk: stored events of ticks and logs with an item and
    a visitor or a visit, with the fields the searches read, under the events' names."""
    from metronome.store.elasticsearch import bulk_items
    from metronome.store.es_related import copies_of_bulk

    def doc(doc_id: str, dataset: str, **parts: Any) -> Any:
        from metronome.events.document import Document

        source = {"@timestamp": "1990-06-02T10:00:00.000Z", "event": {"action": "view"}}
        return Document(doc_id, 644_320_800_000, dataset, {**source, **parts})

    documents = [
        doc("e1", "ticks", item={"id": "pa"}, visitor={"id": "v1"}, visit={"id": "x1"}),
        doc("e2", "logs", item={"id": "pa"}, visit={"id": "x2"}, bot=True),  # no visitor
        doc("e3", "ticks", item={"id": "pa"}),  # in no basket
        doc("e4", "ticks", visitor={"id": "v1"}),  # no item
        doc("e5", "visits", item={"id": "pa"}, visitor={"id": "v1"}),  # a summary
        doc("e6", "ticks", item={"id": "pb"}, visitor={"id": "v2"}),  # refused by the store
    ]
    items = bulk_items("mt", documents)
    copies = dict(copies_of_bulk("mt", items, [True, True, True, True, True, False]))
    assert copies == {
        "e1": {
            "@timestamp": 644_320_800_000,
            "dataset": "ticks",
            "event": {"action": "view"},
            "item": {"id": "pa"},
            "visitor": {"id": "v1"},
            "visit": {"id": "x1"},
        },
        "e2": {
            "@timestamp": 644_320_800_000,
            "dataset": "logs",
            "event": {"action": "view"},
            "item": {"id": "pa"},
            "visit": {"id": "x2"},
            "bot": True,
        },
    }
