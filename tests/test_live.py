"""Live subscriptions over real WebSocket and Server-Sent Events connections to
``metronome serve`` (two workers): authentication on the handshake, a site's data only,
events acknowledged by any worker, coalescing, unsubscribe, heartbeats, limits with their
close codes, and a slow reader closed while the others keep receiving.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.sync.client import connect
from websockets.uri import parse_uri

from tests.support.metronome_server import MetronomeServer

PAGES = "http://pages.example"


@dataclass
class World:
    """A server with sites ``demo`` (pages at :data:`PAGES`) and ``other``, and keys."""

    server: MetronomeServer
    query_key: str
    ingest_key: str
    other_ingest_key: str
    ingest_only_key: str

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "/live"

    def token(self, key: str | None = None, *, new_key_s: float = 0) -> str:
        """A live token for ``key``; ``new_key_s``: how long a key just made may be unknown
        (the workers reload keys every second here)."""
        deadline = time.monotonic() + new_key_s
        while True:
            resp = httpx.post(
                f"{self.server.url}/live/token",
                headers={"Authorization": f"Bearer {key or self.query_key}"},
            )
            if resp.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["token"])

    def ticks(self, ticks: list[dict[str, Any]], key: str | None = None) -> None:
        """Send ``ticks`` one request each, each on a new connection (so on either worker)."""
        for tick in ticks:
            resp = httpx.post(
                f"{self.server.url}/tick",
                json=tick,
                headers={"Authorization": f"Bearer {key or self.ingest_key}"},
            )
            assert resp.status_code == 202, resp.text


def _cli_json(server: MetronomeServer, *args: str) -> Any:
    return server.cli_json(*args)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    srv = MetronomeServer(
        {
            "METRONOME_SITES_CACHE_S": "1",
            "METRONOME_RATE_LIMIT_PER_IP": "0",
            "METRONOME_RATE_LIMIT_PER_SITE": "0",
            "METRONOME_LIVE_PING_S": "1",
            "METRONOME_LIVE_MIN_FREQUENCY_MS": "100",
            "METRONOME_LIVE_BUFFER_BYTES": "8192",
            "METRONOME_SHIP_POLL_MS": "50",
        },
        data_dir=tmp_path_factory.mktemp("live"),
        workers=2,
    )
    _cli_json(srv, "sites", "create", "--id", "demo", "--name", "Demo", "--origin", PAGES)
    _cli_json(srv, "sites", "create", "--id", "other", "--name", "Other")
    keys = {
        name: _cli_json(srv, "keys", "create", "--site", site, *scopes)["secret"]
        for name, site, scopes in [
            ("query", "demo", ("--scope", "query")),
            ("ingest", "demo", ("--scope", "ingest")),
            ("other", "other", ("--scope", "ingest")),
        ]
    }
    srv.start()
    yield World(srv, keys["query"], keys["ingest"], keys["other"], keys["ingest"])
    assert srv.stop() == 0, srv.log_tail()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


class LiveClient:
    """A WebSocket client whose reader thread answers pings (as a browser's page does) and
    queues every other message."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.ws = connect(url, **kwargs).__enter__()  # closed by __exit__
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.closed: ConnectionClosed | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for text in self.ws:
                message = json.loads(text)
                if message["type"] == "ping":
                    self.ws.send('{"type":"pong"}')
                else:
                    self.messages.put(message)
        except ConnectionClosed as exc:
            self.closed = exc
        self.messages.put(None)

    def __enter__(self) -> LiveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws.close()
        self._thread.join(10)

    def send(self, message: dict[str, Any] | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def subscribe(self, sub_id: str, query: dict[str, Any], frequency: Any = 200) -> None:
        self.send({"type": "subscribe", "id": sub_id, "query": query, "frequency": frequency})

    def next(self, kind: str | None = None, timeout_s: float = 15.0) -> dict[str, Any]:
        """The next message (of type ``kind``); an error message fails the test."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no {kind or 'message'} in {timeout_s} s") from None
            if message is None:
                self.messages.put(None)
                raise AssertionError(f"closed while waiting for {kind}: {self.closed}")
            if kind is None or message["type"] == kind:
                return message
            if message["type"] == "error":
                raise AssertionError(message)

    def until_count(self, sub_id: str, expected: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.next("result", deadline - time.monotonic())
            if result["id"] == sub_id and _count(result) == expected:
                return

    def close_frame(self, timeout_s: float = 15) -> tuple[int, str]:
        """Wait until the server closes; its close code and reason."""
        self._thread.join(timeout_s)
        assert self.closed is not None and self.closed.rcvd is not None, list(self.messages.queue)
        return self.closed.rcvd.code, self.closed.rcvd.reason


def _count_query(item: str) -> dict[str, Any]:
    return {"range": "10min", "metrics": ["events"], "filters": [["is", "item.id", [item]]]}


def _count(result: dict[str, Any]) -> int:
    return int(result["data"]["results"][0]["metrics"][0])


def test_handshake_needs_a_query_key_or_a_token_and_an_allowed_origin(world: World) -> None:
    def refused(headers: dict[str, str], query: str = "") -> tuple[int, str]:
        with pytest.raises(InvalidStatus) as caught:
            connect(world.ws_url + query, additional_headers=headers, open_timeout=10)
        response = caught.value.response
        return response.status_code, json.loads(response.body or b"{}").get("error", "")

    assert refused({}) == (401, "key_required")
    assert refused({"Authorization": f"Bearer {world.ingest_key}"}) == (403, "scope_forbidden")
    token = world.token()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert refused({}, f"?token={forged}") == (401, "invalid_key")
    assert refused({"Origin": "https://evil.example"}, f"?token={token}") == (
        403,
        "origin_forbidden",
    )
    minted = httpx.post(
        f"{world.server.url}/live/token",
        headers={"Authorization": f"Bearer {world.ingest_key}"},
    )
    assert (minted.status_code, minted.json()["error"]) == (403, "scope_forbidden")
    again = httpx.post(
        f"{world.server.url}/live/token", headers={"Authorization": f"Bearer {token}"}
    )
    assert (again.status_code, again.json()["error"]) == (401, "invalid_key")

    for headers, query in [
        ({"Authorization": f"Bearer {world.query_key}"}, ""),  # a server, with its key
        ({"Origin": PAGES}, f"?token={token}"),  # a page of the site, with a token
    ]:
        with connect(world.ws_url + query, additional_headers=headers) as ws:
            welcome = json.loads(ws.recv(timeout=10))
            assert welcome["type"] == "welcome" and welcome["site"] == "demo"


def test_a_subscriber_sees_its_site_only_and_events_acknowledged_by_any_worker(
    world: World,
) -> None:
    """Four connections (the kernel spreads them over both workers) hold one subscription;
    ticks are sent on fresh connections (to either worker), for this site and another."""
    item = "item-" + uuid.uuid4().hex[:10]
    token = world.token()
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(LiveClient(f"{world.ws_url}?token={token}")) for _ in range(4)
        ]
        for client in clients:
            client.subscribe("count", _count_query(item))
            assert client.next("subscribed")["interval_ms"] == 200
            assert _count(client.next("result")) == 0
        world.ticks([{"id": item} for _ in range(5)])
        world.ticks([{"id": item} for _ in range(3)], key=world.other_ingest_key)
        for client in clients:
            client.until_count("count", 5)
        time.sleep(1.0)  # the other site's ticks are stored by now, and never counted
        for client in clients:
            with pytest.raises(TimeoutError):
                client.next("result", timeout_s=1.0)


def test_pushes_come_at_most_once_per_interval_coalesced_and_only_on_change(
    world: World,
) -> None:
    item = "item-" + uuid.uuid4().hex[:10]
    with LiveClient(f"{world.ws_url}?token={world.token()}") as client:
        client.subscribe("burst", _count_query(item), frequency=1500)
        client.next("subscribed")
        assert _count(client.next("result")) == 0
        sender = threading.Thread(
            target=world.ticks, args=([{"id": item} for _ in range(24)],), daemon=True
        )
        sender.start()  # a few seconds of ticks, one request each
        pushes: list[tuple[float, int]] = []
        while not pushes or pushes[-1][1] < 24:
            pushes.append((time.monotonic(), _count(client.next("result", timeout_s=20))))
        sender.join()
        gaps = [b[0] - a[0] for a, b in zip(pushes, pushes[1:], strict=False)]
        assert all(gap >= 1.3 for gap in gaps), gaps  # at most once per 1.5 s
        assert len(pushes) < 24 / 2, pushes  # bursts were coalesced
        assert [c for _, c in pushes] == sorted(c for _, c in pushes)
        with pytest.raises(TimeoutError):  # unchanged: three intervals without a push
            client.next("result", timeout_s=4.5)


def test_unsubscribe_stops_the_pushes_and_other_subscriptions_go_on(world: World) -> None:
    item = "item-" + uuid.uuid4().hex[:10]
    with LiveClient(f"{world.ws_url}?token={world.token()}") as client:
        client.subscribe("a", _count_query(item))
        client.subscribe("b", {**_count_query(item), "metrics": ["events", "visitors"]})
        seen = {client.next("result")["id"], client.next("result")["id"]}
        assert seen == {"a", "b"}
        client.send({"type": "unsubscribe", "id": "a"})
        assert client.next("unsubscribed")["id"] == "a"
        world.ticks([{"id": item}])
        result = client.next("result")
        assert result["id"] == "b" and result["data"]["results"][0]["metrics"] == [1, 1]
        with pytest.raises(TimeoutError):
            client.next("result", timeout_s=1.5)


def test_a_bad_subscription_is_answered_with_an_error_and_the_connection_stays(
    world: World,
) -> None:
    with LiveClient(f"{world.ws_url}?token={world.token()}") as client:
        assert client.next()["type"] == "welcome"
        client.subscribe("x", {"metrics": ["nope"]})
        error = client.next()
        assert (error["type"], error["id"], error["error"]) == ("error", "x", "invalid_query")
        client.send("not json")
        assert client.next()["error"] == "invalid_json"
        client.subscribe("x", {"range": "5min"}, frequency=50)  # under the minimum
        assert client.next()["error"] == "invalid_field"
        client.subscribe("x", {"range": "5min"})
        assert client.next()["id"] == "x"


def test_heartbeat_closes_a_client_that_leaves_two_pings_unanswered(world: World) -> None:
    """Pings every second: the silent client is closed with 4000 after two; the one that
    answers is still open then."""
    token = world.token()
    with (
        connect(f"{world.ws_url}?token={token}") as silent,
        LiveClient(f"{world.ws_url}?token={token}") as answering,
    ):
        started = time.monotonic()
        pings = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                pings += json.loads(silent.recv(timeout=15))["type"] == "ping"
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            4000,
            "two pings went unanswered",
        )
        assert pings == 2 and 2.5 < time.monotonic() - started < 8
        time.sleep(1.5)
        answering.subscribe("alive", {"range": "5min"})
        assert answering.next("subscribed")["id"] == "alive"


def test_server_sent_events_carry_the_same_messages(world: World) -> None:
    item = "item-" + uuid.uuid4().hex[:10]
    sub = json.dumps({"id": "now", "query": _count_query(item), "frequency": "high"})
    params = {"token": world.token(), "s": sub}
    with httpx.stream("GET", f"{world.server.url}/live/events", params=params, timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        messages = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))
        assert next(messages)["type"] == "welcome"
        assert next(messages) == {"type": "subscribed", "id": "now", "interval_ms": 1000}
        first = next(m for m in messages if m["type"] == "result")
        assert _count(first) == 0
        world.ticks([{"id": item}, {"id": item}])
        assert _count(next(m for m in messages if m["type"] == "result")) == 2
    bad = httpx.get(f"{world.server.url}/live/events", params={**params, "s": "{}"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_field")
    anonymous = httpx.get(f"{world.server.url}/live/events", params={"s": sub})
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "key_required")


class RawClient:
    """A WebSocket client on a bare socket that reads only when told (a slow reader)."""

    def __init__(self, url: str) -> None:
        self.proto = ClientProtocol(parse_uri(url))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        uri = parse_uri(url)
        self.sock.connect((uri.host, uri.port))
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.handshake_exc is None and not self._handshaken():
            self.proto.receive_data(self.sock.recv(65536))
        self.proto.events_received()

    def _handshaken(self) -> bool:
        return self.proto.state.name == "OPEN"

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.proto.data_to_send()))

    def send(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._flush()

    def read_until_closed(self, timeout_s: float) -> Close | None:
        self.sock.settimeout(timeout_s)
        while self.proto.close_rcvd is None:
            data = self.sock.recv(1 << 20)
            if not data:
                break
            self.proto.receive_data(data)
            self.proto.events_received()
        self.sock.close()
        return self.proto.close_rcvd


def test_a_slow_reader_is_closed_and_never_slows_the_others(world: World) -> None:
    """A client stops reading while its subscription's answer grows and changes ten times
    a second: the server coalesces, then closes it (4008); another subscriber of the same
    site keeps getting every change meanwhile."""
    prefix = "slow-" + uuid.uuid4().hex[:8] + "-" + "x" * 150
    token = world.token()
    query = {
        "range": "10min",
        "dimensions": ["item.id"],
        "filters": [["contains", "item.id", [prefix[:13]]]],
        "limit": 1000,
    }
    slow = RawClient(f"{world.ws_url}?token={token}")
    slow.send(json.dumps({"type": "subscribe", "id": "big", "query": query, "frequency": 100}))
    stop = threading.Event()
    sent = [0]

    def feed() -> None:
        with httpx.Client(
            base_url=world.server.url,
            headers={"Authorization": f"Bearer {world.ingest_key}"},
        ) as client:
            while not stop.is_set():
                batch = [{"id": f"{prefix}-{sent[0] + i}"} for i in range(20)]
                assert client.post("/ticks", json=batch).status_code == 202
                sent[0] += len(batch)
                if sent[0] % 100 == 0:
                    slow.send('{"type":"pong"}')  # alive, answering pings, but never reading
                time.sleep(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with LiveClient(f"{world.ws_url}?token={token}") as healthy:
            healthy.subscribe("rows", {**query, "metrics": ["events"], "dimensions": []})
            counts = []
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline:
                counts.append(_count(healthy.next("result", timeout_s=5)))
            assert len(counts) >= 10 and counts == sorted(counts) and counts[-1] > counts[0]
    finally:
        stop.set()
        feeder.join()
    close = slow.read_until_closed(timeout_s=40)
    assert close is not None, "the slow reader was not closed"
    assert close.code == 4008, close
    assert "too slowly" in close.reason or "read nothing" in close.reason


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MetronomeServer, dict]]:
    """One worker; two sites with a query key each; 2 connections per site, 3 in all, 2
    subscriptions per connection, messages of at most 1024 bytes."""
    srv = MetronomeServer(
        {
            "METRONOME_SITES_CACHE_S": "1",
            "METRONOME_LIVE_MAX_CONNECTIONS": "3",
            "METRONOME_LIVE_MAX_CONNECTIONS_PER_SITE": "2",
            "METRONOME_LIVE_MAX_SUBSCRIPTIONS": "2",
            "METRONOME_LIVE_MAX_MESSAGE_BYTES": "1024",
        },
        data_dir=tmp_path_factory.mktemp("live-limits"),
        workers=1,
    )
    keys = {}
    for site in ("s1", "s2"):
        _cli_json(srv, "sites", "create", "--id", site, "--name", site)
        keys[site] = _cli_json(srv, "keys", "create", "--site", site, "--scope", "query")["secret"]
    srv.start()
    yield srv, keys
    assert srv.stop() == 0, srv.log_tail()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


def test_limits_close_with_a_code_and_a_reason(limited: tuple[MetronomeServer, dict]) -> None:
    srv, keys = limited
    url = srv.url.replace("http://", "ws://") + "/live"
    stack = contextlib.ExitStack()

    def open_for(site: str) -> LiveClient:
        headers = {"Authorization": f"Bearer {keys[site]}"}
        return stack.enter_context(LiveClient(url, additional_headers=headers))

    with stack:
        first, second = open_for("s1"), open_for("s1")
        code, reason = open_for("s1").close_frame()
        assert code == 4029 and "'s1'" in reason and "PER_SITE" in reason
        third = open_for("s2")
        code, reason = open_for("s2").close_frame()
        assert code == 4029 and "METRONOME_LIVE_MAX_CONNECTIONS)" in reason
        third.ws.close()

        for n in range(3):
            first.subscribe(f"s{n}", {"range": "5min"}, frequency="high")
        assert first.close_frame() == (4030, "a connection holds at most 2 subscriptions")

        second.send({"type": "subscribe", "id": "big", "query": {"x": "y" * 2000}})
        assert second.close_frame()[0] == 1009
    with stack:
        again = open_for("s1")  # closed connections were freed
        assert again.next()["type"] == "welcome"


def _counter(server: MetronomeServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "_total")
    )


def test_subscribers_of_one_query_share_one_evaluation_per_host(world: World) -> None:
    """Twelve connections (on both workers) hold the same subscription for about 3 s at
    200 ms: the host's evaluator asks the store at most once per interval for all of
    them, not once per worker, nor once per connection."""
    token = world.token()
    query = _count_query("item-" + uuid.uuid4().hex[:10])
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(LiveClient(f"{world.ws_url}?token={token}")) for _ in range(12)
        ]
        evaluations = _counter(world.server, "metronome_live_evaluations")
        pushes = _counter(world.server, "metronome_live_pushes")
        started = time.monotonic()
        for client in clients:
            client.subscribe("same", query)
        for client in clients:
            assert _count(client.next("result")) == 0
        time.sleep(3)
        ran = _counter(world.server, "metronome_live_evaluations") - evaluations
        held_s = time.monotonic() - started
    # shared: one evaluation at once, then one per 200 ms for the host (~17); not ~35
    # (one per worker) nor ~200 (one per connection)
    assert ran <= held_s / 0.2 + 3, ran
    assert _counter(world.server, "metronome_live_pushes") - pushes >= 1  # each got one above


def test_revoking_the_key_closes_its_live_connections_and_refuses_its_tokens(
    world: World,
) -> None:
    made = _cli_json(world.server, "keys", "create", "--site", "demo", "--scope", "query")
    token = world.token(made["secret"], new_key_s=15)
    # the worker the connection reaches may not have read the new key yet: the token
    # makes it read the keys again, so the connection is accepted at once
    with LiveClient(f"{world.ws_url}?token={token}") as client:
        assert client.next()["type"] == "welcome"
        revoked = world.server.run_cli("keys", "revoke", made["id"])
        assert revoked.returncode == 0, revoked.stderr
        code, reason = client.close_frame(timeout_s=20)
    assert code == 4001 and "revoked" in reason
    refused = httpx.post(
        f"{world.server.url}/query",
        json={"range": "5min"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_key")


def _post_with_new_key(url: str, secret: str, **params: str) -> httpx.Response:
    """POST with a key the CLI just made: each worker knows it after its next reload
    (every second here), so a 401 is asked again for up to 15 s."""
    deadline = time.monotonic() + 15
    while True:
        resp = httpx.post(url, params=params, headers={"Authorization": f"Bearer {secret}"})
        if resp.status_code != 401 or time.monotonic() > deadline:
            return resp
        time.sleep(0.2)


def test_an_admin_key_is_shown_the_sites_it_can_watch(world: World) -> None:
    admin = _cli_json(world.server, "keys", "create", "--all-sites", "--scope", "admin")["secret"]
    resp = _post_with_new_key(f"{world.server.url}/live/token", admin)
    assert resp.status_code == 400, resp.text
    details = resp.json()["details"]
    assert details["parameter"] == "site"
    assert details["sites"] == ["default", "demo", "other"]  # what the dashboard offers
    chosen = _post_with_new_key(f"{world.server.url}/live/token", admin, site="other")
    assert chosen.status_code == 200, chosen.text
