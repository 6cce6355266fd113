"""KPIs and insights end to end, on both stores: ticks through real HTTP to ``metronome
serve`` (whose worker evaluates KPIs every second), KPIs defined through ``/kpis`` and
``metronome kpis create``, insights read back through ``POST /query`` with ``"source":
"insights"`` and received by a real local webhook receiver (an HTTP server in this test
process), signed; the spike's anomaly is also pushed to a live subscription on the insights
(``GET /live``, a real WebSocket) and shown, with its explanation, by the dashboard open in
Debian's headless Chromium (through Playwright) before the spike.

The world, built from timestamped ticks: ten days of hourly page views ending with the
last complete hour --

* ``views``: a daily shape (5 to 15 an hour), the same every day;
* ``growth``: 20% more every day (a trend against the previous day and last week);
* ``sparse``: one view every five hours;

then, in the current hour, a spike of 300 views of ``views`` and 8 of ``sparse``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect
from websockets.sync.client import ClientConnection, connect

from tests.support.backends import Backend, running_backend

SECRET = "insight-test-secret"
HOURS = 240


class Receiver:
    """A webhook receiver: a real HTTP server recording each delivery."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for headers, body in list(self.deliveries):
            signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Metronome-Signature"] == signature
            payload = json.loads(body)
            out.append((payload["event"], payload))
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ts(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _history(item: str, per_hour: Any, last_hour: datetime) -> list[dict[str, Any]]:
    ticks = []
    for back in range(HOURS, 0, -1):
        hour = last_hour - timedelta(hours=back - 1)
        count = per_hour(hour, HOURS - back)
        ticks.extend(
            {"id": item, "ts": _ts(hour + timedelta(seconds=5 + k * 3000 // max(count, 1)))}
            for k in range(count)
        )
    return ticks


def _daily(hour: datetime, _: int) -> int:
    return 10 + round(5 * math.sin(2 * math.pi * hour.hour / 24))


def _growing(hour: datetime, index: int) -> int:
    return round(5 * 1.2 ** (index // 24))


def _sparse(hour: datetime, index: int) -> int:
    return 1 if index % 5 == 0 else 0


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, Receiver, dict[str, str]]]:
    receiver = Receiver()
    env = {"METRONOME_KPI_INTERVAL_S": "1", "METRONOME_INSIGHT_WEBHOOK_SECRET": SECRET}
    tag = uuid.uuid4().hex[:8]
    items = {name: f"{name}-{tag}" for name in ("views", "growth", "sparse")}
    now = datetime.now(UTC)
    if now.minute >= 58:  # the spike must land in the hour the history leads up to
        time.sleep((60 - now.minute) * 60 - now.second + 2)
        now = datetime.now(UTC)
    last_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    with running_backend(request, tmp_path_factory, request.param, env) as backend:
        ticks = [
            *_history(items["views"], _daily, last_hour),
            *_history(items["growth"], _growing, last_hour),
            *_history(items["sparse"], _sparse, last_hour),
        ]
        for first in range(0, len(ticks), 500):
            resp = backend.client.post("/ticks", json=ticks[first : first + 500])
            assert resp.status_code == 202, resp.text
        backend.settle()
        try:
            yield backend, receiver, items
        finally:
            receiver.close()


@contextlib.contextmanager
def _insights_subscription(backend: Backend, kpi_id: str) -> Iterator[ClientConnection]:
    """A live subscription (WebSocket) on the insights of ``kpi_id``, as a server would
    open one: a token minted on the open site, then ``subscribe``."""
    minted = httpx.post(f"{backend.server.url}/live/token")
    assert minted.status_code == 200, minted.text
    url = backend.server.url.replace("http://", "ws://") + "/live?token=" + minted.json()["token"]
    query = {
        "source": "insights",
        "range": "24h",
        "dimensions": ["insight.kind", "insight.state", "insight.message"],
        "metrics": ["events", {"max": "insight.observed"}, {"min": "insight.low"}],
        "filters": [["is", "kpi.id", [kpi_id]]],
    }
    with connect(url) as ws:
        subscribe = {"type": "subscribe", "id": "insights", "query": query, "frequency": 1000}
        ws.send(json.dumps(subscribe))
        yield ws


def _pushed_anomaly(ws: ClientConnection, timeout_s: float = 90) -> dict[str, Any]:
    """The first pushed row of a raised anomaly (answering the server's pings meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
        if message["type"] == "ping":
            ws.send(json.dumps({"type": "pong"}))
        elif message["type"] == "result" and message["id"] == "insights":
            for row in message["data"]["results"]:
                if row["dimensions"][:2] == ["anomaly", "raised"]:
                    return row  # type: ignore[no-any-return]
        elif message["type"] == "error" and message.get("error") == "store_unavailable":
            continue  # refused twice in a row (a shard starting): the next answer follows
        else:
            assert message["type"] in ("welcome", "subscribed", "result"), message
    raise AssertionError(f"no anomaly pushed within {timeout_s}s")


def _kpi(backend: Backend, **definition: Any) -> dict[str, Any]:
    resp = backend.client.post("/kpis", json=definition)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _insights(backend: Backend, kpi_id: str) -> list[dict[str, Any]]:
    body = {
        "source": "insights",
        "range": "30d",
        "dimensions": ["insight.kind", "insight.state", "insight.key", "insight.message"],
        "filters": [["is", "kpi.id", [kpi_id]]],
        "metrics": ["events", {"max": "insight.observed"}, {"max": "insight.high"}],
    }
    resp = backend.client.post("/query", json=body)
    for _ in range(5):  # the shared test Elasticsearch may be busy: 503, retry as told
        if resp.status_code != 503:
            break
        time.sleep(float(resp.headers.get("Retry-After", "1")))
        resp = backend.client.post("/query", json=body)
    assert resp.status_code == 200, resp.text
    return [
        {
            "kind": r["dimensions"][0],
            "state": r["dimensions"][1],
            "key": r["dimensions"][2],
            "message": r["dimensions"][3],
            "count": r["metrics"][0],
            "observed": r["metrics"][1],
            "high": r["metrics"][2],
        }
        for r in resp.json()["results"]
    ]


def _wait_for(what: str, check: Any, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s}s")


def test_a_spike_raises_an_explained_anomaly_in_query_live_on_the_dashboard_and_at_the_webhook(
    world: tuple[Backend, Receiver, dict[str, str]], browser: Browser, artifacts: Path
) -> None:
    backend, receiver, items = world
    views = _kpi(
        backend,
        id="views",
        name="Views of the home page",
        query={
            "source": "ticks",
            "metrics": ["events"],
            "filters": [["is", "item.id", [items["views"]]]],
        },
        min_volume=5,
        above=100,
        webhook=receiver.url,
        dashboard="main",
    )
    result = backend.server.run_cli(
        "kpis", "create", "--id", "sparse", "--name", "A quiet page", "--source", "ticks",
        "--filter", json.dumps(["is", "item.id", [items["sparse"]]]), "--webhook", receiver.url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["min_volume"] == 20
    listed = backend.client.get("/kpis").json()["kpis"]
    assert {k["id"] for k in listed} >= {"views", "sparse"}
    assert views["dashboard"] == "main"

    time.sleep(3)  # a few evaluations of the steady history: nothing to say
    assert not [i for i in _insights(backend, "views") if i["kind"] == "anomaly"]

    # watching before the spike: a live subscription, and the dashboard in a browser
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{backend.server.url}/dashboard")  # the open default site: no sign-in
    expect(page.locator("#live-state")).to_have_text("live", timeout=20_000)
    expect(page.locator("#panel-insights")).to_be_visible(timeout=20_000)
    expect(page.locator("#panel-insights li.insight.anomaly")).to_have_count(0)

    with _insights_subscription(backend, "views") as live:
        spike = [{"id": items["views"]}] * 300 + [{"id": items["sparse"]}] * 8
        resp = backend.client.post("/ticks", json=spike)
        assert resp.status_code == 202, resp.text
        backend.settle()
        pushed = _pushed_anomaly(live)  # on the live stream, with its explanation
    assert pushed["metrics"][1] == 300 and pushed["metrics"][2] < 300
    assert "above the expected" in pushed["dimensions"][2]
    assert "expected range" in pushed["dimensions"][2]

    # on the dashboard, nothing reloaded: the page follows its live insights figure
    shown = page.locator("#panel-insights li.insight.anomaly.raised")
    expect(shown).to_have_count(1, timeout=30_000)
    expect(shown).to_have_attribute("data-observed", "300")
    expect(shown.locator(".message")).to_have_text(pushed["dimensions"][2])
    expect(shown.locator(".kpi")).to_have_text("Views of the home page")
    expect(shown.locator(".facts")).to_contain_text("observed 300, expected ")
    # the now panel counts them: the anomaly and the threshold crossing
    expect(page.locator("#now-insights_24h")).to_have_attribute("data-value", "2", timeout=20_000)
    page.screenshot(path=artifacts / f"dashboard-insight-{backend.name}.png", full_page=True)
    assert not errors, errors
    context.close()

    def raised() -> list[dict[str, Any]]:
        return [
            i
            for i in _insights(backend, "views")
            if i["kind"] == "anomaly" and i["state"] == "raised"
        ]

    (anomaly,) = _wait_for("an anomaly insight", raised)
    assert anomaly["observed"] == 300
    assert anomaly["high"] < 300
    assert "above the expected" in anomaly["message"]
    assert "expected range" in anomaly["message"]
    thresholds = [i for i in _insights(backend, "views") if i["kind"] == "threshold"]
    assert [(t["state"], t["key"]) for t in thresholds] == [("raised", "threshold:above")]
    assert "above the threshold 100" in thresholds[0]["message"]

    hooks = _wait_for(
        "the anomaly at the webhook",
        lambda: [
            body
            for event, body in receiver.events()
            if event == "insight.raised" and body["insight"]["insight"]["kind"] == "anomaly"
        ],
    )
    assert hooks[0]["kpi"] == {"id": "views", "name": "Views of the home page", "site": "default"}
    assert hooks[0]["insight"]["insight"]["observed"] == 300
    assert "expected range" in hooks[0]["insight"]["insight"]["message"]

    time.sleep(3)  # more evaluations: the same anomaly is not raised or sent again
    assert len(raised()) == 1 and raised()[0]["count"] == 1
    sent = [b for e, b in receiver.events() if b["kpi"]["id"] == "views" and e == "insight.raised"]
    assert len([b for b in sent if b["insight"]["insight"]["kind"] == "anomaly"]) == 1

    # the sparse page got 8 views where it has about none: too sparse to judge
    assert not [i for i in _insights(backend, "sparse") if i["kind"] == "anomaly"]
    assert not [b for _, b in receiver.events() if b["kpi"]["id"] == "sparse"]

    # a restarted worker remembers what is raised (from the stored insights): it sends
    # nothing again, and the recovery below is still sent
    assert backend.server.stop() == 0
    backend.server.start()
    time.sleep(3)
    assert len(raised()) == 1
    assert len([e for e, b in receiver.events() if b["kpi"]["id"] == "views"]) == len(sent)

    # raising the threshold above the spike: the threshold insight recovers, once
    _kpi(
        backend,
        id="views",
        name="Views of the home page",
        query={
            "source": "ticks",
            "metrics": ["events"],
            "filters": [["is", "item.id", [items["views"]]]],
        },
        min_volume=5,
        above=1000,
        webhook=receiver.url,
    )
    recovered = _wait_for(
        "a recovery at the webhook",
        lambda: [
            b
            for e, b in receiver.events()
            if e == "insight.recovered" and b["insight"]["insight"]["kind"] == "threshold"
        ],
    )
    assert recovered[0]["insight"]["insight"]["message"].startswith("recovered: ")


def test_a_growing_series_raises_trends_against_the_day_before_and_last_week(
    world: tuple[Backend, Receiver, dict[str, str]],
) -> None:
    backend, receiver, items = world
    _kpi(
        backend,
        id="growth",
        name="Sign-ups",
        query={"source": "ticks", "filters": [["is", "item.id", [items["growth"]]]]},
        window="24h",
        min_volume=5,
        webhook=receiver.url,
    )

    def trends() -> dict[str, dict[str, Any]]:
        found = {
            i["key"]: i
            for i in _insights(backend, "growth")
            if i["kind"] == "trend" and i["state"] == "raised"
        }
        return found if len(found) == 2 else {}

    found = _wait_for("two trend insights", trends)
    # the last day's hours had round(5 * 1.2**9) = 26 views each, the day before's 21
    change = round(5 * 1.2**9) / round(5 * 1.2**8) - 1
    assert f"up {change * 100:.0f}%" in found["trend:previous_period"]["message"]
    assert "in the period before" in found["trend:previous_period"]["message"]
    assert "at the same time last week" in found["trend:same_time_last_week"]["message"]


def test_kpi_definitions_are_checked_and_kept_per_site(
    world: tuple[Backend, Receiver, dict[str, str]],
) -> None:
    backend, _, _ = world
    bad = backend.client.post("/kpis", json={"name": "x", "query": {"metrics": ["nope"]}})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_kpi"
    assert bad.json()["details"]["field"].startswith("kpi.query.metrics")
    inverted = backend.client.post("/kpis", json={"name": "x", "above": 1, "below": 2})
    assert inverted.status_code == 400 and inverted.json()["details"]["field"] == "kpi.below"
    missing = backend.client.get("/kpis/no-such-kpi")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_kpi"
    made = _kpi(backend, id="temporary", name="Temporary")
    assert backend.client.get("/kpis/temporary").json()["name"] == made["name"]
    assert backend.client.delete("/kpis/temporary").status_code == 204
    assert backend.client.get("/kpis/temporary").status_code == 404
