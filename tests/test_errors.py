"""Error ticks grouped by fingerprint, and the error reports, on both stores over HTTP.

One server per store for the module; the ticks are on days no other test of the module
uses, so every answer is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from metronome.client import Client
from metronome.events.errors import fingerprint, normalise_message, top_frame
from tests.support.backends import Backend, running_backend

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
STACK_RENDER = (
    "TypeError: Cannot read properties of undefined (reading 'id')\n"
    "    at render (https://shop.example/static/app.js?v={v}:{line}:17)\n"
    "    at main (https://shop.example/static/app.js?v={v}:3:1)"
)
STACK_SAVE = (
    "TypeError: Cannot read properties of undefined (reading 'id')\n"
    "    at save (https://shop.example/static/app.js:90:3)\n"
    "    at main (https://shop.example/static/app.js:3:1)"
)


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    with running_backend(request, tmp_path_factory, request.param, {}) as started:
        yield started


def _send(backend: Backend, ticks: list[tuple[str, str, dict[str, Any]]]) -> None:
    for address, agent, tick in ticks:
        resp = backend.client.post(
            "/tick", json=tick, headers={"X-Forwarded-For": address, "User-Agent": agent}
        )
        assert resp.status_code == 202, resp.text
    backend.settle()


def _report(backend: Backend, name: str, **params: str) -> dict[str, Any]:
    resp = backend.client.get(f"/reports/{name}", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _error(ts: str, path: str, message: str, stack: str, **more: Any) -> dict[str, Any]:
    return {
        "id": path,
        "event": "error",
        "url": f"https://shop.example{path}",
        "ts": ts,
        "type": "TypeError",
        "message": message,
        "stack": stack,
        **more,
    }


def _view(ts: str, path: str) -> dict[str, Any]:
    return {"id": path, "url": f"https://shop.example{path}", "ts": ts}


@pytest.fixture(scope="module")
def sent(store: Backend) -> Backend:
    """A hand-built set: one error seen with different numbers, ids and urls in its
    message and from two builds of the bundle (one group); the same message raised in
    another function (a second group); a server's Python error without a url."""
    day = "2024-03-05"
    render = STACK_RENDER
    _send(
        store,
        [
            ("10.0.0.1", CHROME, _view(f"{day}T09:00:00Z", "/cart")),
            ("10.0.0.1", CHROME, _view(f"{day}T09:01:00Z", "/cart")),
            ("10.0.0.2", FIREFOX, _view(f"{day}T09:02:00Z", "/cart")),
            ("10.0.0.3", CHROME, _view(f"{day}T09:03:00Z", "/checkout")),
            (
                "10.0.0.1",
                CHROME,
                _error(
                    f"{day}T09:05:00Z",
                    "/cart",
                    "Item 42 not found at https://shop.example/api/items/42?x=1",
                    render.format(v=1, line=10),
                    line=10,
                    column=17,
                    source="https://shop.example/static/app.js?v=1",
                ),
            ),
            (
                "10.0.0.2",
                FIREFOX,
                _error(
                    f"{day}T10:15:00Z",
                    "/cart",
                    "Item 7 not found at https://cdn.example/api/items/7",
                    render.format(v=2, line=12),
                ),
            ),
            (
                "10.0.0.3",
                CHROME,
                _error(
                    f"{day}T11:30:00Z",
                    "/checkout",
                    "Item 1234 not found at http://shop.example/",
                    render.format(v=2, line=12),
                ),
            ),
            (
                "10.0.0.3",
                CHROME,
                _error(f"{day}T11:31:00Z", "/checkout", "Item 9 not found", STACK_SAVE),
            ),
            (
                "10.0.0.9",
                "python-httpx/0.27",
                {
                    "id": "orders-api",
                    "event": "error",
                    "ts": f"{day}T12:00:00Z",
                    "type": "ZeroDivisionError",
                    "message": "division by zero",
                    "stack": 'Traceback (most recent call last):\n  File "/srv/app/views.py",'
                    " line 12, in totals\n    return a / b\nZeroDivisionError: division by zero",
                },
            ),
        ],
    )
    return store


RANGE = {"from": "2024-03-05", "to": "2024-03-05"}


