"""Destinations: a site's accepted events forwarded by ``metronome worker``.

One source Metronome (``serve --no-shipper``, with the worker run by the tests so they can
restart it) forwards to five destinations at once:

- a webhook receiver in this process that checks every request's HMAC signature and
  timestamp, and can be told to be down, to refuse an event, or to answer slowly;
- a second, real Metronome (the ``metronome`` destination), asked with ``/query``;
- the real RabbitMQ broker of the run (fixture ``rabbitmq``);
- Amplitude's HTTP V2 API and GA4's Measurement Protocol, which cannot be reached from
  here: **test doubles of those outside services**, local HTTP receivers that check each
  request against the documented request format and limits (written from the vendors'
  documentation, independently of the code under test) and record what breaks them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pika
import pytest

from metronome.events.document import Document, new_event_id
from metronome.pipeline.destinations import Cursor, holds, mapping_table, parse_destinations
from metronome.pipeline.destinations.senders import Sent, open_sender
from metronome.pipeline.records import encode
from metronome.pipeline.spool import SpoolWriter
from tests.support.metronome_server import MetronomeServer
from tests.support.rabbitmq import RabbitMQServer

SECRET = "webhook-secret-" + uuid.uuid4().hex
AMPLITUDE_KEY = "amplitude-key-" + uuid.uuid4().hex[:8]
GA4_SECRET = "ga4-secret-" + uuid.uuid4().hex[:8]
GA4_MEASUREMENT = "G-TEST12345"
EXCHANGE = "metronome-destinations-test"


def _wait(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the receivers -------------------------------------------------------------------------


# Amplitude HTTP V2 (amplitude.com/docs/apis/analytics/http-v2): POST a JSON body
# {api_key, events}; at most 2,000 events and under 1 MB a request (413 above); each event
# has an event_type and a user_id or a device_id of at least 5 characters; time in epoch ms.
AMPLITUDE_MAX_EVENTS = 2000
AMPLITUDE_MAX_BYTES = 1_000_000
# GA4 Measurement Protocol (developers.google.com/analytics/devguides/collection/protocol/
# ga4): POST /mp/collect?measurement_id=..&api_secret=.. with {client_id, events}; at most
# 25 events a request, 130 kB a body; event and parameter names of letters, digits and
# underscores starting with a letter, at most 40 characters, no reserved prefix; at most 25
# parameters an event, values at most 100 characters (page_location 1000, page_referrer 420).
GA4_MAX_EVENTS = 25
GA4_MAX_BYTES = 130_000
GA4_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
GA4_RESERVED = ("_", "ad_", "firebase_", "ga_", "google_", "gtag.")
GA4_RESERVED_EVENTS = {"session_start", "first_visit", "user_engagement", "screen_view"}
GA4_VALUE_MAX = {"page_location": 1000, "page_referrer": 420, "page_title": 300}


class Receivers:
    """The webhook receiver and the Amplitude and GA4 test doubles, on one local port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.webhook: list[dict[str, Any]] = []  # events, in the order received
        self.webhook_requests = 0
        self.amplitude: list[dict[str, Any]] = []
        self.ga4: list[tuple[str, dict[str, Any]]] = []  # (client_id, event)
        self.problems: list[str] = []  # requests that broke a documented rule
        self.down = False
        self.refuse_item: str | None = None
        self.delay_s = 0.0
        self.amplitude_invalid_item: str | None = None  # 400 naming that event
        self.amplitude_max_events = AMPLITUDE_MAX_EVENTS  # lower: 413 sooner
        self.amplitude_throttle = False  # one 429 with Retry-After
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                if status == 429:
                    self.send_header("Retry-After", "7")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender was SIGKILLed mid-request: nothing came
                    self.close_connection = True
                    return
                path = urlsplit(self.path)
                if path.path == "/hook":
                    self._answer(*receivers.on_webhook(dict(self.headers), body))
                elif path.path == "/2/httpapi":
                    self._answer(*receivers.on_amplitude(body))
                elif path.path == "/mp/collect":
                    self._answer(*receivers.on_ga4(parse_qs(path.query), body))
                else:
                    self._answer(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _problem(self, text: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.problems.append(text)
        return 400, {"error": text}

    def on_webhook(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        """What a receiver does with the documented signature: recompute it, compare in
        constant time, refuse a timestamp more than 5 minutes away."""
        stamp = headers.get("X-Metronome-Timestamp", "")
        expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        signature = headers.get("X-Metronome-Signature", "")
        if not hmac.compare_digest(signature, "sha256=" + expected.hexdigest()):
            return self._problem("webhook: bad signature")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return self._problem("webhook: stale timestamp")
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.down:
            return 503, {}
        events = json.loads(body)
        if self.refuse_item and any(e.get("item") == self.refuse_item for e in events):
            return 422, {"error": "we do not take that item"}
        with self.lock:
            self.webhook.extend(events)
            self.webhook_requests += 1
        return 200, {}

    def on_amplitude(self, body: bytes) -> tuple[int, dict[str, Any]]:
        if len(body) >= AMPLITUDE_MAX_BYTES:
            return 413, {"error": "Payload too large"}
        payload = json.loads(body)
        if payload.get("api_key") != AMPLITUDE_KEY:
            return self._problem("amplitude: invalid api_key")
        events = payload.get("events")
        if not isinstance(events, list) or not events:
            return self._problem("amplitude: events must be a non-empty list")
        if len(events) > self.amplitude_max_events:
            return 413, {"code": 413, "error": "Payload too large"}
        if self.amplitude_throttle:
            self.amplitude_throttle = False
            return 429, {"code": 429, "error": "Too many requests for some devices and users"}
        invalid = [
            i
            for i, e in enumerate(events)
            if e.get("event_properties", {}).get("item") == self.amplitude_invalid_item
        ]
        if invalid:  # Amplitude's 400 names the events it refuses
            return 400, {
                "code": 400,
                "error": "Request missing required field",
                "events_with_invalid_fields": {"event_type": invalid},
            }
        for event in events:
            ids = [event.get(k) for k in ("user_id", "device_id") if event.get(k) is not None]
            if not ids or not all(isinstance(i, str) and len(i) >= 5 for i in ids):
                return self._problem(f"amplitude: user_id or device_id of 5+ chars: {event}")
            if not isinstance(event.get("event_type"), str) or not event["event_type"]:
                return self._problem(f"amplitude: event_type missing: {event}")
            if not isinstance(event.get("time"), int) or event["time"] < 10**12:
                return self._problem(f"amplitude: time must be epoch ms: {event}")
            if not isinstance(event.get("insert_id"), str):
                return self._problem(f"amplitude: no insert_id: {event}")
        with self.lock:
            self.amplitude.extend(events)
        return 200, {"code": 200, "events_ingested": len(events)}

    def on_ga4(self, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        if query.get("measurement_id") != [GA4_MEASUREMENT]:
            return self._problem("ga4: measurement_id")
        if query.get("api_secret") != [GA4_SECRET]:
            return self._problem("ga4: api_secret")
        if len(body) > GA4_MAX_BYTES:
            return self._problem("ga4: body over 130 kB")
        payload = json.loads(body)
        client_id = payload.get("client_id")
        events = payload.get("events")
        if not isinstance(client_id, str) or not client_id:
            return self._problem("ga4: client_id")
        if not isinstance(events, list) or not 1 <= len(events) <= GA4_MAX_EVENTS:
            return self._problem("ga4: 1 to 25 events a request")
        for event in events:
            name = event.get("name", "")
            if not GA4_NAME.match(name) or name.lower().startswith(GA4_RESERVED):
                return self._problem(f"ga4: event name {name!r}")
            if name in GA4_RESERVED_EVENTS:
                return self._problem(f"ga4: reserved event name {name!r}")
            params = event.get("params", {})
            if len(params) > 25:
                return self._problem(f"ga4: {len(params)} parameters")
            for key, value in params.items():
                if not GA4_NAME.match(key) or key.lower().startswith(GA4_RESERVED):
                    return self._problem(f"ga4: parameter name {key!r}")
                limit = GA4_VALUE_MAX.get(key, 100)
                if isinstance(value, str) and len(value) > limit:
                    return self._problem(f"ga4: {key} longer than {limit}")
                if not isinstance(value, str | int | float):
                    return self._problem(f"ga4: {key} is not a string or number")
        with self.lock:
            self.ga4.extend((client_id, e) for e in events)
        return 204, {}

    def items(self, kind: str) -> list[str]:
        with self.lock:
            if kind == "webhook":
                return [e["item"] for e in self.webhook]
            if kind == "amplitude":
                return [e["event_properties"]["item"] for e in self.amplitude]
            return [e["params"]["item"] for _, e in self.ga4]


# -- the world -----------------------------------------------------------------------------


class World:
    def __init__(
        self, source: MetronomeServer, target: MetronomeServer, receivers: Receivers, amqp: str
    ) -> None:
        self.source = source
        self.target = target
        self.receivers = receivers
        self.amqp = amqp
        self.worker: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=source.url, timeout=30)

    def start_worker(self) -> None:
        assert self.worker is None or self.worker.poll() is not None
        data = self.source.data_dir  # beside it, its own: tests in other processes run too
        log = open(data.with_name(data.name + "-worker.log"), "ab")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "metronome", "worker"],
            env=self.source.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        log.close()

    def stop_worker(self) -> int:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGTERM)
        return self.worker.wait(timeout=60)

    def send(self, items: list[str], **fields: Any) -> None:
        ticks = [{"id": item, **fields} for item in items]
        resp = self.client.post("/ticks", json=ticks)
        assert resp.status_code == 202 and resp.json()["accepted"] == len(items), resp.text

    def queued(self, items: set[str]) -> list[dict[str, Any]]:
        """The RabbitMQ messages about ``items`` (taken off the test's queue)."""
        got: list[dict[str, Any]] = []
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp))
        try:
            channel = connection.channel()
            while True:
                method, properties, body = channel.basic_get(EXCHANGE, auto_ack=True)
                if method is None:
                    break
                event = json.loads(body)
                event["_message_id"] = properties.message_id
                event["_routing_key"] = method.routing_key
                got.append(event)
        finally:
            connection.close()
        return [e for e in got if e["item"] in items]

    def target_items(self, prefix: str) -> dict[str, int]:
        resp = httpx.post(
            self.target.url + "/query",
            json={"metrics": ["events"], "dimensions": ["item.id"], "range": "7d", "limit": 1000},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return {
            row["dimensions"][0]: row["metrics"][0]
            for row in resp.json()["results"]
            if row["dimensions"][0].startswith(prefix)
        }

    def metrics(self) -> str:
        return self.client.get("/metrics").text


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    found = Receivers()
    try:
        yield found
    finally:
        found.close()


@pytest.fixture(scope="module")
def world(rabbitmq: RabbitMQServer, receivers: Receivers) -> Iterator[World]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    channel.queue_declare(EXCHANGE, durable=True)
    channel.queue_bind(EXCHANGE, EXCHANGE, routing_key="metronome.#")
    connection.close()
    target = MetronomeServer({"METRONOME_SHIP_POLL_MS": "50"}, workers=1)
    target.start()
    config = Path(tempfile.mkdtemp(prefix="metronome-destinations-")) / "metronome.toml"
    secret_file = config.parent / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    config.write_text(
        f"""
[[destinations]]
name = "hook"
site = "default"
type = "webhook"
url = "{receivers.url}/hook"
secret_file = "{secret_file}"
batch_size = 5
backoff_max = 0.5

[[destinations]]
name = "amp"
site = "default"
type = "amplitude"
url = "{receivers.url}/2/httpapi"
api_key_env = "TEST_AMPLITUDE_KEY"
events = ["view", "download"]

[[destinations]]
name = "ga"
site = "default"
type = "ga4"
url = "{receivers.url}/mp/collect"
measurement_id = "{GA4_MEASUREMENT}"
api_secret_env = "TEST_GA4_SECRET"

[[destinations]]
name = "mirror"
site = "default"
type = "metronome"
url = "{target.url}"

[[destinations]]
name = "queue"
site = "default"
type = "rabbitmq"
url_env = "TEST_AMQP_URL"
exchange = "{EXCHANGE}"
"""
    )
    source = MetronomeServer(
        {
            "METRONOME_CONFIG": str(config),
            "METRONOME_SHIP_POLL_MS": "50",
            "TEST_AMPLITUDE_KEY": AMPLITUDE_KEY,
            "TEST_GA4_SECRET": GA4_SECRET,
            "TEST_AMQP_URL": rabbitmq.url,
        },
        args=("--no-shipper",),
    )
    source.start(wait_ready=False)
    world = World(source, target, receivers, rabbitmq.url)
    world.start_worker()
    try:
        yield world
    finally:
        if world.worker is not None and world.worker.poll() is None:
            world.stop_worker()
        world.client.close()
        source.stop()
        target.stop()


def _prefix() -> str:
    return "d" + uuid.uuid4().hex[:6] + "-"


# -- end to end ----------------------------------------------------------------------------


def test_every_destination_receives_the_sites_events_mapped_to_its_model(world: World) -> None:
    p = _prefix()
    items = [f"{p}{n}" for n in range(6)]
    world.send(
        items,
        event="download",
        format="PDF",
        url="https://example.org/reports/a.pdf",
        referrer="https://search.example/?q=a",
        lang="en",
        user_id="user-12345",
    )
    world.send([f"{p}other"], event="signup")  # not among amp's event names
    everything = set(items) | {f"{p}other"}
    _wait(lambda: set(world.receivers.items("webhook")) >= everything, "the webhook")
    _wait(lambda: set(world.receivers.items("amplitude")) >= set(items), "amplitude")
    _wait(lambda: set(world.receivers.items("ga4")) >= everything, "ga4")
    _wait(lambda: len(world.target_items(p)) == 7, "the other Metronome")
    queued: list[dict[str, Any]] = []

    def all_queued() -> bool:
        queued.extend(world.queued(everything))
        return len(queued) >= 7

    _wait(all_queued, "rabbitmq")
    assert world.receivers.problems == []

    hook = next(e for e in world.receivers.webhook if e["item"] == items[0])
    assert hook["event"] == "download" and hook["format"] == "pdf"
    assert hook["url"] == "https://example.org/reports/a.pdf"
    assert hook["referrer"] == "https://search.example/?q=a"
    assert hook["site"] == "default" and hook["dataset"] == "ticks"
    assert hook["params"] == {"lang": "en", "user_id": "user-12345"}
    assert len(hook["id"]) == 32 and abs(hook["time"] / 1000 - time.time()) < 300

    amp = next(e for e in world.receivers.amplitude if e["event_properties"]["item"] == items[0])
    assert amp["event_type"] == "download" and amp["insert_id"] == hook["id"]
    assert amp["user_id"] == "user-12345" and amp["time"] == hook["time"]
    assert amp["event_properties"]["lang"] == "en"
    assert f"{p}other" not in world.receivers.items("amplitude")  # filtered by event name

    client_id, ga = next(x for x in world.receivers.ga4 if x[1]["params"]["item"] == items[0])
    assert ga["name"] == "download" and ga["timestamp_micros"] == hook["time"] * 1000
    assert ga["params"]["page_location"] == hook["url"]
    assert ga["params"]["page_referrer"] == hook["referrer"]
    assert client_id  # the visitor, or the event id when there is none

    assert world.target_items(p) == dict.fromkeys(everything, 1)

    message = next(e for e in queued if e["item"] == items[0])
    assert message["_message_id"] == hook["id"]
    assert message["_routing_key"] == "metronome.default.download"
    assert {k: v for k, v in message.items() if not k.startswith("_")} == hook


def test_a_destination_down_for_a_while_gets_everything_once_in_order(world: World) -> None:
    p = _prefix()
    items = [f"{p}{n:03d}" for n in range(30)]
    world.receivers.down = True
    try:
        for start in range(0, 30, 10):
            world.send(items[start : start + 10])

        def behind_and_failing() -> bool:
            text = world.metrics()
            return (
                _metric(text, "metronome_destination_lag_events", destination="hook") >= 30
                and _metric(text, "metronome_destination_failures_total", destination="hook") >= 1
            )

        _wait(behind_and_failing, "the webhook's lag and failures in /metrics")
        # the store got everything meanwhile: a destination that is down holds nothing up
        _wait(lambda: len(world.target_items(p)) == 30, "the other Metronome")
        assert not set(items) & set(world.receivers.items("webhook"))
    finally:
        world.receivers.down = False
    _wait(lambda: set(world.receivers.items("webhook")) >= set(items), "the webhook, back up")
    got = [i for i in world.receivers.items("webhook") if i.startswith(p)]
    assert got == items  # each once, in the order they were received
    _wait(
        lambda: (
            _metric(world.metrics(), "metronome_destination_lag_events", destination="hook") == 0
        ),
        "no lag",
    )


def test_an_event_the_destination_refuses_is_dead_lettered_and_the_rest_delivered(
    world: World,
) -> None:
    p = _prefix()
    poison = f"{p}poison"
    items = [f"{p}a", f"{p}b", poison, f"{p}c", f"{p}d"]
    before = _metric(
        world.metrics(),
        "metronome_destination_events_total",
        destination="hook",
        outcome="dead_lettered",
    )
    dead = world.source.data_dir / "dead-letters-hook.ndjson"

    def refused() -> list[dict[str, Any]]:
        if not dead.exists():
            return []
        lines = [json.loads(line) for line in dead.read_text().splitlines()]
        return [x for x in lines if x.get("document", {}).get("item", {}).get("id") == poison]

    world.receivers.refuse_item = poison
    try:
        world.send(items)
        _wait(refused, "the dead letter")
        _wait(
            lambda: set(world.receivers.items("webhook")) >= set(items) - {poison},
            "the rest of the batch",
        )
    finally:
        world.receivers.refuse_item = None
    (line,) = refused()
    assert "422" in line["reason"] and line["destination"] == "hook"
    assert dead.stat().st_mode & 0o777 == 0o600
    assert poison not in world.receivers.items("webhook")
    _wait(
        lambda: (
            _metric(
                world.metrics(),
                "metronome_destination_events_total",
                destination="hook",
                outcome="dead_lettered",
            )
            == before + 1
        ),
        "the dead-lettered counter",
    )
    status = world.source.run_cli("status")
    assert "destination:  hook (webhook, site default)" in status.stdout, status
    assert "dead-lettered" in status.stdout


def test_a_worker_restarted_mid_delivery_loses_and_duplicates_nothing(world: World) -> None:
    p = _prefix()
    items = [f"{p}{n:03d}" for n in range(40)]
    world.receivers.delay_s = 0.1  # a slow receiver: the worker stops in the middle
    try:
        for start in range(0, 40, 10):
            world.send(items[start : start + 10])
        _wait(
            lambda: sum(i.startswith(p) for i in world.receivers.items("webhook")) >= 10, "a start"
        )
        assert world.stop_worker() == 0
        delivered = sum(i.startswith(p) for i in world.receivers.items("webhook"))
        assert delivered < 40, "the worker stopped after everything was delivered"
        world.start_worker()
    finally:
        world.receivers.delay_s = 0.0
    _wait(lambda: set(world.receivers.items("webhook")) >= set(items), "the rest, after a restart")
    got = [i for i in world.receivers.items("webhook") if i.startswith(p)]
    assert got == items  # nothing lost, nothing twice, in order


def _first_each(pairs: list[tuple[str, str]]) -> tuple[list[str], int]:
    """(item of each event id, in the order first received; how many came again)."""
    seen: set[str] = set()
    order: list[str] = []
    for event_id, item in pairs:
        if event_id not in seen:
            seen.add(event_id)
            order.append(item)
    return order, len(pairs) - len(order)


def test_a_worker_killed_mid_delivery_leaves_each_receiver_every_event_once(
    world: World,
) -> None:
    """SIGKILL, not a clean stop, several times while ticks flow: each receiver ends with
    every event once by id, in order; another Metronome stores a resent event once itself,
    and whatever came twice elsewhere was announced as in doubt (GA4: one request a time)."""
    p = _prefix()
    items = [f"{p}{n:03d}" for n in range(300)]
    before = world.metrics()

    def in_doubt(text: str, name: str) -> float:
        return _metric(
            text, "metronome_destination_events_total", destination=name, outcome="in_doubt"
        )

    sent = threading.Event()
    failures: list[BaseException] = []

    def flow() -> None:
        try:
            for start in range(0, len(items), 10):
                world.send(items[start : start + 10])
                time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            sent.set()

    def hook_count() -> int:
        return sum(i.startswith(p) for i in world.receivers.items("webhook"))

    world.receivers.delay_s = 0.03  # each webhook request takes a while: kills land mid-way
    sender = threading.Thread(target=flow)
    sender.start()
    kills = 0
    try:
        for _ in range(4):
            reached = hook_count()
            _wait(lambda r=reached: hook_count() >= r + 15, "delivery after a (re)start")
            assert world.worker is not None
            os.killpg(world.worker.pid, signal.SIGKILL)
            world.worker.wait(timeout=30)
            kills += 1
            world.start_worker()
    finally:
        sender.join(timeout=120)
        world.receivers.delay_s = 0.0
    assert not failures, failures
    assert kills == 4 and sent.is_set()
    assert hook_count() < len(items) * 2  # the kills did land while events were flowing

    wanted = set(items)
    _wait(lambda: set(world.receivers.items("webhook")) >= wanted, "the webhook")
    _wait(lambda: set(world.receivers.items("ga4")) >= wanted, "ga4")
    _wait(lambda: set(world.receivers.items("amplitude")) >= wanted, "amplitude")
    _wait(lambda: world.target_items(p) == dict.fromkeys(items, 1), "the other Metronome")
    queued: list[dict[str, Any]] = []

    def all_queued() -> bool:
        queued.extend(world.queued(wanted))
        return {e["item"] for e in queued} >= wanted

    _wait(all_queued, "rabbitmq")
    after = world.metrics()
    assert world.receivers.problems == []

    with world.receivers.lock:
        hook = [(e["id"], e["item"]) for e in world.receivers.webhook if e["item"] in wanted]
        amp = [
            (e["insert_id"], e["event_properties"]["item"])
            for e in world.receivers.amplitude
            if e["event_properties"]["item"] in wanted
        ]
        ga = [(e["params"]["item"], e["params"]["item"]) for _, e in world.receivers.ga4]
        ga = [x for x in ga if x[0] in wanted]
    rabbit = [(e["_message_id"], e["item"]) for e in queued]
    for name, pairs in (("hook", hook), ("amp", amp), ("queue", rabbit)):
        order, again = _first_each(pairs)
        assert order == items, name  # every event once by id, in order
        assert again <= in_doubt(after, name) - in_doubt(before, name), name
    # the same event always carries the same id: the webhook's and the message's agree
    assert dict((i, e) for e, i in hook) == dict((i, e) for e, i in rabbit)
    # GA4 cannot drop a resent event: what came twice is at most the requests in doubt
    order, again = _first_each(ga)
    assert order == items
    doubted = in_doubt(after, "ga") - in_doubt(before, "ga")
    assert again <= doubted <= kills * 25
    # another Metronome dropped what was sent again itself (asked above: each item once)
    assert world.target_items(p) == dict.fromkeys(items, 1)
    if in_doubt(after, "hook") > in_doubt(before, "hook"):
        status = world.source.run_cli("status")
        (line,) = [x for x in status.stdout.splitlines() if "destination:  hook " in x]
        assert " in doubt (last " in line, line


# -- the parts -----------------------------------------------------------------------------


def test_the_guide_shows_the_declared_field_mapping() -> None:
    guide = Path(__file__).parent.parent / "docs" / "guides" / "destinations.md"
    assert mapping_table() in guide.read_text()


def test_a_secret_in_the_configuration_file_itself_is_refused(tmp_path: Path) -> None:
    from metronome.errors import ConfigError

    table = {"name": "x", "site": "default", "type": "webhook", "url": "http://h/"}
    with pytest.raises(ConfigError, match=r"secret_env or secret_file"):
        parse_destinations([table], spool_max_bytes=1 << 20, environ={})
    with pytest.raises(ConfigError, match=r"by reference"):
        parse_destinations([{**table, "secret": "s3cret"}], spool_max_bytes=1 << 20, environ={})
    with pytest.raises(ConfigError, match=r"NOPE is not set"):
        parse_destinations([{**table, "secret_env": "NOPE"}], spool_max_bytes=1 << 20, environ={})
    (found,) = parse_destinations(
        [{**table, "secret_env": "HOOK"}],
        spool_max_bytes=1 << 20,
        environ={"HOOK": "hook-secret-value"},
    )
    assert found.secrets == {"secret": "hook-secret-value"}
    assert "hook-secret-value" not in repr(found)
    with pytest.raises(ConfigError, match=r"batch_size"):
        parse_destinations(
            [
                {
                    "name": "g",
                    "site": "default",
                    "type": "ga4",
                    "measurement_id": "G-1",
                    "api_secret_env": "HOOK",
                    "batch_size": 26,
                }
            ],
            spool_max_bytes=1 << 20,
            environ={"HOOK": "hook-secret-value"},
        )


def test_a_destination_holds_segments_only_up_to_its_backlog_limit(tmp_path: Path) -> None:
    """The shipper keeps what a destination has not passed; past its backlog limit the
    destination gives the oldest segments up (recorded), so the spool cannot fill."""
    spool = tmp_path / "spool"

    async def write() -> None:
        writer = SpoolWriter(spool, segment_max_bytes=500, max_total_bytes=1 << 20)
        for n in range(30):
            source = {"item": {"id": f"i{n}"}, "site": {"id": "default"}}
            await writer.append([encode(Document(new_event_id(), 0, "ticks", source))])
        writer.close()

    asyncio.run(write())
    cursor = Cursor(spool, "slow")
    lag = cursor.lag()
    assert lag.events == 30 and lag.bytes > 1500
    needed = holds(spool, ["slow"])
    segments = sorted(spool.glob("*.seg"))
    assert len(segments) > 2 and all(needed(s, s.stat().st_size) for s in segments)
    given = cursor.give_up(max_bytes=700)
    assert given and sum(events for _, _, events, _, _ in given) + cursor.lag().events == 30
    assert 0 < cursor.lag().bytes <= 700
    assert not needed(segments[0], segments[0].stat().st_size)
    read = cursor.read(max_entries=100, max_bytes=1 << 20)
    assert [e.document.source["item"]["id"] for e in read] == [
        f"i{n}" for n in range(30 - cursor.lag().events, 30)
    ]


def _documents(*ticks: dict[str, Any]) -> list[Document]:
    now = int(time.time() * 1000)
    found = []
    for n, fields in enumerate(ticks):
        source = {
            "event": {"action": fields.pop("event", "view")},
            "item": {"id": fields.pop("item")},
            "site": {"id": "default"},
            "visitor": {"id": fields.pop("visitor", "visitor-1")},
            "params": fields,
        }
        found.append(Document(new_event_id(now + n), now + n, "ticks", source))
    return found


def _send(table: dict[str, Any], documents: list[Document]) -> Sent:
    (destination,) = parse_destinations(
        [{"name": "t", "site": "default", **table}],
        spool_max_bytes=1 << 30,
        environ={"KEY": AMPLITUDE_KEY, "GA4": GA4_SECRET},
    )

    async def run() -> Sent:
        sender = open_sender(destination)
        try:
            return await sender.send(documents)
        finally:
            await sender.close()

    return asyncio.run(run())


def test_amplitude_refusals_dead_letter_only_the_events_it_names(receivers: Receivers) -> None:
    """Amplitude's 400 lists the bad events: only those are refused, the rest resent; a 413
    halves the batch until it fits; a 429 waits for the Retry-After it sends."""
    p = _prefix()
    table = {"type": "amplitude", "url": receivers.url + "/2/httpapi", "api_key_env": "KEY"}
    documents = _documents(*({"item": f"{p}{n}"} for n in range(8)))
    receivers.amplitude_invalid_item = f"{p}5"
    receivers.amplitude_max_events = 3
    try:
        sent = _send(table, documents)
    finally:
        receivers.amplitude_invalid_item = None
        receivers.amplitude_max_events = AMPLITUDE_MAX_EVENTS
    assert sent.acked == 8 and list(sent.refused) == [5] and "400" in sent.refused[5]
    got = [i for i in receivers.items("amplitude") if i.startswith(p)]
    assert sorted(got) == sorted(f"{p}{n}" for n in range(8) if n != 5)
    assert receivers.problems == []

    receivers.amplitude_throttle = True
    throttled = _send(table, _documents({"item": f"{p}late"}))
    assert throttled.acked == 0 and throttled.retry_after_s == 7.0
    assert _send(table, _documents({"item": f"{p}late"})).acked == 1


def test_ga4_gets_names_and_values_cleaned_to_its_rules(receivers: Receivers) -> None:
    p = _prefix()
    many = {f"param_{n:02d}": n for n in range(30)}
    documents = _documents(
        {"item": f"{p}1", "event": "page view!", "_private": "x", "long": "y" * 300, **many},
        {"item": f"{p}2", "event": "session_start"},
        {"item": f"{p}3", "event": "2fa-enabled", "visitor": "visitor-2"},
        {"item": f"{p}4", "event": "x" * 60, "visitor": "visitor-2"},
    )
    table = {
        "type": "ga4",
        "url": receivers.url + "/mp/collect",
        "measurement_id": GA4_MEASUREMENT,
        "api_secret_env": "GA4",
    }
    assert _send(table, documents).acked == 4
    assert receivers.problems == []
    got = {
        e["params"]["item"]: (c, e) for c, e in receivers.ga4 if e["params"]["item"].startswith(p)
    }
    assert got[f"{p}1"][1]["name"] == "page_view"
    assert got[f"{p}2"][1]["name"] == "mt_session_start"
    assert got[f"{p}3"][1]["name"] == "e_2fa_enabled"
    assert got[f"{p}4"][1]["name"] == "x" * 40
    first = got[f"{p}1"][1]["params"]
    assert len(first) == 25 and first["long"] == "y" * 100 and first["private"] == "x"
    assert {got[f"{p}1"][0], got[f"{p}3"][0]} == {"visitor-1", "visitor-2"}  # one client each


def test_a_destination_takes_only_its_sites_sources_and_event_names() -> None:
    (d,) = parse_destinations(
        [
            {
                "name": "t",
                "site": "shop",
                "type": "amplitude",
                "api_key_env": "KEY",
                "events": ["purchase"],
                "sources": ["all"],
            }
        ],
        spool_max_bytes=1 << 30,
        environ={"KEY": AMPLITUDE_KEY},
    )
    purchase = {"site": {"id": "shop"}, "event": {"action": "purchase"}}
    assert d.wants(purchase, "ticks") and d.wants(purchase, "logs")
    assert not d.wants(purchase, "metrics")  # not among the sources
    assert not d.wants({**purchase, "site": {"id": "blog"}}, "ticks")  # another site's
    assert not d.wants({**purchase, "event": {"action": "view"}}, "ticks")
