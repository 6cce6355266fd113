"""Whatever a client asks, a running server answers quickly with a 2xx or a documented 400.

Hypothesis generates requests at the edges of every limit and type -- filters nested up
to and past the limits, text values up to and past Lucene's longest term, moments across
the whole supported range and beyond in every kind of time zone (east, west, half-hour,
DST, +14, -11), tampered cursors, huge, tiny and not-quite numbers -- and sends them to
``POST /query``, ``GET /reports/{name}`` and ``GET /tock`` on each store (the embedded
store, Elasticsearch and OpenSearch). Each answer must come within :data:`TIME_BOUND_S`,
be a 2xx or a 400 of the one error shape (or a 413 for a body over the limit), and leave
no traceback or error line in the server's log. Runs are derandomized and bounded: the
same requests every run."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.errors import BadRequest, all_error_classes
from metronome.reports.timebuckets import EARLIEST_MS, LATEST_MS
from tests.conftest import Backend
from tests.support.fuzz import TIME_ZONES, fuzz

TIME_BOUND_S = 2.0
BAD_REQUEST_CODES = {cls.code for cls in all_error_classes() if issubclass(cls, BadRequest)}
LOG_ERROR = re.compile(r"Traceback|\[ERROR\]|\[error\s*\]|\"level\": ?\"error\"")
ZONES = [
    *TIME_ZONES,
    "Mars/Olympus",
    "Europe",  # a directory of the zone database
    "zone.tab",  # a file of it that is not a zone
    "x" * 100,
    "",
]
DAY = "2013-03-14"  # no other test writes on this day
DAY_MS = 1_363_219_200_000
FUZZ = fuzz(60)
OPENSEARCH_CONTRACT = True  # on OpenSearch too (tests/conftest.py): the query suite's third store

# --- what to send -----------------------------------------------------------------------

MOMENT_MS = (
    st.sampled_from(
        [EARLIEST_MS, LATEST_MS, EARLIEST_MS - 1, LATEST_MS + 1, -62_135_596_800_000, 0, DAY_MS]
    )
    | st.integers(EARLIEST_MS - 10**11, LATEST_MS + 10**11)
    | st.integers(-(2**80), 2**80)
)
MOMENT_TEXT = (
    MOMENT_MS.map(str)
    | st.sampled_from(
        [
            "0001-01-01",
            "0002-01-01",
            "9998-12-31",
            "9999-12-31",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-11:00",
            "2013-03-14T00:00:00+05:30",
            "2013-03-31T02:30:00",  # not a local time in Berlin
            "2013-02-30",
            "١٢٣",
            "1e3",
            "",
            " ",
            "9" * 300,
        ]
    )
    | st.dates().map(str)
    | st.datetimes().map(lambda d: d.isoformat())
)
NUMBERS = st.sampled_from(
    [0, -1, 1, 2**53, 2**64, -(2**63), 1e308, -1e308, 5e-324, 0.5, 1.0, -0.0]
    + [float("nan"), float("inf"), float("-inf")]  # written as NaN, Infinity: not JSON
)
LEAF = st.sampled_from(
    [
        ["is", "item", ["doc-1"]],
        ["is_not", "event", ["view"]],
        ["gt", "bytes", 10],
        ["lt", "status", 1e308],
        ["matches", "referrer", ["*"]],
        ["is", "item", ["😀" * 4096]],
        ["is", "item", ["😀" * 4097]],
        ["is", "item", ["😀" * 8192]],  # beyond Lucene's longest term
        ["contains", "url.path", ["é" * 4096]],
        ["is", "status", [5e-324, 0.5, 2**53]],
        ["is", "params.x", [1e308, True, "", "😀"]],
        ["gt", "params.x", -1e300],
        ["is", "client.ip", ["not-an-ip", "::1"]],
        ["is", "item", []],
        ["gt", "item", 3],
        ["not"],
        "x",
        [],
    ]
)
FILTERS: st.SearchStrategy[Any] = st.recursive(
    LEAF,
    lambda inner: (
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=1, max_size=3)).map(list)
        | st.tuples(st.just("not"), inner).map(list)
    ),
    max_leaves=30,
)


def deep(depth: int) -> list[Any]:
    node: list[Any] = ["is", "item", ["doc-1"]]
    for _ in range(depth - 1):
        node = ["not", node]
    return node


QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "range": st.sampled_from(["7d", "999d", "1000d", "24h", "year", "0d"])
        | st.fixed_dictionaries(
            {"from": MOMENT_TEXT | MOMENT_MS | NUMBERS},
            optional={"to": MOMENT_TEXT | MOMENT_MS | NUMBERS},
        ),
        "tz": st.sampled_from(ZONES),
        "dimensions": st.sampled_from(
            [[], ["time:hour"], ["time:day"], ["time:week"], ["time:month"], ["item"]]
        ),
        "filters": st.lists(FILTERS, max_size=3)
        | st.integers(1, 30).map(lambda d: [deep(d)])
        | st.just([["and", [["is", "item", ["x"]]] * 50]] * 5),
        "compare": st.sampled_from([None, "previous_period"]),
        "limit": NUMBERS | st.integers(-5, 20_000),
        "after": st.none() | st.text(max_size=40),
        "source": st.sampled_from(["ticks", "logs", "all"]),
    },
)
PARAM_VALUES = MOMENT_TEXT | st.text(max_size=12) | NUMBERS.map(str)


def report_params(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    special = {
        "tz": st.sampled_from(ZONES),
        "interval": st.sampled_from(["hour", "day", "week", "month", "year"]),
        "range": st.sampled_from(["7d", "999d", "1000d", "24h", "today", "fortnight", "0h"]),
        "limit": st.sampled_from(["1", "2", "10000", "10001", "0", "-1", "²", "1.5", "9" * 30]),
        "top": st.sampled_from(["1", "1000", "1001", "0", "²", "9" * 30]),
        "bots": st.sampled_from(["include", "exclude", "maybe"]),
    }
    return st.fixed_dictionaries(
        {}, optional={name: special.get(name, PARAM_VALUES) for name in names}
    )


# --- how to send it ---------------------------------------------------------------------


class Watched:
    """Requests to one backend, each checked for time, status, shape and the server log."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.log_offset = backend.server.log_path.stat().st_size

    def check(self, resp: httpx.Response, elapsed_s: float) -> httpx.Response:
        request = f"{resp.request.method} {resp.request.url} {resp.request.content[:300]!r}"
        assert elapsed_s < TIME_BOUND_S, f"{elapsed_s:.1f} s: {request}"
        documented = (200, 400, 413) if resp.request.method == "POST" else (200, 400)
        assert resp.status_code in documented, f"{request}\n{resp.status_code} {resp.text[:500]}"
        body = resp.json()
        if resp.status_code == 413:
            assert body["error"] == "payload_too_large", body
        elif resp.status_code == 400:
            assert set(body) <= {"error", "message", "details"}, body
            assert body["error"] in BAD_REQUEST_CODES, body
            assert isinstance(body["message"], str) and body["message"], body
            assert isinstance(body.get("details", {}), dict), body
        with self.backend.server.log_path.open("rb") as log:
            log.seek(self.log_offset)
            new = log.read().decode(errors="replace")
        self.log_offset += len(new.encode())
        assert not LOG_ERROR.search(new), f"{request}\n{new[-3000:]}"
        return resp

    def post(self, path: str, body: Any) -> httpx.Response:
        content = json.dumps(body).encode()  # big integers, NaN and Infinity as they are
        started = time.monotonic()
        resp = self.backend.client.post(
            path, content=content, headers={"Content-Type": "application/json"}
        )
        return self.check(resp, time.monotonic() - started)

    def get(self, path: str, params: dict[str, str]) -> httpx.Response:
        started = time.monotonic()
        resp = self.backend.client.get(path, params=params)
        return self.check(resp, time.monotonic() - started)


