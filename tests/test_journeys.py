"""Visits, entry and exit pages and transitions: exact answers on both stores.

A hand-built clickstream on 2021-03-10 (no other test writes there), sent over real HTTP
and imported with ``metronome import``:

- visitor A (ticks, one batch, its events out of order): a visit from 04:50 to 05:10 UTC
  -- across midnight in New York -- entering from Google, then a 31-minute gap and a
  second visit;
- visitor B: a single-page visit, referred by news.example.net;
- a crawler: no visits;
- an access log whose lines interleave visitors C, D and E (and a crawler), imported twice.

Visits by hand (duration in ms, page views), which every answer below is worked out from:

    A1  /home -> /pricing -> /signup   1,200,000  3  google.com
    A2  /home -> /docs                   240,000  2  direct
    B   /pricing                               0  1  news.example.net
    C   /home -> /pricing -> /signup     300,000  3  duck.example
    D   /home -> /pricing                180,000  2  direct
    E   /docs                                  0  1  direct
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metronome.events.document import Document
from metronome.pipeline.visits import VisitBook, VisitState
from tests.support.backends import Backend

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
DAY = {"from": "2021-03-10", "to": "2021-03-10"}
SITE = "https://example.org"


def _view(page: str, at: str, referrer: str | None = None) -> dict[str, Any]:
    tick: dict[str, Any] = {"id": page, "ts": f"2021-03-10T{at}:00Z", "url": SITE + page}
    if referrer:
        tick["referrer"] = referrer
    return tick


# (address, user agent, ticks in the order they are sent)
TICKS = [
    (
        "10.1.0.1",
        FIREFOX,
        [
            _view("/pricing", "05:00"),  # out of order: sent before the visit's first view
            _view("/docs", "05:45"),
            _view("/home", "04:50", "https://www.google.com/search?q=x"),
            _view("/signup", "05:10"),
            _view("/home", "05:41"),  # 31 minutes after /signup: a new visit
        ],
    ),
    ("10.1.0.2", CHROME, [_view("/pricing", "06:00", "https://news.example.net/a")]),
    ("10.1.0.3", GOOGLEBOT, [_view("/home", "06:00"), _view("/pricing", "06:01")]),
]


def _line(address: str, at: str, path: str, referrer: str = "-", agent: str = FIREFOX) -> str:
    return (
        f'{address} - - [10/Mar/2021:{at}:00 +0000] "GET {path} HTTP/1.1" 200 100'
        f' "{referrer}" "{agent}"'
    )


LOG_LINES = [
    _line("10.1.0.4", "07:00", "/home", "https://duck.example/q"),
    _line("10.1.0.5", "07:01", "/home"),
    _line("10.1.0.4", "07:02", "/pricing"),
    _line("10.1.0.6", "07:03", "/docs"),
    _line("10.1.0.7", "07:03", "/home", agent=GOOGLEBOT),
    _line("10.1.0.5", "07:04", "/pricing"),
    _line("10.1.0.4", "07:05", "/signup"),
]


@pytest.fixture(scope="module")
def data(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    for address, agent, ticks in TICKS:
        resp = backend.client.post(
            "/ticks", json=ticks, headers={"User-Agent": agent, "X-Forwarded-For": address}
        )
        assert resp.status_code == 202, resp.text
    log = tmp_path_factory.mktemp("journey-logs") / "access.log"
    log.write_text("\n".join(LOG_LINES) + "\n")
    for _ in range(2):  # imported twice: the same visits, stored once
        result = backend.server.run_cli("import", str(log))
        assert result.returncode == 0, result.stderr
    backend.settle()
    return backend


def ask(backend: Backend, **query: Any) -> dict[str, Any]:
    resp = backend.client.post("/query", json={"source": "visits", "range": DAY, **query})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def rows(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(*r["dimensions"], *r["metrics"]) for r in answer["results"]]


def test_visit_metrics_over_the_day(data: Backend) -> None:
    answer = ask(
        data,
        metrics=["visits", "bounce_rate", "visit_duration", "views_per_visit", "time_on_page"],
    )
    ((visits, bounce, duration, views, on_page),) = rows(answer)
    assert visits == 6
    assert bounce == pytest.approx(2 / 6)
    assert duration == pytest.approx(1_920_000 / 6)
    assert views == pytest.approx(2.0)
    # per visit of more than one page: its duration over its pages but the last
    assert on_page == pytest.approx((600_000 + 240_000 + 150_000 + 180_000) / 4)


def test_visit_duration_median_with_a_filter(data: Backend) -> None:
    answer = ask(
        data,
        metrics=["visits", {"p50": "visit_duration"}],
        filters=[["is", "visit.source", ["direct"]]],
    )
    assert rows(answer) == [(3, 180_000.0)]


def test_a_visit_across_midnight_counts_on_the_day_it_began(data: Backend) -> None:
    answer = ask(
        data,
        range={"from": "2021-03-09", "to": "2021-03-10"},
        tz="America/New_York",
        dimensions=["time:day"],
        metrics=["visits"],
    )
    # A1 began at 23:50 on the 9th in New York; its last view was at 00:10 on the 10th
    assert rows(answer) == [("2021-03-09", 1), ("2021-03-10", 5)]


def test_entry_and_exit_pages_and_sources(data: Backend) -> None:
    entries = ask(data, metrics=["visits", "bounce_rate"], dimensions=["entry_page"])
    assert rows(entries) == [("/home", 4, 0.0), ("/docs", 1, 1.0), ("/pricing", 1, 1.0)]
    exits = ask(data, metrics=["visits"], dimensions=["exit_page"])
    assert rows(exits) == [("/docs", 2), ("/pricing", 2), ("/signup", 2)]
    sources = ask(data, metrics=["visits"], dimensions=["visit.source"])
    assert rows(sources) == [
        ("direct", 3),
        ("duck.example", 1),
        ("google.com", 1),
        ("news.example.net", 1),
    ]


def test_named_entry_and_exit_page_reports(data: Backend) -> None:
    resp = data.client.get(
        "/reports/entry-pages", params={"from": "2021-03-10", "to": "2021-03-10"}
    )
    assert resp.status_code == 200, resp.text
    assert [r["dimensions"][0] for r in resp.json()["results"]] == ["/home", "/docs", "/pricing"]
    assert resp.json()["results"][0]["metrics"][:2] == [4, 0.0]
    resp = data.client.get("/reports/exit-pages", params={"from": "2021-03-10", "to": "2021-03-10"})
    assert resp.status_code == 200, resp.text
    assert [r["metrics"][0] for r in resp.json()["results"]] == [2, 2, 2]


def test_transitions_of_a_page(data: Backend) -> None:
    resp = data.client.get(
        "/reports/transitions",
        params={"item": "/pricing", "from": "2021-03-10", "to": "2021-03-10"},
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["before"] == {
        "total": 4,
        "rows": [
            {"page": "/home", "count": 3, "share": 0.75},
            {"page": "news.example.net", "count": 1, "share": 0.25},
        ],
    }
    assert answer["after"] == {
        "total": 4,
        "rows": [
            {"page": "/signup", "count": 2, "share": 0.5},
            {"page": "exit", "count": 2, "share": 0.5},
        ],
    }


def test_events_carry_their_visit_position_gap_and_previous_page(data: Backend) -> None:
    by_time = {
        d["@timestamp"][11:16]: d["visit"]
        for d in data.find("/pricing") + data.find("/home")
        if d["@timestamp"].startswith("2021-03-10T0") and not d["bot"]
    }
    assert by_time["04:50"]["seq"] == 1 and "prev" not in by_time["04:50"]
    assert by_time["05:00"] == {
        "id": by_time["04:50"]["id"],
        "seq": 2,
        "gap_ms": 600_000,
        "prev": "/home",
    }
    assert by_time["05:41"]["seq"] == 1 and by_time["05:41"]["id"] != by_time["04:50"]["id"]
    crawled = [d for d in data.find("/home") if d["bot"]]
    assert crawled and not any("visit" in d for d in crawled)


def test_funnel_within_a_visit(data: Backend) -> None:
    steps = [{"page": "/home"}, {"page": "/pricing"}, {"page": "/signup"}]
    answer = ask(data, funnel={"steps": steps})
    assert answer["funnel"]["unit"] == "visits"
    assert [
        (s["reached"], s["from_previous"], s["from_start"], s["median_ms_from_previous"])
        for s in answer["funnel"]["steps"]
    ] == [(4, 1.0, 1.0, None), (3, 0.75, 0.75, 180_000), (2, 0.6667, 0.5, 390_000)]
    # A2 went from /home to /docs instead; D left after /pricing
    assert [s["dropped_to"] for s in answer["funnel"]["steps"]] == [
        [],
        [{"page": "/docs", "count": 1}],
        [{"page": "exit", "count": 1}],
    ]


def test_funnel_next_step_and_window_for_a_visitor(data: Backend) -> None:
    nxt = ask(data, funnel={"steps": [{"page": "/home"}, {"page": "/signup", "next": True}]})
    second = nxt["funnel"]["steps"][1]
    assert second["reached"] == 0
    assert second["dropped_to"] == [{"page": "/pricing", "count": 3}, {"page": "/docs", "count": 1}]
    steps = [{"page": "/signup"}, {"page": "/docs"}]
    in_visit = ask(data, funnel={"steps": steps})
    assert [s["reached"] for s in in_visit["funnel"]["steps"]] == [2, 0]
    # A's /docs came in the next visit, 35 minutes later: within a day for the visitor
    in_day = ask(data, funnel={"steps": steps, "within": "1d"})
    assert in_day["funnel"]["unit"] == "visitors"
    assert [(s["reached"], s["median_ms_from_previous"]) for s in in_day["funnel"]["steps"]] == [
        (2, None),
        (1, 2_100_000),
    ]


def test_flows_from_a_page(data: Backend) -> None:
    resp = data.client.get(
        "/reports/flows",
        params={"item": "/home", "depth": "2", "from": "2021-03-10", "to": "2021-03-10"},
    )
    assert resp.status_code == 200, resp.text
    leaf: list[Any] = []
    assert resp.json()["flow"] == {
        "page": "/home",
        "visits": 4,
        "next": [
            {
                "page": "/pricing",
                "visits": 3,
                "next": [
                    {"page": "/signup", "visits": 2, "next": leaf},
                    {"page": "exit", "visits": 1, "next": leaf},
                ],
            },
            {"page": "/docs", "visits": 1, "next": [{"page": "exit", "visits": 1, "next": leaf}]},
        ],
    }


def test_visit_metrics_need_the_visits_source(data: Backend) -> None:
    resp = data.client.post("/query", json={"source": "ticks", "metrics": ["bounce_rate"]})
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_query"
    assert '"source": "visits"' in resp.json()["message"]


# --- the visit book itself (no store): sites, restarts ---------------------------------


def _doc(event_id: str, minute: int, site: str, page: str) -> Document:
    source = {
        "@timestamp": "x",
        "event": {"action": "view"},
        "item": {"id": page},
        "visitor": {"id": "v1"},
        "site": {"id": site},
    }
    return Document(event_id, 1_615_352_400_000 + minute * 60_000, "ticks", source)


def test_a_visitor_on_two_sites_has_a_visit_on_each(tmp_path: Path) -> None:
    book = VisitBook(1800, VisitState(tmp_path / "visits.sqlite3", 100))
    assigned = book.assign(
        [_doc("e1", 0, "shop", "/a"), _doc("e2", 1, "blog", "/x"), _doc("e3", 2, "shop", "/b")]
    )
    summaries = [d for d in assigned.documents if d.dataset == "visits"]
    assert sorted((s.source["site"]["id"], s.source["visit"]["items"]) for s in summaries) == [
        ("blog", ["/x"]),
        ("shop", ["/a", "/b"]),
    ]


def test_events_of_one_millisecond_keep_the_order_they_were_sent_in(tmp_path: Path) -> None:
    # a batch of ticks sent without times (the README's example journey) shares one
    # millisecond; event ids are no order: here they sort backwards
    book = VisitBook(1800, VisitState(tmp_path / "visits.sqlite3", 100))
    batch = [_doc("e3", 0, "shop", "/home"), _doc("e2", 0, "shop", "/pricing")]
    assigned = book.assign([*batch, _doc("e1", 0, "shop", "/signup")])
    (summary,) = [d for d in assigned.documents if d.dataset == "visits"]
    assert summary.source["visit"]["items"] == ["/home", "/pricing", "/signup"]
    assert (summary.source["visit"]["entry"], summary.source["visit"]["exit"]) == (
        "/home",
        "/signup",
    )
    assert [d.source["visit"].get("prev") for d in assigned.documents[:3]] == [
        None,
        "/home",
        "/pricing",
    ]


def test_a_restart_continues_open_visits_and_a_replay_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "visits.sqlite3"
    first = VisitBook(1800, VisitState(path, 100))
    batch = [_doc("e1", 0, "shop", "/a")]
    stored = first.assign(batch)
    first.commit(stored, ("segment", 10))
    first.state.close()
    again = VisitBook(1800, VisitState(path, 100))  # a new process on the same spool
    assert again.state.marker() == ("segment", 10)
    later = again.assign([_doc("e2", 10, "shop", "/b")])
    (summary,) = [d for d in later.documents if d.dataset == "visits"]
    assert summary.id == stored.documents[-1].id
    assert summary.source["visit"]["items"] == ["/a", "/b"]
    assert summary.source["visit"]["duration_ms"] == 600_000
    # not committed (the store write failed): the same batch is assigned the same way
    assert again.assign([_doc("e2", 10, "shop", "/b")]).documents == later.documents
