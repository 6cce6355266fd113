"""``metronome forget``: matching events are deleted for good on both stores, others stay."""

from __future__ import annotations

import json

from tests.support.backends import Backend

# issue 18: these run on OpenSearch as a third store too (see tests/conftest.py)
OPENSEARCH_CONTRACT = True

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def _count(backend: Backend, *filters: object) -> int:
    backend.settle()
    resp = backend.client.post(
        "/query",
        json={
            "range": {"from": "2018-01-01", "to": "2018-12-31"},
            "bots": "include",
            "filters": list(filters),
        },
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["results"][0]["metrics"][0])


def test_forget_deletes_matching_events_and_nothing_else(backend: Backend, item: str) -> None:
    other = item + "-kept"
    ticks = [{"id": item, "ts": f"2018-03-0{d}T10:00:00Z", "user": "ada"} for d in (1, 2, 3)] + [
        {"id": item, "ts": "2018-03-04T10:00:00Z", "user": "bob"},
        {"id": other, "ts": "2018-03-01T10:00:00Z", "user": "ada"},
    ]
    assert backend.client.post("/ticks", json=ticks).json()["accepted"] == 5
    crawler = backend.client.post(
        "/tick",
        json={"id": item, "ts": "2018-03-05T10:00:00Z", "user": "ada"},
        headers={"User-Agent": GOOGLEBOT},
    )
    assert crawler.status_code == 202
    backend.settle()
    where = json.dumps([["is", "item", [item]], ["is", "params.user", ["ada"]]])

    dry = backend.server.run_cli("forget", "--where", where, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "4 events match; nothing deleted" in dry.stdout  # crawlers count too
    assert _count(backend, ["is", "item", [item]]) == 5

    done = backend.server.run_cli("forget", "--where", where, "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 4 events" in done.stdout
    assert _count(backend, ["is", "item", [item]]) == 1  # bob's
    assert _count(backend, ["is", "item", [other]]) == 1
    again = backend.server.run_cli("forget", "--where", where, "--yes")
    assert "deleted 0 events" in again.stdout

    other_site = backend.server.run_cli(
        "forget", "--where", json.dumps([["is", "item", [item]]]), "--site", "elsewhere", "--yes"
    )
    assert other_site.returncode == 1  # no such site: refused, rather than matching nothing
    assert "there is no site 'elsewhere' (named by --site)" in other_site.stderr
    assert _count(backend, ["is", "item", [item]]) == 1

    ranged = backend.server.run_cli(
        "forget",
        "--where",
        json.dumps([["is", "item", [item]]]),
        "--from",
        "2018-03-05",
        "--to",
        "2018-03-31",
        "--yes",
    )
    assert "deleted 0 events" in ranged.stdout  # bob's tick is on the 4th


def test_forget_refuses_filters_it_cannot_read(backend: Backend) -> None:
    for where, says in [
        ("not json", "not JSON"),
        ("[]", "non-empty"),
        ('[["is", "nope", ["x"]]]', "'nope' is not a field"),
    ]:
        result = backend.server.run_cli("forget", "--where", where, "--yes")
        assert result.returncode == 2, result.stdout
        assert says in result.stderr, result.stderr


def _visits(backend: Backend, day: str) -> int:
    backend.settle()
    resp = backend.client.post(
        "/query",
        json={"source": "visits", "range": {"from": day, "to": day}, "metrics": ["visits"]},
    )
    assert resp.status_code == 200, resp.text
    return int(resp.json()["results"][0]["metrics"][0] or 0)


def test_a_forgotten_visitor_leaves_no_visit_summary(backend: Backend, item: str) -> None:
    """Visit summaries hold the visitor id and pages: they go with the visitor's events
    (2018-05-02: no other test writes there)."""
    day = "2018-05-02"
    for address, times in (("10.3.0.1", ("10:00", "10:05", "12:00")), ("10.3.0.2", ("10:00",))):
        ticks = [{"id": item, "ts": f"{day}T{at}:00Z"} for at in times]
        resp = backend.client.post("/ticks", json=ticks, headers={"X-Forwarded-For": address})
        assert resp.status_code == 202, resp.text
    assert _visits(backend, day) == 3  # the first visitor's two visits, and one
    visitors = {d["visitor"]["id"] for d in backend.find(item) if d["@timestamp"] > f"{day}T11"}
    (forgotten,) = visitors
    where = json.dumps([["is", "visitor", [forgotten]]])

    dry = backend.server.run_cli("forget", "--where", where, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 events match; nothing deleted" in dry.stdout
    assert "2 visits hold them; their summaries would go too" in dry.stdout
    assert _visits(backend, day) == 3

    done = backend.server.run_cli("forget", "--where", where, "--yes")
    assert done.returncode == 0, done.stderr
    assert "deleted 3 events and 2 visit summaries" in done.stdout
    assert _visits(backend, day) == 1
    assert len(backend.find(item)) == 1