@pytest.fixture(scope="module")
def items(backend: Backend) -> Iterator[tuple[str, list[str]]]:
    """Five items viewed 5, 4, 3, 2 and 1 times on :data:`DAY` with an event name of
    their own (so counts are exact on a shared server)."""
    event = "fuzz-" + uuid.uuid4().hex[:8]
    names = [f"{event}-{n}" for n in range(5)]
    for rank, name in enumerate(names):
        for _ in range(5 - rank):
            backend.tick(id=name, event=event, ts=f"{DAY}T12:00:00Z")
    backend.settle()
    yield event, names


def _decode(cursor: str) -> dict[str, Any]:
    return orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))  # type: ignore[no-any-return]


def _encode(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# --- the tests --------------------------------------------------------------------------


def test_named_reports_page_with_the_cursor_they_return(
    backend: Backend, items: tuple[str, list[str]]
) -> None:
    event, names = items
    params = {"from": DAY, "to": DAY, "event": event, "limit": "2"}
    seen: list[str] = []
    after: str | None = None
    for _ in range(5):
        page_params = {**params, **({"after": after} if after else {})}
        resp = backend.client.get("/reports/top-items", params=page_params)
        assert resp.status_code == 200, resp.text
        seen += [row["dimensions"][0] for row in resp.json()["results"]]
        after = resp.json()["meta"]["next"]
        if after is None:
            break
    assert seen == names  # most viewed first, every item once


def test_a_report_cursor_that_is_not_one_is_an_invalid_cursor_naming_after(
    backend: Backend, items: tuple[str, list[str]]
) -> None:
    event, _ = items
    resp = backend.client.get(
        "/reports/top-items", params={"from": DAY, "to": DAY, "event": event, "after": "x"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_cursor"
    assert resp.json()["details"] == {"parameter": "after"}


def test_report_parameters_are_refused_as_parameters(backend: Backend) -> None:
    """URL parameters are a report's interface: what they make wrong is invalid_parameter
    naming the parameter, whichever check finds it."""
    for params, parameter in [
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"bots": "maybe"}, "bots"),
        ({"from": "2019-06-09", "to": "2019-06-01"}, "from"),
        ({"from": "9999-12-31"}, "from"),
        ({"range": "fortnight"}, "range"),
        ({"limit": "²"}, "limit"),
    ]:
        resp = backend.client.get("/reports/top-items", params=params)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == "invalid_parameter", (params, resp.json())
        assert resp.json()["details"]["parameter"] == parameter, (params, resp.json())


@pytest.mark.parametrize(
    "query",
    [
        {"dimensions": ["item"], "order_by": [["item", "asc"]]},  # paged: keys
        {"dimensions": ["item"]},  # top: an offset
        {"dimensions": ["time:hour", "item"]},  # whole: an offset
    ],
    ids=["paged", "top", "whole"],
)
def test_tampered_cursors_are_invalid_cursor_never_a_500_or_an_empty_page(
    backend: Backend, items: tuple[str, list[str]], query: dict[str, Any]
) -> None:
    event, _ = items
    body = {
        **query,
        "range": {"from": DAY, "to": DAY},
        "filters": [["is", "event", [event]]],
        "limit": 1,
    }
    watched = Watched(backend)
    first = watched.post("/query", body).json()
    payload = _decode(first["meta"]["next"])
    second = watched.post("/query", {**body, "after": first["meta"]["next"]})
    assert second.status_code == 200 and second.json()["results"] != first["results"]
    keyless = watched.post("/query", {**body, "after": _encode({"q": payload["q"]})})
    assert keyless.json()["error"] == "invalid_cursor"  # not the first page again
    values = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.text(max_size=10)
        | st.lists(st.none() | st.integers() | st.text(max_size=3) | st.booleans(), max_size=3)
        | st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
    )

    @given(key=st.sampled_from(["a", "o", "q"]), value=values)
    @FUZZ
    def send(key: str, value: Any) -> None:
        cursor = _encode({**payload, key: value})
        resp = watched.post("/query", {**body, "after": cursor})
        if resp.status_code == 400:
            assert resp.json()["error"] == "invalid_cursor", resp.json()
        elif "o" in {**payload, key: value} and key == "o":
            assert resp.json()["results"], (value, resp.json())

    send()


