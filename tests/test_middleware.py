"""metronome.middleware: real Falcon and Flask apps, served on free ports and wrapped in
the middleware, report their requests to a running Metronome; the ``api-calls`` report
counts them per route template, with error rates and duration percentiles."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import falcon
import falcon.asgi
import flask
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from metronome.client import Client
from metronome.middleware import ApiCallTracker, ASGIMiddleware, track_falcon, track_flask
from tests.support.backends import Backend
from tests.support.es_server import free_port
from tests.support.served_app import serve_asgi, serve_wsgi


def _api_calls(backend: Backend, **params: str) -> dict[str, dict[str, Any]]:
    """The ``api-calls`` report of today, per route: calls, errors (5xx), percentiles."""
    backend.settle()
    resp = backend.client.get("/reports/api-calls", params={"range": "1d", **params})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["meta"]["metrics"] == [
        "events",
        "error_rate",
        "p50:event.duration",
        "p95:event.duration",
        "p99:event.duration",
    ]
    routes: dict[str, dict[str, Any]] = {}
    for row in answer["results"]:
        _, route = row["dimensions"]
        calls, rate, p50, p95, p99 = row["metrics"]
        if not calls:  # a zero row filling the time series
            continue
        entry = routes.setdefault(route, {"calls": 0, "errors": 0, "p": []})
        entry["calls"] += calls
        entry["errors"] += round(rate * calls)
        entry["p"].append((p50, p95, p99))
    return routes


def _query(backend: Backend, body: dict[str, Any]) -> list[dict[str, Any]]:
    backend.settle()
    resp = backend.client.post("/query", json={"source": "logs", "range": "1d", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]  # type: ignore[no-any-return]


# --- Falcon (ASGI), served by uvicorn -----------------------------------------------------


class _Items:
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, item_id: str
    ) -> None:
        if item_id.startswith("broken"):
            raise falcon.HTTPServiceUnavailable(description="down for a moment")
        req.scope["metronome.user"] = req.get_header("X-User")
        resp.media = {"item": item_id}

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, item_id: str
    ) -> None:
        resp.status = falcon.HTTP_201
        resp.media = {"created": item_id}


class _Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"ok": True}


@pytest.fixture(scope="module")
def falcon_run(backend: Backend) -> Iterator[tuple[str, str, ApiCallTracker]]:
    """A Falcon ASGI app under uvicorn, tracked into ``backend``; its routes start with a
    token of this run, so the report's rows of this test are told apart."""
    token = "f" + uuid.uuid4().hex[:8]
    app = falcon.asgi.App()
    app.add_route(f"/{token}/items/{{item_id}}", _Items())
    app.add_route(f"/{token}/healthz", _Health())
    with Client(backend.server.url, flush_interval_s=0.05) as client:
        tracker = ApiCallTracker(client, exclude=[f"/{token}/healthz"])
        with serve_asgi(track_falcon(app, tracker)) as url:
            yield token, url, tracker
        assert client.flush(30)
        assert client.stats.rejected == 0