def test_error_groups_fold_numbers_ids_and_urls_and_split_by_top_frame(sent: Backend) -> None:
    answer = _report(sent, "error-groups", **RANGE)
    rows = [{k: v for k, v in r.items() if k != "fingerprint"} for r in answer["results"]]
    assert rows == [
        {
            "group": "TypeError: Item <n> not found at <url> at /static/app.js:render",
            "errors": 3,
            "visitors": 3,
            "first_seen": "2024-03-05T09:05:00.000+00:00",
            "last_seen": "2024-03-05T11:30:00.000+00:00",
            "pages": 2,
            "browsers": 2,
        },
        {
            "group": "ZeroDivisionError: division by zero at /srv/app/views.py:totals",
            "errors": 1,
            "visitors": 1,
            "first_seen": "2024-03-05T12:00:00.000+00:00",
            "last_seen": "2024-03-05T12:00:00.000+00:00",
            "pages": 0,  # a server's error: no page, no browser
            "browsers": 0,
        },
        {
            "group": "TypeError: Item <n> not found at /static/app.js:save",
            "errors": 1,
            "visitors": 1,
            "first_seen": "2024-03-05T11:31:00.000+00:00",
            "last_seen": "2024-03-05T11:31:00.000+00:00",
            "pages": 1,
            "browsers": 1,
        },
    ]
    first = answer["results"][0]["fingerprint"]
    stack = STACK_RENDER.format(v=5, line=1)
    assert (
        first == fingerprint("TypeError", "Item 1 not found at https://x.example/", None, stack)[1]
    )
    detail = _report(sent, "error-groups", group=first, **RANGE)
    (one,) = detail["results"]
    assert one["pages_affected"] == [
        {"name": "/cart", "errors": 2, "visitors": 2},
        {"name": "/checkout", "errors": 1, "visitors": 1},
    ]
    assert one["browsers_affected"] == [
        {"name": "Chrome", "errors": 2, "visitors": 2},
        {"name": "Firefox", "errors": 1, "visitors": 1},
    ]


def test_error_tick_keeps_what_was_sent_under_error(sent: Backend) -> None:
    (doc,) = [
        d for d in sent.find("/cart") if d["event"]["action"] == "error" and "line" in d["error"]
    ]
    assert doc["error"]["line"] == 10 and doc["error"]["column"] == 17
    assert doc["error"]["source"] == "https://shop.example/static/app.js?v=1"
    assert doc["error"]["stack_trace"].startswith("TypeError: Cannot read")
    assert doc["params"] == {}  # the error's keys are not free parameters


def test_error_rate_is_errors_per_thousand_views_per_page(sent: Backend) -> None:
    answer = _report(sent, "errors", interval="day", **RANGE)
    assert answer["meta"]["metrics"] == ["errors", "views", "errors_per_1000_views"]
    assert answer["results"] == [
        {"dimensions": ["2024-03-05", "/cart"], "metrics": [2, 3, 666.667]},
        {"dimensions": ["2024-03-05", "/checkout"], "metrics": [2, 1, 2000.0]},
        {"dimensions": ["2024-03-05", None], "metrics": [1, 0, None]},
    ]


def test_bad_error_fields_are_refused_naming_the_field(store: Backend) -> None:
    resp = store.client.post("/tick", json={"id": "/p", "event": "error", "line": "ten"})
    assert resp.status_code == 400
    assert resp.json()["details"]["field"] == "line"
    resp = store.client.post("/tick", json={"id": "/p", "event": "error", "message": "x" * 1025})
    assert resp.status_code in (400, 413)
    assert resp.json()["details"]["field"] == "message"


def test_fingerprint_ignores_what_varies_between_occurrences() -> None:
    assert (
        normalise_message(
            "User 550e8400-e29b-41d4-a716-446655440000 got 'x' from https://a.example/b?c=1"
            " after 3.5s (0xdeadbeef, ab12cd34ef)"
        )
        == "User <uuid> got <str> from <url> after <n>s (<hex>, <hex>)"
    )
    assert top_frame(
        "render@https://a.example/app.js?v=2:10:5\nmain@https://a.example/app.js:1:1"
    ) == ("/app.js:render")
    one = fingerprint("TypeError", "no item 1", None, STACK_RENDER.format(v=1, line=1))
    two = fingerprint("TypeError", "no item 2", None, STACK_RENDER.format(v=9, line=80))
    other = fingerprint("TypeError", "no item 2", None, STACK_SAVE)
    assert one == two and one != other
    assert fingerprint(None, "boom", "https://a.example/app.js?v=1", None)[0] == "boom at /app.js"


def _divide(a: int, b: int) -> float:
    return a / b


def test_python_client_sends_an_exception_as_an_error_tick(store: Backend) -> None:
    try:
        _divide(1, 0)
    except ZeroDivisionError as exc:
        caught = exc
    with Client(store.server.url, flush_interval_s=0.1) as client:
        client.error("billing-job", caught, ts="2024-03-06T08:00:00Z")
        assert client.flush(30) and client.stats.sent == 1
    (doc,) = store.find("billing-job")
    error = doc["error"]
    assert (error["type"], error["message"]) == ("ZeroDivisionError", "division by zero")
    assert error["source"] == __file__ and error["line"] > 0
    assert error["group"] == f"ZeroDivisionError: division by zero at {__file__}:_divide"
    assert "in _divide\n" in error["stack_trace"]
