"""RabbitMQ in: ``metronome serve``'s worker consumes ``[[queues]]`` from a real RabbitMQ
(tests/support/rabbitmq.py) into the embedded store.

One Metronome for the module, consuming one queue per kind of message (each test's own
queue names); what is stored is read from the store itself. The broker is killed and
restarted, and Metronome is killed with SIGKILL, in the middle of streams of messages.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pika
import pytest

from metronome.client import Client
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.pipeline.records import encode_many
from metronome.pipeline.spool import SpoolWriter, spool_bytes, spool_dir
from tests.support.backends import running_backend, wait_for_drain
from tests.support.metronome_server import MetronomeServer
from tests.support.rabbitmq import RabbitMQServer

SPOOL_MAX = 65536
NGINX = (
    '203.0.113.{n} - - [08/May/2026:10:00:{s:02d} +0000] "GET /datasets/{item} HTTP/1.1"'
    ' 200 512 "-" "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"'
)


@dataclass
class World:
    rabbitmq: RabbitMQServer
    server: MetronomeServer
    queues: dict[str, str]  # kind -> queue name
    dead: str  # the dead-letter queue
    key: str  # an ingest key of site shop

    def publish(
        self,
        kind: str,
        bodies: list[bytes],
        *,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        message_ids: list[str] | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Publish persistent messages to ``kind``'s queue, each confirmed by RabbitMQ
        (``message_id`` for every one, or one of ``message_ids`` each; default: new ones)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for index, body in enumerate(bodies):
                properties = pika.BasicProperties(
                    delivery_mode=2,
                    headers={"x-metronome-key": self.key, **(headers or {})},
                    message_id=message_ids[index]
                    if message_ids
                    else (message_id or uuid.uuid4().hex),
                    timestamp=timestamp or int(time.time()),
                )
                channel.basic_publish("", self.queues[kind], body, properties, mandatory=True)
        finally:
            connection.close()

    def rows(self, item: str) -> list[tuple[str, str]]:
        """(id, site) of every stored event of ``item``."""
        db = self.server.data_dir / "metronome.sqlite3"
        if not db.exists():
            return []
        with sqlite3.connect(db) as conn:
            found = conn.execute(
                "SELECT id, site_id FROM events WHERE item_id = ? ORDER BY id", (item,)
            ).fetchall()
        return [(str(a), str(b)) for a, b in found]

    def wait_rows(self, item: str, count: int, timeout_s: float = 60) -> list[tuple[str, str]]:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.rows(item)
            if len(rows) >= count:
                wait_for_drain(self.server)
                return self.rows(item)
            assert time.monotonic() < deadline, (len(rows), self.server.log_tail())
            time.sleep(0.1)

    def dead_letters(self, count: int, timeout_s: float = 30) -> list[tuple[dict, bytes]]:
        """The next ``count`` messages of the dead-letter queue: (headers, body)."""
        found: list[tuple[dict, bytes]] = []
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
        try:
            channel = connection.channel()
            deadline = time.monotonic() + timeout_s
            while len(found) < count:
                method, properties, body = channel.basic_get(self.dead, auto_ack=True)
                if method is None:
                    assert time.monotonic() < deadline, (found, self.server.log_tail())
                    time.sleep(0.1)
                    continue
                found.append((properties.headers or {}, body))
        finally:
            connection.close()
        return found

    def waiting(self, kind: str) -> int:
        connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
        try:
            declared = connection.channel().queue_declare(self.queues[kind], passive=True)
            return int(declared.method.message_count)
        finally:
            connection.close()


def _config(world_queues: dict[str, str], dlx: str) -> str:
    return f"""
[[queues]]
name = "ticks"
queue = "{world_queues["ticks"]}"
kind = "ticks"
site_header = "x-metronome-key"
prefetch = 50
dead_letter_exchange = "{dlx}"

[[queues]]
name = "tick"
queue = "{world_queues["tick"]}"
kind = "tick"
site = "shop"

[[queues]]
name = "events"
queue = "{world_queues["events"]}"
kind = "events"
site = "shop"
dead_letter_exchange = "{dlx}"

[[queues]]
name = "points"
queue = "{world_queues["points"]}"
kind = "points"
site = "shop"
app = "queued"

[[queues]]
name = "lines"
queue = "{world_queues["lines"]}"
kind = "lines"
site = "shop"

