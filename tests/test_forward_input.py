"""The forward-protocol input of a real ``metronome serve``: which events it stores, with
which ids, which sites it takes them for, and what a sender without the key can cost it.
Frames come from a raw forward-protocol client (Fluentd's chunked, acknowledged frames,
with Fluentd's shared-key handshake where the server asks for one) and from fluent-logger."""

from __future__ import annotations

import gzip
import json
import socket
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import pytest
from fluent import sender

from metronome.pipeline.forward_server import ACCESS_TAG, TICK_TAG
from metronome.pipeline.spool import spool_bytes, spool_dir
from tests.support.backends import wait_for_drain
from tests.support.es_server import free_port
from tests.support.forward_client import HandshakeRefused, handshake
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

    def send_chunk(
        self, tag: str, entries: list[list[object]], chunk: str, key: str | None = None
    ) -> None:
        """Send a Forward-mode frame as Fluentd does with ``require_ack_response`` (after
        the handshake with ``key``) and wait for its acknowledgement."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            if key is not None:
                handshake(sock, key)
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


def _forwarded(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[Forwarded]:
    port = free_port()
    env = {
        "METRONOME_FORWARD": "on",
        "METRONOME_FORWARD_PORT": str(port),
        "METRONOME_URL_RULES": RULES,
        "METRONOME_SITES_CACHE_S": "1",
        **env,
    }
    server = MetronomeServer(env, data_dir=tmp_path_factory.mktemp("data") / "data")
    # the site first: a key of METRONOME_FORWARD_SITE_KEYS must name a site that exists
    created = server.run_cli("sites", "create", "--id", "shop", "--name", "Shop", "--json")
    assert created.returncode == 0, created.stderr
    server.start()
    try:
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
    for secret in (SHARED_KEY, SHOP_KEY):
        assert secret not in log
        for path in server.data_dir.rglob("*"):
            assert not path.is_file() or secret.encode() not in path.read_bytes(), path


SHARED_KEY = "fluentd-shared-key-3f9c"
SHOP_KEY = "shop-only-key-81d2"


@pytest.fixture(scope="module")
def forwarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forwarded]:
    """No key, on loopback; records choose their site (METRONOME_FORWARD_RECORD_SITE)."""
    yield from _forwarded(tmp_path_factory, {"METRONOME_FORWARD_RECORD_SITE": "on"})


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forwarded]:
    """A shared key for every site's sender, and a key of site ``shop``'s own."""
    yield from _forwarded(
        tmp_path_factory,
        {
            "METRONOME_FORWARD_SHARED_KEY": SHARED_KEY,
            "METRONOME_FORWARD_SITE_KEYS": f"shop={SHOP_KEY}",
        },
    )


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


def test_records_of_a_connection_go_to_the_site_its_key_names_whatever_they_say(
    keyed: Forwarded, item: str
) -> None:
    entries: list[list[object]] = [
        [T0, {"id": item, "site": "ghost"}],
        [T0, {"id": item, "site": "default"}],
    ]
    keyed.send_chunk(TICK_TAG, entries, "shop-ticks", key=SHOP_KEY)
    keyed.send_chunk(ACCESS_TAG, [[T0, {"message": _line(item)}]], "shop-lines", key=SHOP_KEY)
    keyed.send_chunk(TICK_TAG, [[T0, {"id": item, "site": "shop"}]], "all", key=SHARED_KEY)
    # the shop key's three records are shop's; the shared key's go to METRONOME_LOG_SITE
    assert Counter(site for _, site in keyed.stored(item)) == {"shop": 3, "default": 1}


def test_a_wrong_key_or_no_handshake_is_refused_and_nothing_is_stored(
    keyed: Forwarded, item: str
) -> None:
    with pytest.raises(HandshakeRefused, match="shared key"):
        keyed.send_chunk(TICK_TAG, [[T0, {"id": item}]], "guess", key="guessed-key")
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as sock:
        sock.sendall(msgpack.packb([TICK_TAG, [[T0, {"id": item}]], {"chunk": "no-handshake"}]))
        answers = msgpack.Unpacker(raw=False)
        while data := sock.recv(4096):
            answers.feed(data)
        assert [a[0] for a in answers] == ["HELO"]  # and no ack: closed
    fluent = sender.FluentSender("metronome", host="127.0.0.1", port=keyed.port)
    try:  # fluent-logger has no handshake: what it sends is refused, not stored
        fluent.emit_with_time("tick", T0, {"id": item})
    finally:
        fluent.close()
    keyed.send_chunk(TICK_TAG, [[T0, {"id": "after-" + item}]], "right", key=SHARED_KEY)
    assert keyed.stored("after-" + item) and keyed.stored(item) == []
    log = keyed.server.log_path.read_text()
    assert "forward_refused" in log and "wrong shared key from 'test-client'" in log


def _process(server: MetronomeServer, command: str) -> int:
    """The pid of the server's child process running ``metronome <command>``."""
    assert server.proc is not None
    found = subprocess.run(
        ["pgrep", "-s", str(server.proc.pid), "-f", f"metronome {command}$"],
        capture_output=True,
        text=True,
    )
    (pid,) = found.stdout.split()
    return int(pid)


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_compressed_bomb_is_refused_fast_in_bounded_memory_and_spools_nothing(
    forwarded: Forwarded, item: str
) -> None:
    """24 KB of gzip that inflates to two million entries (16 MB, under the frame size)."""
    bomb = gzip.compress(msgpack.packb([0, {"id": "x"}]) * 2_000_000, compresslevel=9)
    assert len(bomb) < 24 * 1024
    forwarded.send_chunk(TICK_TAG, [[T0, {"id": item}]], "before-bomb")
    wait_for_drain(forwarded.server)
    worker = _process(forwarded.server, "worker")
    Path(f"/proc/{worker}/clear_refs").write_text("5")  # peak RSS := RSS now
    rss_before = _memory_kib(worker, "VmRSS")
    spooled_before = spool_bytes(spool_dir(forwarded.server.data_dir))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", forwarded.port), timeout=30) as sock:
        frame = msgpack.packb([TICK_TAG, bomb, {"compressed": "gzip", "chunk": "bomb"}])
        sock.sendall(frame)
        assert sock.recv(4096) == b""  # closed, no ack
    elapsed = time.monotonic() - started
    peak_growth_kib = _memory_kib(worker, "VmHWM") - rss_before
    assert elapsed < 5, elapsed
    assert peak_growth_kib < 64 * 1024, peak_growth_kib
    assert spool_bytes(spool_dir(forwarded.server.data_dir)) == spooled_before
    assert "more than 10000 entries" in forwarded.server.log_path.read_text()
    assert len(forwarded.stored(item)) == 1
    print(  # the figures the README's Security section quotes
        f"\nforward bomb: {len(bomb)} bytes, refused in {elapsed:.2f}s,"
        f" worker peak RSS +{peak_growth_kib / 1024:.1f} MiB, spool +0 bytes"
    )
