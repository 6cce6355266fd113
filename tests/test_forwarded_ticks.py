"""``POST /ticks`` from another Metronome (``X-Metronome-Forwarded: 1``): a tick carries
its sender's event id, and a batch sent twice (the sender crashed before it knew the
first one arrived) is stored once, on each store."""

from __future__ import annotations

import uuid

from metronome.events.document import FORWARDED_HEADER, forwarded_event_id, new_event_id
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