def test_falcon_calls_are_reported_per_route_template(
    backend: Backend, falcon_run: tuple[str, str, ApiCallTracker]
) -> None:
    token, url, tracker = falcon_run
    with httpx.Client(base_url=url, timeout=30) as http:
        for n in range(6):
            resp = http.get(f"/{token}/items/{n}", headers={"X-User": f"user-{n % 2}"})
            assert resp.status_code == 200
        for n in range(2):
            assert http.get(f"/{token}/items/broken{n}").status_code == 503
        assert http.post(f"/{token}/items/new", json={}).status_code == 201
        assert http.get(f"/{token}/healthz").status_code == 200  # excluded
        assert http.get(f"/{token}/no/such/route").status_code == 404
    assert tracker.stats.failures == 0
    client = tracker._client
    assert isinstance(client, Client) and client.flush(30)

    routes = _api_calls(backend)
    item_route = f"/{token}/items/{{item_id}}"
    assert {r for r in routes if r.startswith(f"/{token}")} == {item_route}
    assert routes[item_route]["calls"] == 9  # 6 + 2 broken + 1 POST: one template
    assert routes[item_route]["errors"] == 2  # the two 503s
    for p50, p95, p99 in routes[item_route]["p"]:
        assert 0 < p50 <= p95 <= p99
    assert routes["(no route)"]["calls"] >= 1

    one_route = _api_calls(backend, route=item_route, method="post")
    assert {r: v["calls"] for r, v in one_route.items()} == {item_route: 1}

    # the same fields as access logs, plus the route and the user
    rows = _query(
        backend,
        {
            "metrics": ["events"],
            "dimensions": ["method", "status", "user.id"],
            "filters": [["is", "http.route", [item_route]]],
        },
    )
    found = {tuple(row["dimensions"]): row["metrics"][0] for row in rows}
    assert found == {
        ("GET", 200, "user-0"): 3,
        ("GET", 200, "user-1"): 3,
        ("GET", 503, None): 2,
        ("POST", 201, None): 1,
    }


# --- Flask, served by werkzeug --------------------------------------------------------------


def _flask_app(token: str) -> flask.Flask:
    app = flask.Flask(f"tracked_{token}")

    @app.before_request
    def authenticate() -> None:
        user = flask.request.headers.get("X-User")
        if user:
            flask.request.environ["metronome.user"] = user

    @app.get(f"/{token}/users/<int:uid>")
    def user(uid: int) -> flask.Response:
        return flask.Response(b"x" * uid, mimetype="application/octet-stream")

    @app.get(f"/{token}/stream")
    def stream() -> flask.Response:
        return flask.Response((b"chunk" for _ in range(3)), mimetype="text/plain")

    @app.get(f"/{token}/fail")
    def fail() -> flask.Response:
        raise RuntimeError("the app's own bug")

    return app


@pytest.fixture(scope="module")
def flask_run(backend: Backend) -> Iterator[tuple[str, str, ApiCallTracker]]:
    token = "k" + uuid.uuid4().hex[:8]
    app = _flask_app(token)
    with Client(backend.server.url, flush_interval_s=0.05) as client:
        tracker = ApiCallTracker(client, exclude_methods=["OPTIONS"])
        track_flask(app, tracker)
        with serve_wsgi(app) as url:
            yield token, url, tracker
        assert client.flush(30)


def test_flask_calls_are_reported_with_bytes_users_and_errors(
    backend: Backend, flask_run: tuple[str, str, ApiCallTracker]
) -> None:
    token, url, tracker = flask_run
    with httpx.Client(base_url=url, timeout=30) as http:
        for uid in (10, 20, 30):
            assert http.get(f"/{token}/users/{uid}", headers={"X-User": "ada"}).content == (
                b"x" * uid
            )
        assert http.get(f"/{token}/stream").text == "chunk" * 3
        assert http.get(f"/{token}/fail").status_code == 500
        assert http.options(f"/{token}/stream").status_code == 200  # excluded method
    client = tracker._client
    assert isinstance(client, Client) and client.flush(30)
    assert tracker.stats.failures == 0 and tracker.stats.skipped == 1

    routes = _api_calls(backend)
    mine = {r: v for r, v in routes.items() if r.startswith(f"/{token}")}
    assert {r: (v["calls"], v["errors"]) for r, v in mine.items()} == {
        f"/{token}/users/<int:uid>": (3, 0),
        f"/{token}/stream": (1, 0),
        f"/{token}/fail": (1, 1),
    }
    rows = _query(
        backend,
        {
            "metrics": ["events", "bytes"],
            "dimensions": ["http.route", "user.id"],
            "filters": [["matches", "http.route", [f"/{token}/*"]], ["lt", "status", 500]],
        },
    )
    found = {tuple(row["dimensions"]): row["metrics"] for row in rows}
    assert found == {
        (f"/{token}/users/<int:uid>", "ada"): [3, 60],
        (f"/{token}/stream", None): [1, 15],
    }


