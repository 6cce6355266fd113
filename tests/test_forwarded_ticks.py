"""``POST /ticks`` from another Metronome (``X-Metronome-Forwarded: 1``): a tick carries
its sender's event id, and a batch sent twice (the sender crashed before it knew the
first one arrived) is stored once, on each store, its visit summary too."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

import httpx

from metronome.events.document import (
    FORWARDED_HEADER,
    format_timestamp,
    forwarded_event_id,
    new_event_id,
)
from tests.support.backends import Backend

FORWARDED = {FORWARDED_HEADER: "1"}


def test_a_forwarded_batch_sent_twice_is_stored_once(backend: Backend) -> None:
    item = "fwd-" + uuid.uuid4().hex[:8]
    ticks = [{"id": item, "event_id": new_event_id(), "n": str(n)} for n in range(3)]
    for _ in range(2):
        resp = backend.client.post("/ticks", json=ticks, headers=FORWARDED)
        assert resp.status_code == 202 and resp.json()["accepted"] == 3, resp.text
    first, again = (
        backend.client.post("/ticks", json=ticks[:1], headers=FORWARDED).json()["ids"][0],
        forwarded_event_id("default", ticks[0]["event_id"]),
    )
    assert first == again  # the same sender id for the same site: the same stored id
    stored = backend.find(item)
    assert sorted(d["params"]["n"] for d in stored) == ["0", "1", "2"]
    assert all("event_id" not in d["params"] for d in stored)
    assert {d["event"]["id"] for d in stored} == {
        forwarded_event_id("default", t["event_id"]) for t in ticks
    }


def test_a_forwarded_tick_without_a_sender_id_is_rejected_and_others_keep_theirs(
    backend: Backend,
) -> None:
    item = "fwd-" + uuid.uuid4().hex[:8]
    bad = [{"id": item}, {"id": item, "event_id": "not-an-id"}]
    resp = backend.client.post("/ticks", json=bad, headers=FORWARDED)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == 0
    assert [r["error"] for r in resp.json()["rejected"]] == ["invalid_field"] * 2
    assert "event_id" in resp.json()["rejected"][0]["message"]
    # without the header, event_id is a parameter like any other, and ids are new each time
    plain = [{"id": item, "event_id": "whatever"}]
    ids = [backend.client.post("/ticks", json=plain).json()["ids"][0] for _ in range(2)]
    assert ids[0] != ids[1]
    assert [d["params"]["event_id"] for d in backend.find(item)] == ["whatever"] * 2


def _visit_summaries(backend: Backend, visit_id: str) -> list[dict[str, Any]]:
    """Every stored summary of a visit, read from the store itself."""
    backend.settle()
    if backend.es_url:
        resp = httpx.post(
            f"{backend.es_url}/{backend.index_prefix}-visits-*/_search",
            json={"query": {"ids": {"values": [visit_id]}}},
            timeout=30,
        )
        return [hit["_source"] for hit in resp.json()["hits"]["hits"]]
    with sqlite3.connect(backend.server.data_dir / "metronome.sqlite3") as conn:
        rows = conn.execute("SELECT doc FROM visits WHERE id = ?", (visit_id,)).fetchall()
    return [json.loads(row[0]) for row in rows]


def test_a_resent_tick_leaves_its_visit_summary_as_it_was(backend: Backend) -> None:
    """A sender that crashed resends ticks the receiver already stored, in a later batch:
    the visit they opened keeps its one summary and its counts, and each event its visit
    fields (the resend is no fourth event of the visit, nor a visit of its own)."""
    item = "fwd-" + uuid.uuid4().hex[:8]
    sender = {**FORWARDED, "User-Agent": f"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0 {item}"}
    start_ms = int(time.time() * 1000) - 120_000
    ticks = [
        {"id": item, "event_id": new_event_id(), "ts": format_timestamp(start_ms + n * 1000)}
        for n in range(3)
    ]
    resp = backend.client.post("/ticks", json=ticks, headers=sender)
    assert resp.status_code == 202 and resp.json()["accepted"] == 3, resp.text
    events = backend.find(item)
    assert len(events) == 3
    (visit_id,) = {d["visit"]["id"] for d in events}
    (summary,) = _visit_summaries(backend, visit_id)
    assert summary["visit"]["events"] == 3 and summary["visit"]["pageviews"] == 3
    assert summary["visit"]["items"] == [item] * 3

    # the whole batch again, then its middle tick alone: each a batch of its own
    for resend in (ticks, ticks[1:2]):
        resp = backend.client.post("/ticks", json=resend, headers=sender)
        assert resp.status_code == 202 and resp.json()["accepted"] == len(resend), resp.text
        backend.settle()

    assert backend.find(item) == events
    assert _visit_summaries(backend, visit_id) == [summary]

    # a resend beside a new tick of the visit: the new one counts, the resend does not
    later = {"id": item, "event_id": new_event_id(), "ts": format_timestamp(start_ms + 3000)}
    resp = backend.client.post("/ticks", json=[ticks[0], later], headers=sender)
    assert resp.status_code == 202 and resp.json()["accepted"] == 2, resp.text
    grown = backend.find(item)
    assert grown[:3] == events and grown[3]["visit"]["id"] == visit_id
    (summary,) = _visit_summaries(backend, visit_id)
    assert (summary["visit"]["events"], summary["visit"]["pageviews"]) == (4, 4)
    assert summary["visit"]["offsets_ms"] == [0, 1000, 2000, 3000]
