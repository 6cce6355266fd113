"""The /query contract: every query shape, exact answers, the same on every backend.

One small dataset in June 2019 (no other test writes there): ticks from three visitors
(one a crawler) and an access log imported with URL rules. Each test states the answer a
person would compute by hand; every backend must give exactly that: the embedded store,
Elasticsearch, Elasticsearch through TLS with each credential kind (an API key, a user and
password, a client certificate), and OpenSearch.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.backends import Backend

SECURED_CONTRACT = True  # also through TLS with each credential kind (tests/conftest.py)
OPENSEARCH_CONTRACT = True  # and on OpenSearch


FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
# download attempts count whatever the answer (a rule counts 2xx and 304 unless it names
# statuses), so the failed kml download below is data-2's too
RULES = "/datasets/{id}/download.{format} -> download status=any; /docs/{id} -> view"
WEEK = {"from": "2019-06-03", "to": "2019-06-09"}

# (visitor address, user agent, ticks)
TICKS: list[tuple[str, str, list[dict[str, Any]]]] = [
    (
        "10.0.0.1",
        FIREFOX,
        [
            {
                "id": "doc-a",
                "ts": "2019-06-03T08:00:00Z",
                "plan": "pro",
                "load_ms": 100,
                "url": "https://example.org/docs/a",
                "referrer": "https://www.google.com/search",
            },
            {
                "id": "doc-a",
                "ts": "2019-06-03T09:00:00Z",
                "plan": "pro",
                "load_ms": 200,
                "url": "https://example.org/docs/a",
            },
            {
                "id": "doc-a",
                "ts": "2019-06-05T10:00:00Z",
                "plan": "pro",
                "load_ms": "300",
                "url": "https://example.org/docs/a",
            },
            {"id": "doc-a", "ts": "2019-05-28T10:00:00Z"},  # the week before
        ],
    ),
    (
        "10.0.0.2",
        CHROME,
        [
            {
                "id": "doc-a",
                "ts": "2019-06-05T11:00:00Z",
                "plan": "free",
                "load_ms": 400,
                "url": "https://example.org/docs/a?x=1",
            },
            {"id": "data-1", "event": "download", "format": "csv", "ts": "2019-06-06T12:00:00Z"},
            {"id": "data-1", "event": "download", "format": "CSV", "ts": "2019-06-06T13:00:00Z"},
            {
                "id": "data-2",
                "event": "download",
                "format": "kml",
                "ts": "2019-06-07T14:00:00Z",
                "load_ms": "slow",
            },
            {"id": "data-1", "event": "download", "format": "csv", "ts": "2019-05-29T10:00:00Z"},
        ],
    ),
    (
        "10.0.0.3",
        GOOGLEBOT,
        [
            {"id": "doc-a", "ts": "2019-06-05T12:00:00Z", "plan": "pro", "load_ms": 5000},
        ],
    ),
]
LOG_LINES = [
    f'10.0.0.4 - - [04/Jun/2019:10:00:00 +0000] "GET /datasets/data-1/download.csv HTTP/1.1"'
    f' 200 1000 "https://www.example.com/x" "{FIREFOX}"',
    f'10.0.0.4 - - [04/Jun/2019:11:00:00 +0000] "GET /docs/a HTTP/1.1" 200 500 "-" "{FIREFOX}"',
    f'10.0.0.5 - - [05/Jun/2019:12:00:00 +0000] "GET /datasets/data-2/download.kml HTTP/1.1"'
    f' 500 0 "-" "{CHROME}"',
    f'10.0.0.5 - - [05/Jun/2019:12:30:00 +0000] "GET /missing?q=1 HTTP/1.1" 404 150 "-" "{CHROME}"',
    f'10.0.0.6 - - [05/Jun/2019:13:00:00 +0000] "GET /docs/a HTTP/1.1" 200 700 "-" "{GOOGLEBOT}"',
]


@pytest.fixture(scope="module")
def data(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """The June 2019 dataset, loaded once per backend."""
    for address, agent, ticks in TICKS:
        resp = backend.client.post(
            "/ticks", json=ticks, headers={"User-Agent": agent, "X-Forwarded-For": address}
        )
        assert resp.status_code == 202 and resp.json()["accepted"] == len(ticks), resp.text
    log = tmp_path_factory.mktemp("query-logs") / "access.log"
    log.write_text("\n".join(LOG_LINES) + "\n")
    result = backend.server.run_cli("import", str(log), env={"METRONOME_URL_RULES": RULES})
    assert result.returncode == 0, result.stderr
    backend.settle()
    return backend


def ask(backend: Backend, **query: Any) -> dict[str, Any]:
    resp = backend.client.post("/query", json=query)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def rows(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(*r["dimensions"], *r["metrics"]) for r in answer["results"]]


def test_events_per_day_are_gap_filled_in_the_time_zone(data: Backend) -> None:
    answer = ask(data, source="ticks", range=WEEK, dimensions=["time:day"], tz="America/New_York")
    # New York is UTC-4 in June: 2019-06-03T08:00Z is the 3rd there, etc.
    assert rows(answer) == [
        ("2019-06-03", 2),
        ("2019-06-04", 0),
        ("2019-06-05", 2),
        ("2019-06-06", 2),
        ("2019-06-07", 1),
        ("2019-06-08", 0),
        ("2019-06-09", 0),
    ]
    assert answer["meta"]["dimensions"] == ["time:day"]
    assert answer["meta"]["metrics"] == ["events"]
    assert answer["query"]["range"] == {
        "from": "2019-06-03T00:00:00.000-04:00",
        "to": "2019-06-10T00:00:00.000-04:00",
    }
    assert answer["query"]["bots"] == "exclude"


def test_top_items_by_events_with_visitors_and_items(data: Backend) -> None:
    answer = ask(
        data,
        source="ticks",
        range=WEEK,
        metrics=["events", "visitors", "items"],
        dimensions=["item", "event"],
    )
    assert rows(answer) == [
        ("doc-a", "view", 4, 2, 1),
        ("data-1", "download", 2, 1, 1),
        ("data-2", "download", 1, 1, 1),
    ]
    assert answer["query"]["order_by"] == [
        ["events", "desc"],
        ["item.id", "asc"],
        ["event.action", "asc"],
    ]
    assert "visitors_precision" in answer["meta"]
    total = ask(data, source="ticks", range=WEEK, metrics=["events", "visitors", "items"])
    assert rows(total) == [(7, 2, 3)]


def test_numeric_parameter_statistics(data: Backend) -> None:
    answer = ask(
        data,
        source="ticks",
        range=WEEK,
        metrics=[
            "events",
            {"sum": "params.load_ms"},
            {"avg": "params.load_ms"},
            {"min": "params.load_ms"},
            {"max": "params.load_ms"},
            {"p50": "params.load_ms"},
        ],
        dimensions=["params.plan"],
        order_by=[["params.plan", "asc"]],
    )
    # "slow" is not a number and the crawler's 5000 is left out with the crawler
    assert rows(answer) == [
        (None, 3, 0, None, None, None, None),
        ("free", 1, 400.0, 400.0, 400.0, 400.0, 400.0),
        ("pro", 3, 600.0, 200.0, 100.0, 300.0, 200.0),
    ]
    assert answer["meta"]["metrics"][1:3] == ["sum:params.load_ms", "avg:params.load_ms"]


def test_access_log_metrics_status_bytes_and_error_rate(data: Backend) -> None:
    answer = ask(
        data,
        source="logs",
        range=WEEK,
        metrics=["events", "bytes", "error_rate"],
        dimensions=["status"],
        order_by=[["status", "asc"]],
    )
    assert rows(answer) == [(200, 2, 1500, 0.0), (404, 1, 150, 0.0), (500, 1, 0, 1.0)]
    overall = ask(data, source="logs", range=WEEK, metrics=["events", "error_rate"], bots="include")
    assert rows(overall) == [(5, 0.2)]
    by_browser = ask(
        data,
        source="logs",
        range=WEEK,
        metrics=["error_rate"],
        dimensions=["browser"],
        order_by=[["browser", "asc"]],
    )
    assert rows(by_browser) == [("Chrome", 0.5), ("Firefox", 0.0)]


def test_ticks_and_logs_together(data: Backend) -> None:
    answer = ask(
        data,
        source="all",
        range=WEEK,
        dimensions=["item", "format"],
        filters=[["is", "event", ["download"]]],
    )
    assert rows(answer) == [("data-1", "csv", 3), ("data-2", "kml", 2)]
    ticks_only = ask(
        data,
        source="ticks",
        range=WEEK,
        dimensions=["item", "format"],
        filters=[["is", "event", ["download"]]],
    )
    assert rows(ticks_only) == [("data-1", "csv", 2), ("data-2", "kml", 1)]


def test_filters_is_not_contains_matches_numbers_and_logic(data: Backend) -> None:
    def count(*filters: Any, source: str = "ticks") -> int:
        return ask(data, source=source, range=WEEK, filters=list(filters))["results"][0]["metrics"][
            0
        ]

    assert count(["is", "params.plan", ["pro", "free"]]) == 4
    assert count(["is_not", "params.plan", ["pro"]]) == 4  # free, and the three without
    assert count(["contains", "url.original", ["?x="]]) == 1
    assert count(["matches", "url.path", ["/docs/*"]]) == 4
    assert count(["matches", "url.path", ["/docs"]]) == 0  # anchored
    assert count(["matches", "url.path", ["/d?cs/?"]]) == 4
    assert count(["gt", "params.load_ms", 150]) == 3
    assert count(["lt", "params.load_ms", 150]) == 1
    assert count(["or", [["is", "format", ["kml"]], ["lt", "params.load_ms", 150]]]) == 2
    assert count(["and", [["is", "event", ["view"]], ["not", ["is", "params.plan", ["pro"]]]]]) == 1
    assert count(["is", "bot", [False]]) == 7
    assert count(["is", "country", ["US"]]) == 0  # 10.x addresses have no country
    assert count(["is", "method", ["GET"]], source="logs") == 4
    assert count(["gt", "bytes", 600], source="logs") == 1
    # user text is matched literally, never as query syntax
    assert count(["contains", "item", ["' OR '1'='1"]]) == 0
    assert count(["contains", "item", ["*"]]) == 0
    assert count(["matches", "item", ["doc-[a]"]]) == 0
    assert count(["is", "item", ['doc-a" OR "1"="1']]) == 0


def test_bots_are_excluded_unless_included(data: Backend) -> None:
    assert rows(ask(data, source="ticks", range=WEEK)) == [(7,)]
    assert rows(ask(data, source="ticks", range=WEEK, bots="include")) == [(8,)]
    crawlers = ask(
        data,
        source="all",
        range=WEEK,
        bots="include",
        filters=[["is", "bot", [True]]],
        dimensions=["browser"],
    )
    assert rows(crawlers) == [("Googlebot", 2)]


def test_several_dimensions_fill_each_series(data: Backend) -> None:
    answer = ask(
        data,
        source="ticks",
        range={"from": "2019-06-05", "to": "2019-06-07"},
        dimensions=["event", "time:day"],
    )
    assert rows(answer) == [
        ("download", "2019-06-05", 0),
        ("download", "2019-06-06", 2),
        ("download", "2019-06-07", 1),
        ("view", "2019-06-05", 2),
        ("view", "2019-06-06", 0),
        ("view", "2019-06-07", 0),
    ]
    months = ask(
        data,
        source="ticks",
        range={"from": "2019-05-01", "to": "2019-06-30"},
        dimensions=["time:month"],
        metrics=["events", "visitors"],
    )
    assert rows(months) == [("2019-05", 2, 2), ("2019-06", 7, 2)]
    weeks = ask(
        data,
        source="ticks",
        range={"from": "2019-05-27", "to": "2019-06-09"},
        dimensions=["time:week"],
    )
    assert rows(weeks) == [("2019-05-27", 2), ("2019-06-03", 7)]


def test_compare_with_the_previous_period(data: Backend) -> None:
    answer = ask(
        data,
        source="ticks",
        range=WEEK,
        dimensions=["event"],
        metrics=["events", "items"],
        compare="previous_period",
    )
    assert answer["meta"]["previous_range"] == {
        "from": "2019-05-27T00:00:00.000+00:00",
        "to": "2019-06-03T00:00:00.000+00:00",
    }
    results = {r["dimensions"][0]: r for r in answer["results"]}
    assert results["view"]["metrics"] == [4, 1]
    assert results["view"]["previous"] == [1, 1]
    assert results["view"]["change"] == [3.0, 0.0]
    assert results["download"]["previous"] == [1, 1]
    assert results["download"]["change"] == [2.0, 1.0]
    daily = ask(
        data,
        source="ticks",
        range={"from": "2019-06-03", "to": "2019-06-04"},
        dimensions=["time:day"],
        compare="previous_period",
    )
    # the previous period of these two days is June 1-2: nothing then
    assert [
        (r["dimensions"][0], r["metrics"], r["previous"], r["change"]) for r in daily["results"]
    ] == [("2019-06-03", [2], [0], [None]), ("2019-06-04", [0], [0], [None])]


def test_pages_through_groups_in_dimension_order_with_a_cursor(data: Backend) -> None:
    query = {
        "source": "all",
        "range": WEEK,
        "dimensions": ["item"],
        "order_by": [["item", "asc"]],
        "limit": 1,
        "bots": "include",
    }
    seen = []
    after = None
    for _ in range(10):
        answer = ask(data, **query, after=after)
        seen += rows(answer)
        after = answer["meta"]["next"]
        if after is None:
            break
    # the log's /docs/a is item "a" by the URL rule; /missing matches no rule: no item
    assert seen == [(None, 1), ("a", 2), ("data-1", 3), ("data-2", 2), ("doc-a", 5)]
    # ordered by a metric: the store ranks the groups, pages follow on
    by_events = {**query, "order_by": [["events", "desc"]], "limit": 3}
    first = ask(data, **by_events)
    assert rows(first) == [("doc-a", 5), ("data-1", 3), ("a", 2)]  # ties by item
    second = ask(data, **by_events, after=first["meta"]["next"])
    assert rows(second) == [("data-2", 2), (None, 1)] and second["meta"]["next"] is None
    fewest = ask(data, **{**by_events, "order_by": [["events", "asc"]], "limit": 10})
    assert rows(fewest) == [(None, 1), ("a", 2), ("data-2", 2), ("data-1", 3), ("doc-a", 5)]
    # ranked by distinct visitors (the crawler included here), ties by item
    by_visitors = ask(
        data,
        **{
            **query,
            "metrics": ["events", "visitors"],
            "order_by": [["visitors", "desc"]],
            "limit": 10,
        },
    )
    assert rows(by_visitors) == [
        ("doc-a", 5, 3),
        ("a", 2, 2),
        ("data-1", 3, 2),
        ("data-2", 2, 2),
        (None, 1, 1),
    ]


def test_cursor_of_another_query_is_refused(data: Backend) -> None:
    answer = ask(
        data, source="all", range=WEEK, dimensions=["item"], order_by=[["item", "asc"]], limit=1
    )
    resp = data.client.post(
        "/query",
        json={
            "source": "ticks",
            "range": WEEK,
            "dimensions": ["item"],
            "limit": 1,
            "order_by": [["item", "asc"]],
            "after": answer["meta"]["next"],
        },
    )
    assert resp.status_code == 400 and resp.json()["details"]["field"] == "query.after"
    assert resp.json()["error"] == "invalid_cursor"
    garbage = data.client.post("/query", json={"after": "not-a-cursor"})
    assert garbage.status_code == 400 and garbage.json()["error"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ({"metrik": ["events"]}, "query", "'metrik' was unexpected"),
        ({"source": "everything"}, "query.source", "'everything' is not one of"),
        ({"range": "fortnight"}, "query.range", "give a preset"),
        ({"range": {"from": "2019-06-09", "to": "2019-06-01"}}, "query.range", "before"),
        ({"range": {"from": "yesterday-ish"}}, "query.range", "must be a date"),
        ({"tz": "Mars/Olympus"}, "query.tz", "IANA"),
        ({"metrics": ["hits"]}, "query.metrics[0]", "a metric is one of"),
        ({"metrics": [{"avg": "item"}]}, "query.metrics[0]", "needs a numeric field"),
        ({"metrics": [{"p100": "bytes"}]}, "query.metrics[0]", "a metric is one of"),
        ({"dimensions": ["time:year"]}, "query.dimensions[0]", "time:hour"),
        ({"dimensions": ["url.original", "url.original"]}, "query.dimensions[1]", "repeats"),
        ({"dimensions": ["@timestamp"]}, "query.dimensions[0]", "time:day"),
        ({"dimensions": ["item.id') OR 1=1 --"]}, "query.dimensions[0]", "not a field"),
        ({"dimensions": ["params.a.b"]}, "query.dimensions[0]", "not a field"),
        ({"source": "logs", "dimensions": ["params.plan"]}, "query.dimensions[0]", "ticks only"),
        ({"filters": [["is", "nope", ["x"]]]}, "query.filters[0][1]", "not a field"),
        ({"filters": [["is", "bot", ["yes"]]]}, "query.filters[0][2]", "true or false"),
        ({"filters": [["gt", "item", 3]]}, "query.filters[0][1]", "numeric field"),
        ({"filters": [["contains", "status", ["5"]]]}, "query.filters[0][1]", "keyword field"),
        ({"filters": [["is", "item", []]]}, "query.filters[0]", "a filter is"),
        ({"filters": [["or", [["is", "item", [{}]]]]]}, "query.filters[0]", "a filter is"),
        ({"order_by": [["visitors", "desc"]]}, "query.order_by[0]", "not a dimension or metric"),
        ({"limit": 0}, "query.limit", "minimum"),
        (
            {"dimensions": ["time:hour"], "range": {"from": "2000-01-01", "to": "2019-01-01"}},
            "query.dimensions",
            "buckets",
        ),
    ],
)
def test_bad_queries_get_a_400_naming_the_part(
    data: Backend, query: dict[str, Any], field: str, says: str
) -> None:
    resp = data.client.post("/query", json=query)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "invalid_query"
    assert body["details"]["field"] == field, body
    assert says in body["message"], body


def test_non_json_queries_are_refused(data: Backend) -> None:
    assert (
        data.client.post(
            "/query", content=b"{", headers={"Content-Type": "application/json"}
        ).json()["error"]
        == "invalid_json"
    )
    assert (
        data.client.post(
            "/query", content=b"[]", headers={"Content-Type": "application/json"}
        ).json()["error"]
        == "invalid_query"
    )
    assert (
        data.client.post("/query", content=b"{}", headers={"Content-Type": "text/csv"}).status_code
        == 415
    )


def report(backend: Backend, name: str, **params: Any) -> dict[str, Any]:
    resp = backend.client.get(f"/reports/{name}", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_named_reports_answer_common_questions(data: Backend) -> None:
    listing = data.client.get("/reports").json()["reports"]
    assert [r["name"] for r in listing] == [
        "top-items",
        "top-referrers",
        "downloads-by-format",
        "status-codes",
        "slowest-pages",
        "api-calls",  # issue 23: API calls tracked by the middleware
        "active-instances",
        "fleet-total",
        "feature-adoption",
        "version-spread",
        "tock",
        "storage-growth",
        "extractions",
        "extraction-runtime",
        "downloads-per-resource",
        "concurrency",
        "uptime",
        "response-times",
        "certificate-expiry",
        "errors",  # issue 25: error reports
        "error-groups",
        "entry-pages",  # journeys (issue 25)
        "exit-pages",
        "transitions",
        "flows",
    ]
    week = {"from": WEEK["from"], "to": WEEK["to"]}
    top = report(data, "top-items", **week, source="ticks")
    assert top["report"] == "top-items"
    assert rows(top) == [("doc-a", 4, 2), ("data-1", 2, 1), ("data-2", 1, 1)]
    assert rows(report(data, "top-items", **week, event="download", limit="1")) == [
        ("data-1", 3, 2)
    ]
    assert rows(report(data, "top-referrers", **week)) == [("google.com/search", 1, 1)]
    formats = report(data, "downloads-by-format", **week, interval="week")
    assert rows(formats) == [("2019-06-03", "csv", 3), ("2019-06-03", "kml", 2)]
    statuses = report(data, "status-codes", **{"from": "2019-06-04", "to": "2019-06-05"})
    assert rows(statuses) == [
        ("2019-06-04", 200, 2, 1500),
        ("2019-06-04", 404, 0, 0),
        ("2019-06-04", 500, 0, 0),
        ("2019-06-05", 200, 0, 0),
        ("2019-06-05", 404, 1, 150),
        ("2019-06-05", 500, 1, 0),
    ]
    assert rows(report(data, "slowest-pages", **week)) == []  # combined logs have no times
    tock = report(data, "tock", id="doc-a", **week)
    assert tock == data.client.get("/tock/doc-a", params=week).json()
    assert tock["views"]["2019-06-05"] == 2  # the crawler is left out; the log's /docs/a is "a"


def test_named_reports_refuse_what_they_do_not_know(data: Backend) -> None:
    missing = data.client.get("/reports/top-everything")
    assert missing.status_code == 404 and "top-items" in missing.json()["message"]
    unknown = data.client.get("/reports/top-items", params={"colour": "red"})
    assert unknown.status_code == 400 and unknown.json()["details"]["parameter"] == "colour"
    assert data.client.get("/reports/status-codes", params={"interval": "year"}).status_code == 400
    assert data.client.get("/reports/tock").json()["details"]["parameter"] == "id"