# --- Starlette, served by uvicorn ------------------------------------------------------------


async def _order(request: Request) -> JSONResponse:
    return JSONResponse({"order": request.path_params["order_id"]})


async def _thing(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params["name"])


def test_starlette_routes_are_templates_mounts_included(backend: Backend) -> None:
    token = "t" + uuid.uuid4().hex[:8]
    app = Starlette(
        routes=[
            Route(f"/{token}/orders/{{order_id:int}}", _order),
            Mount(f"/{token}/api", routes=[Route("/things/{name}", _thing)]),
        ]
    )
    with Client(backend.server.url, flush_interval_s=0.05) as client:
        tracker = ApiCallTracker(client)
        with serve_asgi(ASGIMiddleware(app, tracker)) as url:
            with httpx.Client(base_url=url, timeout=30) as http:
                for n in range(3):
                    assert http.get(f"/{token}/orders/{n}").json() == {"order": n}
                assert http.get(f"/{token}/api/things/lamp").text == "lamp"
                assert http.get(f"/{token}/orders/not-a-number").status_code == 404
        assert client.flush(30)
    assert tracker.stats.failures == 0
    routes = _api_calls(backend)
    assert {r: v["calls"] for r, v in routes.items() if r.startswith(f"/{token}")} == {
        f"/{token}/orders/{{order_id:int}}": 3,
        f"/{token}/api/things/{{name}}": 1,
    }


# --- Django, served by werkzeug ----------------------------------------------------------------


def test_django_routes_statuses_and_users(backend: Backend) -> None:
    from tests.support.django_site import wsgi_app

    with Client(backend.server.url, flush_interval_s=0.05) as client:
        tracker = ApiCallTracker(client, user=lambda request: request.headers.get("X-User"))
        with serve_wsgi(wsgi_app(tracker)) as url, httpx.Client(base_url=url, timeout=30) as http:
            for n in range(4):
                resp = http.get(f"/django/items/{n}", headers={"X-User": "grace"})
                assert resp.json() == {"item": n}
            assert http.get("/django/fail").status_code == 500
        assert client.flush(30)
    assert tracker.stats.failures == 0
    routes = _api_calls(backend)
    mine = {r: (v["calls"], v["errors"]) for r, v in routes.items() if r.startswith("/django/")}
    assert mine == {"/django/items/<int:item_id>": (4, 0), "/django/fail": (1, 1)}
    rows = _query(
        backend,
        {
            "metrics": ["events", "bytes"],
            "dimensions": ["user.id"],
            "filters": [["is", "http.route", ["/django/items/<int:item_id>"]]],
        },
    )
    assert [(row["dimensions"], row["metrics"]) for row in rows] == [(["grace"], [4, 4 * 11])]


# --- sampling, and an app that keeps answering whatever happens to tracking ----------------