def test_any_query_is_answered_in_time_or_refused_clearly(backend: Backend) -> None:
    watched = Watched(backend)

    @given(query=QUERIES)
    @FUZZ
    def send(query: dict[str, Any]) -> None:
        watched.post("/query", query)

    send()


def test_any_report_query_string_is_answered_in_time_or_refused_clearly(
    backend: Backend,
) -> None:
    watched = Watched(backend)
    common = ["range", "from", "to", "tz", "limit", "bots", "after"]

    @given(
        name=st.sampled_from(["top-items", "downloads-by-format", "status-codes"]),
        params=report_params([*common, "interval", "source", "event"]),
    )
    @FUZZ
    def send(name: str, params: dict[str, str]) -> None:
        watched.get(f"/reports/{name}", params)

    send()


def test_any_tock_query_string_is_answered_in_time_or_refused_clearly(backend: Backend) -> None:
    watched = Watched(backend)

    @given(params=report_params(["from", "to", "tz", "interval", "top", "bots", "sources"]))
    @FUZZ
    def send(params: dict[str, str]) -> None:
        watched.get("/tock/doc-1", params)

    send()


@pytest.mark.parametrize(
    "leaf",
    [
        ["is", "item", ["😀" * 4096]],
        ["is", "item", ["😀" * 8192]],  # beyond Lucene's longest term (32 KiB)
        ["contains", "url.path", ["😀" * 8192]],
        ["is", "status", [5e-324, 0.5, 2**53, -(2**53)]],
        ["gt", "bytes", 1e300],
        ["is", "params.x", [1e308, True, "", "😀"]],
        ["is", "client.ip", ["not-an-ip", "::1"]],
    ],
)
def test_filter_values_at_the_edge_of_their_type_are_answered_or_refused(
    backend: Backend, leaf: list[Any]
) -> None:
    resp = Watched(backend).post("/query", {"filters": [leaf], "source": "all"})
    if resp.status_code == 400:
        assert resp.json()["details"]["field"] == "query.filters[0]", resp.json()


@pytest.mark.parametrize(
    "params",
    [
        {"from": "9999-12-30", "to": "9999-12-31", "tz": "Asia/Tokyo"},
        {"from": "0001-01-01", "to": "9999-12-31", "interval": "month"},
        {"from": "0002-01-01", "to": "0002-01-03", "tz": "Pacific/Kiritimati"},
        {"from": "9998-12-29", "to": "9998-12-31", "tz": "Pacific/Pago_Pago", "interval": "week"},
    ],
)
def test_tock_at_the_ends_of_the_calendar_answers_or_refuses(
    backend: Backend, params: dict[str, str]
) -> None:
    resp = Watched(backend).get("/tock/doc-1", params)
    if params["from"].startswith(("0001", "9999")):
        assert resp.json()["error"] == "invalid_parameter"
    else:
        assert all(label[:4] in ("0002", "0001", "9998") for label in resp.json()["views"])
