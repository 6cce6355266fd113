"""The forward-protocol input of a real ``metronome serve``: which events it stores, with
which ids, and which sites it takes ticks for. Frames come from a raw forward-protocol
client (Fluentd's chunked, acknowledged frames) and from fluent-logger."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import msgpack
import pytest
from fluent import sender

from metronome.pipeline.forward_server import ACCESS_TAG, TICK_TAG
from tests.support.backends import wait_for_drain
from tests.support.es_server import free_port
from tests.support.metronome_server import MetronomeServer
from tests.support.site_world import rejected_counts

T0 = 1_778_234_400  # 2026-05-08T10:00:00Z
RULES = "/datasets/{id} -> view"


class Forwarded:
    """A server with the forward input on, and site ``shop``."""

    def __init__(self, server: MetronomeServer, port: int) -> None:
        self.server = server
        self.port = port
        self.client = httpx.Client(base_url=server.url, timeout=30)

    def send_chunk(self, tag: str, entries: list[list[object]], chunk: str) -> None:
        """Send a Forward-mode frame as Fluentd does with ``require_ack_response`` and
        wait for its acknowledgement."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(msgpack.packb([tag, entries, {"chunk": chunk}]))
            unpacker = msgpack.Unpacker()
            while True:
                data = sock.recv(4096)
                assert data, "closed without an ack"
                unpacker.feed(data)
                for answer in unpacker:
                    assert answer == {"ack": chunk}
                    return

    def stored(self, item: str) -> list[tuple[str, str]]:
        """(event id, site) of every stored event of ``item``."""
        wait_for_drain(self.server)
        with sqlite3.connect(self.server.data_dir / "metronome.sqlite3") as conn:
            rows = conn.execute(
                "SELECT id, site_id FROM events WHERE item_id = ? ORDER BY id", (item,)
            ).fetchall()
        return [(str(a), str(b)) for a, b in rows]


@pytest.fixture(scope="module")
def forwarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forwarded]:
    port = free_port()
    env = {
        "METRONOME_FORWARD": "on",
        "METRONOME_FORWARD_PORT": str(port),
        "METRONOME_URL_RULES": RULES,
        "METRONOME_SITES_CACHE_S": "1",
    }
    server = MetronomeServer(env, data_dir=tmp_path_factory.mktemp("data") / "data")
    server.start()
    try:
        created = server.run_cli("sites", "create", "--id", "shop", "--name", "Shop", "--json")
        assert created.returncode == 0, created.stderr
        deadline = time.monotonic() + 30
        while True:  # the worker's forward input is listening, and sees the site
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        time.sleep(1.5)  # one sites-cache period
        forwarded = Forwarded(server, port)
        with forwarded.client:
            yield forwarded
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-4000:]


def _line(item: str, when: str = "08/May/2026:10:00:00 +0000") -> str:
    return f'203.0.113.9 - - [{when}] "GET /datasets/{item} HTTP/1.1" 200 512 "-" "curl/8"'


def test_identical_lines_in_different_chunks_are_separate_events_and_a_resent_chunk_is_not(
    forwarded: Forwarded, item: str
) -> None:
    line = {"message": _line(item)}
    forwarded.send_chunk(ACCESS_TAG, [[T0, line], [T0, line]], "chunk-a")
    forwarded.send_chunk(ACCESS_TAG, [[T0, line], [T0, line]], "chunk-a")  # resent
    forwarded.send_chunk(ACCESS_TAG, [[T0, line]], "chunk-b")
    assert len(forwarded.stored(item)) == 3

    fluent = sender.FluentSender("metronome", host="127.0.0.1", port=forwarded.port)
    try:  # no chunk ids: each emit is an occurrence of its own
        assert fluent.emit_with_time("access", T0, line), fluent.last_error
        assert fluent.emit_with_time("access", T0, line), fluent.last_error
    finally:
        fluent.close()
    deadline = time.monotonic() + 30
    while len(forwarded.stored(item)) < 5:
        assert time.monotonic() < deadline, forwarded.stored(item)
        time.sleep(0.2)
    ids = [event_id for event_id, _ in forwarded.stored(item)]
    assert len(ids) == len(set(ids)) == 5


def test_identical_ticks_in_a_chunk_are_kept_and_a_resent_chunk_is_stored_once(
    forwarded: Forwarded, item: str
) -> None:
    tick = {"id": item, "site": "shop"}
    forwarded.send_chunk(TICK_TAG, [[T0, tick], [T0, tick]], "ticks-1")
    forwarded.send_chunk(TICK_TAG, [[T0, tick], [T0, tick]], "ticks-1")
    forwarded.send_chunk(TICK_TAG, [[T0, tick]], "ticks-2")
    assert [site for _, site in forwarded.stored(item)] == ["shop"] * 3


def test_ticks_for_a_site_that_does_not_exist_are_refused_and_counted(
    forwarded: Forwarded, item: str
) -> None:
    before = rejected_counts(forwarded.client)
    entries = [
        [T0, {"id": item, "site": "shop"}],
        [T0, {"id": item, "site": "ghost"}],
        [T0, {"id": item}],  # METRONOME_LOG_SITE: default (made with the first site)
        [T0, {"id": item, "site": 7}],
        [T0, {"id": item, "site": "Shop"}],
    ]
    forwarded.send_chunk(TICK_TAG, entries, "sites-1")
    assert Counter(site for _, site in forwarded.stored(item)) == {"shop": 1, "default": 1}
    assert rejected_counts(forwarded.client) - before == Counter({"unknown_site": 3})
    log = forwarded.server.log_path.read_text()
    assert "forward_tick_rejected tag=metronome.tick error=no site 'ghost'" in log
    assert json.dumps("ghost") not in json.dumps(forwarded.stored(item))