[event_schemas."file.uploaded".schema]
type = "object"
required = ["bytes"]
properties = {{ bytes = {{ type = "integer", minimum = 0 }} }}
"""


@pytest.fixture(scope="module")
def world(rabbitmq: RabbitMQServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    queues = {kind: f"q-{tag}-{kind}" for kind in ("ticks", "tick", "events", "points", "lines")}
    dlx, dead = f"dlx-{tag}", f"dead-{tag}"
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    channel = connection.channel()
    channel.exchange_declare(dlx, "fanout", durable=True)
    channel.queue_declare(dead, durable=True)
    channel.queue_bind(dead, dlx)
    for queue in queues.values():  # the queue's own dead-letter exchange, for a plain reject
        channel.queue_declare(queue, durable=True, arguments={"x-dead-letter-exchange": dlx})
    connection.close()

    root = tmp_path_factory.mktemp("queues")
    config = root / "metronome.toml"
    config.write_text(_config(queues, dlx))
    server = MetronomeServer(
        {
            "METRONOME_CONFIG": str(config),
            "METRONOME_AMQP_URL": rabbitmq.url,
            "METRONOME_SPOOL_MAX_BYTES": str(SPOOL_MAX),
            "METRONOME_SPOOL_SEGMENT_BYTES": "4096",
            "METRONOME_SITES_CACHE_S": "1",
            "METRONOME_SHIP_BACKOFF_MAX_S": "2",
            "METRONOME_URL_RULES": "/datasets/{id} -> view",
            "METRONOME_LOG_FORMAT": "combined",
            "METRONOME_LOG_SITE": "shop",
        },
        data_dir=root / "data",
    )
    created = server.run_cli("sites", "create", "--id", "shop", "--name", "Shop", "--json")
    assert created.returncode == 0, created.stderr
    made = server.run_cli("keys", "create", "--site", "shop", "--scope", "ingest", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["secret"]
    time.sleep(2)  # RabbitMQ writes the declarations to disk a moment after confirming them
    server.start()
    try:
        yield World(rabbitmq, server, queues, dead, key)
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-4000:]
    assert rabbitmq.password not in log and key not in log


def _item() -> str:
    return "it-" + uuid.uuid4().hex[:10]


def test_messages_of_every_kind_are_stored_once(world: World) -> None:
    items = {kind: _item() for kind in ("tick", "ticks", "events", "lines")}
    world.publish("tick", [json.dumps({"id": items["tick"], "event": "download"}).encode()])
    batch = "\n".join(json.dumps({"id": items["ticks"], "n": n}) for n in range(3)).encode()
    # the same message twice (as RabbitMQ redelivers one whose ack was lost): stored once
    sent_s = int(time.time())
    world.publish("ticks", [batch, batch], message_id="batch-" + items["ticks"], timestamp=sent_s)
    world.publish(
        "events",
        [json.dumps([{"id": items["events"], "event": "file.uploaded", "bytes": 42}]).encode()],
    )
    world.publish(
        "points",
        [
            json.dumps(
                {"metrics": [{"name": "jobs", "tags": {"q": "a"}, "fields": {"n": 7}}]}
            ).encode()
        ],
    )
    lines = "\n".join(NGINX.format(n=n, s=n, item=items["lines"]) for n in range(4))
    world.publish("lines", [lines.encode()])

    assert [site for _, site in world.wait_rows(items["tick"], 1)] == ["shop"]
    stored = world.wait_rows(items["ticks"], 3)
    assert len(stored) == len(set(stored)) == 3 and {s for _, s in stored} == {"shop"}
    assert len(world.wait_rows(items["events"], 1)) == 1
    assert len(world.wait_rows(items["lines"], 4)) == 4
    with sqlite3.connect(world.server.data_dir / "metronome.sqlite3") as conn:
        deadline = time.monotonic() + 30
        while True:
            (points,) = conn.execute(
                "SELECT count(*) FROM events WHERE dataset = 'metrics'"
                " AND json_extract(doc, '$.app') = 'queued' AND site_id = 'shop'"
            ).fetchone()
            if points or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        doc = json.loads(
            conn.execute("SELECT doc FROM events WHERE item_id = ?", (items["events"],)).fetchone()[
                0
            ]
        )
    assert points == 1
    assert doc["typed"] == {"bytes": 42}  # the typed-event schema applied, as over HTTP

    # a copy after the first was consumed: still once (the ids come from the message id)
    world.publish("ticks", [batch], message_id="batch-" + items["ticks"], timestamp=sent_s)
    marker = _item()
    world.publish("ticks", [json.dumps([{"id": marker}]).encode()])
    world.wait_rows(marker, 1)
    assert len(world.rows(items["ticks"])) == 3

    metrics = httpx.get(world.server.url + "/metrics", timeout=10).text
    assert 'metronome_queue_messages_total{outcome="acked",queue="ticks"} 4.0' in metrics
    assert 'metronome_queue_connected{queue="ticks"} 1.0' in metrics
    deadline = time.monotonic() + 20
    while True:  # the consumer writes its figures for `metronome status` every few seconds
        status = world.server.run_cli("status")
        assert status.returncode == 0, status.stderr
        line = next(x for x in status.stdout.splitlines() if x.startswith("queue ticks:"))
        if "4 acked" in line or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "connected" in line and "4 acked" in line, status.stdout
    assert world.rabbitmq.password not in status.stdout


def test_a_poison_message_is_dead_lettered_with_its_reason(world: World) -> None:
    good = _item()
    world.publish("ticks", [b"{not json"])
    world.publish("ticks", [json.dumps([{"id": good}, {"event": "no id"}]).encode()])
    world.publish(
        "ticks", [json.dumps([{"id": good}]).encode()], headers={"x-metronome-key": "mk_nope"}
    )
    world.publish("events", [json.dumps([{"id": good, "event": "file.uploaded"}]).encode()])
    # a queue without dead_letter_exchange: rejected to the queue's own (x-death, no reason)
    world.publish("tick", [b"[1, 2]"])

    letters = world.dead_letters(5)
    reasons = [h.get("x-metronome-reason") for h, _ in letters]
    assert any("not valid JSON" in (r or "") for r in reasons), reasons
    assert any("tick 1: 'id' is required" in (r or "") for r in reasons), reasons
    assert any("unknown or revoked" in (r or "") for r in reasons), reasons
    assert any("bytes" in (r or "") for r in reasons), reasons  # the schema's refusal
    rejected = [h for h, body in letters if body == b"[1, 2]"]
    assert rejected and rejected[0]["x-death"][0]["reason"] == "rejected"
    partial = next(h for h, _ in letters if "tick 1" in (h.get("x-metronome-reason") or ""))
    assert (
        partial["x-metronome-stored"] == 1 and partial["x-metronome-queue"] == world.queues["ticks"]
    )
    # the valid tick of the half-valid message is stored, once
    assert len(world.wait_rows(good, 1)) == 1
    assert world.waiting("ticks") == 0


def test_consumption_pauses_while_the_spool_is_full_and_loses_nothing(world: World) -> None:
    """A writer of the test's own holds an active segment past the spool's limit."""
    writer = SpoolWriter(
        spool_dir(world.server.data_dir), segment_max_bytes=1 << 20, max_total_bytes=1 << 30
    )
    info = RequestInfo(int(time.time() * 1000), None, None, "shop")
    filler = [build_tick({"id": "filler", "pad": "x" * 1000}, info, Limits()) for _ in range(70)]
    asyncio.run(writer.append(encode_many(filler)))
    assert spool_bytes(spool_dir(world.server.data_dir)) > SPOOL_MAX
    time.sleep(1)  # past the 0.25 s for which each writer trusts its last look at the spool
    item = _item()
    try:
        world.publish("ticks", [json.dumps([{"id": item, "n": n}]).encode() for n in range(10)])
        deadline = time.monotonic() + 30
        while "PAUSED" not in world.server.run_cli("status").stdout:
            assert time.monotonic() < deadline, world.server.log_tail()
            time.sleep(0.3)
        metrics = httpx.get(world.server.url + "/metrics", timeout=10).text
        assert 'metronome_queue_paused{queue="ticks"} 1.0' in metrics
        assert world.rows(item) == []
        assert world.waiting("ticks") == 10  # returned to the queue, not acknowledged
    finally:
        writer.close()  # sealed: the shipper ships it and frees the room
    stored = world.wait_rows(item, 10)
    assert len(stored) == len(set(stored)) == 10


class _Publisher(threading.Thread):
    """Publishes ``count`` one-tick messages for ``item``, a few at a time, riding out a
    broker restart (a message counts once RabbitMQ confirmed it)."""

    def __init__(self, world: World, item: str, count: int) -> None:
        super().__init__(daemon=True)
        self.world, self.item, self.count = world, item, count
        self.confirmed = 0
        self.sent_s = int(time.time())  # a message sent again is the same message

    def run(self) -> None:
        n = 0
        while n < self.count:
            try:
                self.world.publish(
                    "ticks",
                    [json.dumps([{"id": self.item, "n": k}]).encode() for k in range(n, n + 10)],
                    message_ids=[f"{self.item}-{k}" for k in range(n, n + 10)],
                    timestamp=self.sent_s,
                )
                n += 10
                self.confirmed = n
            except Exception:  # noqa: BLE001 - the broker is down: send these again, same ids
                time.sleep(0.3)
            time.sleep(0.02)


def test_rabbitmq_killed_and_restarted_mid_stream(world: World) -> None:
    item = _item()
    publisher = _Publisher(world, item, 300)
    publisher.start()
    deadline = time.monotonic() + 30
    while len(world.rows(item)) < 50:
        assert time.monotonic() < deadline, world.server.log_tail()
        time.sleep(0.05)
    world.rabbitmq.kill()
    world.rabbitmq.start()
    publisher.join(timeout=120)
    assert publisher.confirmed == 300
    stored = world.wait_rows(item, 300, timeout_s=90)
    numbers = [json.loads(doc)["params"]["n"] for doc in _docs(world, item)]
    assert len(stored) == len(set(stored))
    assert sorted(set(numbers)) == list(range(300)) and len(numbers) == 300
    deadline = time.monotonic() + 30
    while "queue ticks: " not in (out := world.server.run_cli("status").stdout) or (
        ": connected;" not in out.split("queue ticks: ")[1].splitlines()[0]
    ):
        assert time.monotonic() < deadline, out
        time.sleep(0.3)


def _docs(world: World, item: str) -> list[str]:
    with sqlite3.connect(world.server.data_dir / "metronome.sqlite3") as conn:
        return [r[0] for r in conn.execute("SELECT doc FROM events WHERE item_id = ?", (item,))]


def test_metronome_killed_with_sigkill_mid_stream(world: World) -> None:
    item = _item()
    publisher = _Publisher(world, item, 300)
    publisher.start()
    deadline = time.monotonic() + 30
    while len(world.rows(item)) < 50:
        assert time.monotonic() < deadline, world.server.log_tail()
        time.sleep(0.05)
    world.server.kill()  # the server and its worker, at once
    acked_before = len(world.rows(item))
    world.server.start()
    publisher.join(timeout=120)
    assert publisher.confirmed == 300
    world.wait_rows(item, 300, timeout_s=90)
    numbers = sorted(json.loads(doc)["params"]["n"] for doc in _docs(world, item))
    assert numbers == list(range(300))  # every message once: acked or redelivered
    assert acked_before >= 50


def test_the_python_client_publishes_through_rabbitmq(world: World) -> None:
    item = _item()
    client = Client(amqp_url=world.rabbitmq.url, queue=world.queues["ticks"], key=world.key)
    with client:
        for n in range(5):
            assert client.tick(item, event="download", n=n)
        assert client.flush(20)
    assert client.stats.sent == 5 and client.stats.dropped == 0
    stored = world.wait_rows(item, 5)
    assert {site for _, site in stored} == {"shop"} and len(stored) == 5


def test_a_bad_queue_table_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[queues]]\nqueue = "q"\nkind = "parcels"\nurl = "amqp://u:pw@h/"\n')
    server = MetronomeServer({"METRONOME_CONFIG": str(config)}, data_dir=tmp_path / "data")
    done = server.run_cli("worker", timeout_s=60)
    assert done.returncode != 0
    assert "queues[0].kind: expected one of tick, ticks, events, points, lines" in done.stderr


def test_a_queue_for_a_site_that_does_not_exist_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "nosite.toml"
    config.write_text('[[queues]]\nqueue = "q"\nkind = "ticks"\nsite = "nosuch"\n')
    server = MetronomeServer(
        {"METRONOME_CONFIG": str(config), "METRONOME_AMQP_URL": "amqp://u:pw@127.0.0.1:1/"},
        data_dir=tmp_path / "data",
    )
    done = server.run_cli("worker", timeout_s=60)
    assert done.returncode != 0
    assert "there is no site 'nosuch' (named by [[queues]] q (site))" in done.stderr
    assert "pw" not in done.stderr


def test_a_redelivered_message_is_stored_once_in_elasticsearch(
    rabbitmq: RabbitMQServer,
    es_url: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}-es"
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    config = tmp_path_factory.mktemp("es-queue") / "metronome.toml"
    config.write_text(f'[[queues]]\nqueue = "{queue}"\nkind = "ticks"\n')
    env = {"METRONOME_CONFIG": str(config), "METRONOME_AMQP_URL": rabbitmq.url}
    with running_backend(request, tmp_path_factory, "elasticsearch", env) as backend:
        item = _item()
        body = json.dumps([{"id": item, "n": n, "ts": 1_778_234_400_000 + n} for n in range(3)])
        marker = _item()
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for text in (body, body, json.dumps([{"id": marker}])):
                properties = pika.BasicProperties(delivery_mode=2, message_id=f"m-{hash(text)}")
                channel.basic_publish("", queue, text.encode(), properties, mandatory=True)
        finally:
            connection.close()
        deadline = time.monotonic() + 60
        while not backend.find(marker):
            assert time.monotonic() < deadline, backend.server.log_tail()
            time.sleep(0.2)
        found = backend.find(item)
        assert sorted(doc["params"]["n"] for doc in found) == [0, 1, 2]
