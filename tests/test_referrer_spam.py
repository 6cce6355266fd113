"""Referrer spam (METRONOME_REFERRER_BLOCKLIST) is flagged and left out of reports."""

from __future__ import annotations

from tests.support.backends import Backend


def test_referrer_spam_is_flagged_and_excluded_like_crawlers(backend: Backend, item: str) -> None:
    ticks = [
        {"id": item, "ts": "2017-04-02T10:00:00Z", "referrer": "https://semalt.com/x"},
        {"id": item, "ts": "2017-04-02T10:00:00Z", "referrer": "http://www.sub.darodar.com/"},
        {"id": item, "ts": "2017-04-02T10:00:00Z", "referrer": "https://notsemalt.com/a"},
    ]
    resp = backend.client.post("/ticks", json=ticks)
    assert resp.status_code == 202
    spam_id = resp.json()["ids"][0]
    assert backend.fetch(spam_id)["referrer"] == {
        "domain": "semalt.com",
        "page": "semalt.com/x",
        "spam": True,
    }
    window = {"from": "2017-04-02", "to": "2017-04-02"}
    assert backend.tock(item, **window)["referers"] == {"notsemalt.com/a": 1}
    assert backend.tock(item, bots="include", **window)["referers"] == {
        "notsemalt.com/a": 1,
        "semalt.com/x": 1,
        "sub.darodar.com": 1,
    }
    query = {
        "range": window,
        "dimensions": ["referrer.spam"],
        "filters": [["is", "item", [item]]],
        "order_by": [["referrer.spam", "asc"]],
    }
    counted = backend.client.post("/query", json=query).json()
    assert [(r["dimensions"], r["metrics"]) for r in counted["results"]] == [([None], [1])]
    everything = backend.client.post("/query", json={**query, "bots": "include"}).json()
    assert [(r["dimensions"], r["metrics"]) for r in everything["results"]] == [
        ([None], [1]),
        ([True], [2]),
    ]
