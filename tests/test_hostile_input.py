"""Whatever arrives, the answer is a 2xx or a clear 4xx, and nothing refused is stored.

Hypothesis throws arbitrary JSON (deep nesting, unicode, huge and tiny numbers), odd
parameter names (``__proto__``, ``a.b``, ``*``, very long keys, query syntax) and odd
query strings at the ingest and report routes of a running server (embedded store).
Runs are derandomized (the same examples every run), so the suite is reproducible.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.backends import wait_for_drain
from tests.support.fuzz import fuzz
from tests.support.metronome_server import MetronomeServer

ODD_NAMES = [
    "__proto__",
    "constructor",
    "a.b",
    "*",
    "",
    " ",
    "id.x",
    "params",
    "$where",
    "a" * 65,
    "a" * 10_000,
    "é",
    "\u0000",
    "x'); DROP TABLE events; --",
    "@timestamp",
    "_id",
    "bot",
    "site",
    "ts",
]
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(ODD_NAMES) | st.text(max_size=20)
TICKS = st.dictionaries(KEYS, JSON, max_size=6).map(lambda d: d) | st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=30)},
    optional={"event": JSON, "format": JSON, "ts": JSON, "url": JSON},
).flatmap(
    lambda base: st.dictionaries(KEYS, SCALARS, max_size=4).map(lambda extra: {**extra, **base})
)
FIELDS = st.sampled_from(
    [
        "item",
        "event",
        "params.x",
        "bot",
        "status",
        "url.path",
        "nope",
        "a.b",
        "params.__proto__",
        "*",
        "item.id') OR 1=1 --",
        "@timestamp",
        "visitor",
        "client.ip",
        "bytes",
    ]
)
FILTER = st.tuples(
    st.sampled_from(["is", "is_not", "contains", "matches", "gt", "lt"]),
    FIELDS,
    st.lists(SCALARS, max_size=3) | SCALARS,
).map(list)
QUERIES = (
    st.fixed_dictionaries(
        {},
        optional={
            "source": st.sampled_from(["ticks", "logs", "all", "x"]),
            "range": st.sampled_from(["7d", "today", "24h", "999d", "0d"])
            | st.fixed_dictionaries(
                {"from": st.text(max_size=12)}, optional={"to": st.text(max_size=12)}
            ),
            "tz": st.sampled_from(["UTC", "Europe/Berlin", "Nowhere/Else", ""]),
            "metrics": st.lists(
                st.sampled_from(["events", "visitors", "items", "bytes", "error_rate"])
                | st.dictionaries(
                    st.sampled_from(["avg", "p95", "sum", "p0"]), FIELDS, min_size=1, max_size=1
                ),
                max_size=3,
            ),
            "dimensions": st.lists(
                FIELDS | st.sampled_from(["time:day", "time:hour", "time:x"]), max_size=3
            ),
            "filters": st.lists(
                FILTER
                | st.tuples(
                    st.sampled_from(["and", "or", "not"]), st.lists(FILTER, max_size=2)
                ).map(list),
                max_size=3,
            ),
            "limit": st.integers(min_value=-5, max_value=20_000) | st.floats(allow_nan=False),
            "after": st.none() | st.text(max_size=30),
            "order_by": st.lists(
                st.tuples(FIELDS | st.just("events"), st.sampled_from(["asc", "desc", "up"])).map(
                    list
                ),
                max_size=2,
            ),
        },
    )
    | JSON
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    srv = MetronomeServer({}, data_dir=tmp_path_factory.mktemp("hostile"))
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


def _stored(server: MetronomeServer) -> int:
    wait_for_drain(server)
    resp = httpx.post(
        f"{server.url}/query", json={"source": "ticks", "bots": "include", "range": {"from": "0"}}
    )
    return int(resp.json()["results"][0]["metrics"][0])


def _post(url: str, body: Any) -> httpx.Response:
    """Any JSON value as the body (the standard library writes huge integers and Infinity,
    which the server must refuse clearly)."""
    return httpx.post(
        url, content=json.dumps(body), timeout=30, headers={"Content-Type": "application/json"}
    )


def _clear_error(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        body = resp.json()
        assert body["error"] and body["message"], body


def test_ticks_of_any_shape_are_stored_or_refused_clearly(server: MetronomeServer) -> None:
    accepted = 0
    before = _stored(server)

    @given(tick=TICKS)
    @fuzz(100)
    def send(tick: dict[str, Any]) -> None:
        nonlocal accepted
        resp = _post(f"{server.url}/tick", tick)
        _clear_error(resp)
        assert resp.status_code in (202, 400, 413), resp.text
        accepted += resp.status_code == 202

    send()
    assert accepted > 0  # the generator does produce valid ticks
    assert _stored(server) == before + accepted  # nothing refused was stored


def test_batches_report_each_refused_tick_and_store_only_the_rest(server: MetronomeServer) -> None:
    stored = 0
    before = _stored(server)

    @given(batch=st.lists(TICKS | JSON, min_size=1, max_size=8))
    @fuzz(40)
    def send(batch: list[Any]) -> None:
        nonlocal stored
        resp = _post(f"{server.url}/ticks", batch)
        _clear_error(resp)
        if resp.status_code == 202:
            body = resp.json()
            assert body["accepted"] + len(body["rejected"]) == len(batch)
            assert sum(i is not None for i in body["ids"]) == body["accepted"]
            stored += body["accepted"]

    send()
    assert _stored(server) == before + stored


def test_any_query_gets_an_answer_or_a_clear_400(server: MetronomeServer) -> None:
    @given(query=QUERIES)
    @fuzz(150)
    def ask(query: Any) -> None:
        resp = _post(f"{server.url}/query", query)
        _clear_error(resp)
        assert resp.status_code in (200, 400), resp.text

    ask()


def test_any_report_query_string_gets_an_answer_or_a_clear_400(server: MetronomeServer) -> None:
    names = st.sampled_from(
        [
            "from",
            "to",
            "tz",
            "interval",
            "top",
            "bots",
            "sources",
            "range",
            "limit",
            "event",
            "source",
            "id",
            "x",
        ]
    )
    values = st.text(alphabet=string.printable + "é€\u2028", max_size=20)

    @given(
        path=st.sampled_from(
            [
                "/tock/doc-1",
                "/tock",
                "/reports/top-items",
                "/reports/status-codes",
                "/reports/tock",
                "/tick.gif",
            ]
        ),
        params=st.lists(st.tuples(names, values), max_size=4),
    )
    @fuzz(100)
    def ask(path: str, params: list[tuple[str, str]]) -> None:
        resp = httpx.get(f"{server.url}{path}", params=params, timeout=30)
        _clear_error(resp)

    ask()