def test_sampling_tracks_a_share_and_the_report_counts_exactly_the_tracked(
    backend: Backend,
) -> None:
    token = "s" + uuid.uuid4().hex[:8]
    app = _flask_app(token)
    with Client(backend.server.url, flush_interval_s=0.05) as client:
        tracker = ApiCallTracker(client, sample_rate=0.25)
        tracker._random = random.Random(23).random  # the same sample every run
        track_flask(app, tracker)
        with serve_wsgi(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(80):
                assert http.get(f"/{token}/users/1").status_code == 200
        assert client.flush(30)
    sampled = tracker.stats.tracked
    assert 5 < sampled < 40 and sampled + tracker.stats.skipped == 80
    routes = _api_calls(backend, route=f"/{token}/users/<int:uid>")
    assert routes[f"/{token}/users/<int:uid>"]["calls"] == sampled


class _Exploding:
    def tick(self, item_id: str, event: str = "view", **fields: Any) -> bool:
        raise RuntimeError("tracking is broken")


class _Plain:
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.media = {"hello": name}


def test_a_failing_metronome_or_hook_never_fails_a_request() -> None:
    """Metronome unreachable (its client's queue fills), a user hook that raises, a
    client that raises: the app (Falcon's WSGI app here) answers every request."""
    dead = Client(
        f"http://127.0.0.1:{free_port()}", max_queue=3, flush_interval_s=60, close_timeout_s=0.5
    )
    trackers = [
        ApiCallTracker(dead),
        ApiCallTracker(dead, user=lambda env: 1 / 0),
        ApiCallTracker(_Exploding()),
    ]
    try:
        for tracker in trackers:
            app = falcon.App()
            app.add_route("/hello/{name}", _Plain())
            with serve_wsgi(track_falcon(app, tracker)) as url:
                with httpx.Client(base_url=url, timeout=30) as http:
                    for n in range(5):
                        assert http.get(f"/hello/{n}").json() == {"hello": str(n)}
    finally:
        dead.close()  # gives up on what it holds after close_timeout_s
    queued, hook, exploding = trackers
    assert (queued.stats.tracked, queued.stats.dropped) == (3, 2)  # the queue holds 3
    assert hook.stats.failures == 5 and hook.stats.dropped == 5  # still sent, without a user
    assert exploding.stats.failures == 5 and exploding.stats.tracked == 0


def test_the_server_refuses_api_calls_it_cannot_store(backend: Backend) -> None:
    resp = backend.client.post(
        "/ticks",
        json=[
            {"id": "/ok", "event": "api.call", "method": "GET", "status": 200},
            {"id": "/ok", "event": "api.call", "status": 200},
            {"id": "/ok", "event": "api.call", "method": "GET", "status": 200, "path": "/x"},
            {"id": "/ok", "event": "api.call", "method": "GET", "status": 200, "bytes": -1},
        ],
    )
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["accepted"] == 1
    assert [r["details"]["field"] for r in answer["rejected"]] == ["method", "path", "bytes"]


def _report_counts(backend: Backend, name: str, index: int, **params: str) -> dict[Any, int]:
    """A named report of today: the first metric of each row by dimension ``index``."""
    backend.settle()
    resp = backend.client.get(f"/reports/{name}", params={"range": "1d", **params})
    assert resp.status_code == 200, resp.text
    counts: dict[Any, int] = {}
    for row in resp.json()["results"]:
        key = row["dimensions"][index]
        counts[key] = counts.get(key, 0) + row["metrics"][0]
    return counts


def test_log_reports_leave_api_calls_out_unless_asked(backend: Backend) -> None:
    """API calls share the logs source: the access-log reports do not count them (an app
    behind a logged web server would count twice) unless ``api_calls=include``."""
    status = 200 + random.randrange(50, 99)  # a status no other test's calls answered
    before = _report_counts(backend, "status-codes", 1, api_calls="include").get(status, 0)
    calls = [
        {"id": "/reports-test", "event": "api.call", "method": "GET", "status": status}
        | {"duration_ns": 1_000_000}
        for _ in range(3)
    ]
    resp = backend.client.post("/ticks", json=calls)
    assert resp.status_code == 202 and resp.json()["accepted"] == 3, resp.text
    assert _report_counts(backend, "status-codes", 1).get(status, 0) == 0
    included = _report_counts(backend, "status-codes", 1, api_calls="include")
    assert included[status] == before + 3
    # the concurrency report's requests with a duration: the calls count only when asked
    plain = backend.client.get("/reports/concurrency", params={"range": "1d"})
    asked = backend.client.get(
        "/reports/concurrency", params={"range": "1d", "api_calls": "include"}
    )
    assert plain.status_code == asked.status_code == 200, (plain.text, asked.text)
    assert _timed_requests(asked.json()) - _timed_requests(plain.json()) >= 3
    wrong = backend.client.get("/reports/status-codes", params={"api_calls": "maybe"})
    assert wrong.status_code == 400 and wrong.json()["details"]["parameter"] == "api_calls"


def _timed_requests(answer: dict[str, Any]) -> int:
    """Requests with a duration in a ``concurrency`` answer."""
    return sum(row.get("requests", 0) for row in answer["results"])
