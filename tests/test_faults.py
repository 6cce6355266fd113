"""Faults under load: every acknowledged event ends up in the store exactly once.

Each test drives a running Metronome over real HTTP with a small load generator, breaks
something (the server, the store, the disk budget, a segment), then counts the store's
documents by id. Every test runs on each store it applies to: the embedded store,
Elasticsearch and OpenSearch. The store down and back, and the store that stops answering
for a while, are the run's Elasticsearch or OpenSearch behind a relay that takes it off
the network or freezes it (``store_link``: tests/support/fault_proxy.py), so neither
needs a server of its own, nor a minute of CPU to restart one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

from metronome.pipeline.spool import segments, spool_dir
from tests.support.backends import delete_prefix, unique_prefix, wait_for_drain
from tests.support.fault_proxy import FaultProxy
from tests.support.metronome_server import MetronomeServer, metric_value


@dataclass
class World:
    """A store to run fresh servers against, and a way to list what it holds."""

    kind: str
    env: dict[str, str]
    es_url: str | None = None
    prefix: str | None = None

    def stored_ids(self, data_dir: Path) -> list[str]:
        if self.es_url is None:
            with sqlite3.connect(data_dir / "metronome.sqlite3") as conn:
                return [
                    r[0] for r in conn.execute("SELECT id FROM events WHERE dataset != 'visits'")
                ]
        httpx.post(f"{self.es_url}/{self.prefix}-*/_refresh", timeout=60).raise_for_status()
        ids: list[str] = []
        body: dict[str, object] = {"size": 5000, "_source": False, "sort": ["_doc"]}
        resp = httpx.post(
            f"{self.es_url}/{self.prefix}-ticks-*/_search",
            params={"scroll": "1m"},
            json=body,
            timeout=60,
        ).json()
        while resp["hits"]["hits"]:
            ids += [hit["_id"] for hit in resp["hits"]["hits"]]
            resp = httpx.post(
                f"{self.es_url}/_search/scroll",
                timeout=60,
                json={"scroll": "1m", "scroll_id": resp["_scroll_id"]},
            ).json()
        return ids


# the parameter values name the engines as tests/conftest.py marks them
ENGINES = ["elasticsearch", "opensearch"]
_URL_VARIABLE = {
    "elasticsearch": "METRONOME_ELASTICSEARCH_URL",
    "opensearch": "METRONOME_OPENSEARCH_URL",
}


@pytest.fixture(params=["sqlite", *ENGINES])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "sqlite":
        yield World("sqlite", {})
        return
    es_url = request.getfixturevalue("os_url" if request.param == "opensearch" else "es_url")
    prefix = unique_prefix()
    yield World(
        request.param,
        {_URL_VARIABLE[request.param]: es_url, "METRONOME_INDEX_PREFIX": prefix},
        es_url,
        prefix,
    )
    delete_prefix(es_url, prefix)


@dataclass
class StoreLink:
    """A store (``engine`` at ``url``) reached through ``proxy``, which a test may take
    down and bring back, or freeze (tests/support/fault_proxy.py)."""

    engine: str
    url: str
    proxy: FaultProxy


@pytest.fixture(params=ENGINES)
def store_link(request: pytest.FixtureRequest) -> Iterator[StoreLink]:
    """The run's Elasticsearch, then its OpenSearch, behind a relay of this test's own."""
    url = request.getfixturevalue("os_url" if request.param == "opensearch" else "es_url")
    with FaultProxy(url) as proxy:
        yield StoreLink(request.param, url, proxy)


@pytest.fixture(params=ENGINES)
def engine_url(request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(engine, url)``: the run's Elasticsearch, then its OpenSearch."""
    return request.param, request.getfixturevalue(
        "os_url" if request.param == "opensearch" else "es_url"
    )


@dataclass
class Load:
    """Threads posting batches of ticks until stopped; remembers what was acknowledged."""

    url: str
    threads: int = 3
    name: str = "load"  # the ticks' item ids: distinct loads post distinct ticks
    batch: int = 50
    pause_s: float = 0.01  # between batches, so the machine's 2 cores serve everyone
    acknowledged: list[str] = field(default_factory=list)
    refused: list[httpx.Response] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            seq = 0
            while not self._stop.is_set():
                seq += 1
                ticks = [{"id": f"{self.name}-{n}", "seq": seq, "i": i} for i in range(self.batch)]
                try:
                    resp = client.post("/ticks", json=ticks)
                except httpx.TransportError:
                    time.sleep(0.05)  # the server is gone: nothing was acknowledged
                    continue
                with self._lock:
                    if resp.status_code == 202:
                        self.acknowledged += [i for i in resp.json()["ids"] if i]
                    else:
                        self.refused.append(resp)
                time.sleep(self.pause_s if resp.status_code == 202 else 0.05)

    def start(self) -> Load:
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"only {len(self.acknowledged)} acknowledged"
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=60)


def _assert_exactly_once(stored: list[str], acknowledged: list[str]) -> None:
    assert len(set(acknowledged)) == len(acknowledged)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events were lost"


def test_server_killed_mid_load_loses_nothing_acknowledged(world: World, tmp_path: Path) -> None:
    server = MetronomeServer(world.env, data_dir=tmp_path / "data")
    server.start()
    load = Load(server.url).start()
    load.wait_for(3000)
    server.kill()  # SIGKILL: server, workers and shipper, mid-request
    load.stop()
    before_restart = list(load.acknowledged)

    server.start()
    wait_for_drain(server)
    assert server.stop() == 0, server.log_tail()
    stored = world.stored_ids(server.data_dir)
    _assert_exactly_once(stored, before_restart)
    assert not segments(spool_dir(server.data_dir)), "shipped segments are deleted"


def test_store_outage_under_load_drains_by_itself_afterwards(
    store_link: StoreLink, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    env = {  # Metronome reaches the store through the relay; the test reads it directly
        _URL_VARIABLE[store_link.engine]: store_link.proxy.url,
        "METRONOME_INDEX_PREFIX": prefix,
        "METRONOME_SHIP_BACKOFF_MAX_S": "2",
        "METRONOME_ELASTICSEARCH_TIMEOUT_S": "3",  # OpenSearch's timeout too
    }
    world = World(store_link.engine, env, store_link.url, prefix)
    server = MetronomeServer(env, data_dir=tmp_path / "data")
    server.start()
    try:
        load = Load(server.url, threads=2, pause_s=0.1).start()
        load.wait_for(1000)
        _wait_until_shipping(server)
        store_link.proxy.down()  # the store is gone: connections reset, then refused
        acked_at_stop = len(load.acknowledged)
        load.wait_for(acked_at_stop + 2000)  # ingestion goes on while the store is down
        # stop loading while it is away, so the backlog it comes back to stays the same
        # size on every machine
        load.stop()
        ready = httpx.get(server.url + "/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        store_link.proxy.up()
        after = Load(server.url, threads=2, pause_s=0.1, name="after").start()
        after.wait_for(1000)
        after.stop()
        acknowledged = load.acknowledged + after.acknowledged
        refused = load.refused + after.refused
        assert not refused, [r.text for r in refused[:3]]
        wait_for_drain(server, timeout_s=120)
        assert httpx.get(server.url + "/readyz", timeout=30).json()["status"] == "ready"
        metrics = server.metrics()
        assert metric_value(metrics, "metronome_ship_retries_total") >= 1
        assert metric_value(metrics, "metronome_events_shipped_total") == len(acknowledged)
    finally:
        assert server.stop() == 0, server.log_tail()
    _assert_exactly_once(world.stored_ids(server.data_dir), acknowledged)
    delete_prefix(store_link.url, prefix)


def test_store_that_stops_answering_under_load_loses_and_duplicates_nothing(
    store_link: StoreLink, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    env = {
        _URL_VARIABLE[store_link.engine]: store_link.proxy.url,
        "METRONOME_INDEX_PREFIX": prefix,
        "METRONOME_SHIP_BACKOFF_MAX_S": "2",
        "METRONOME_ELASTICSEARCH_TIMEOUT_S": "2",
    }
    world = World(store_link.engine, env, store_link.url, prefix)
    server = MetronomeServer(env, data_dir=tmp_path / "data")
    server.start()
    try:
        load = Load(server.url, threads=2, pause_s=0.1).start()
        load.wait_for(300)
        _wait_until_shipping(server)
        # the store stops answering (connections open, no answer, as a node in a long
        # garbage collection or on a saturated disk), then carries on
        with store_link.proxy.frozen():
            acked_at_freeze = len(load.acknowledged)
            deadline = time.monotonic() + 60
            # bulk requests time out (and may still be applied once it answers again)
            while server.metric("metronome_ship_retries_total") < 1:
                assert time.monotonic() < deadline, "no bulk request timed out"
                time.sleep(0.1)
            load.wait_for(acked_at_freeze + 300)  # ingestion goes on meanwhile
        load.wait_for(len(load.acknowledged) + 300)
        load.stop()
        assert not load.refused, [r.text for r in load.refused[:3]]
        wait_for_drain(server, timeout_s=120)
        assert server.metric("metronome_dead_letters_total") == 0
    finally:
        assert server.stop() == 0, server.log_tail()
    # a bulk request that timed out but was applied is sent again: stored once all the same
    _assert_exactly_once(world.stored_ids(server.data_dir), load.acknowledged)
    delete_prefix(store_link.url, prefix)


def _wait_until_shipping(server: MetronomeServer) -> None:
    """Wait until the shipper has stored a first batch: the store is then broken under bulk
    requests. Broken earlier, it stops the worker's install of the templates instead,
    retried on its own (``metronome_schema_install_retries_total``, not a ship retry) before
    any bulk request is made: on a busy machine the worker may still be installing them
    when 300 ticks are acknowledged."""
    deadline = time.monotonic() + 60
    while server.metric("metronome_events_shipped_total") < 1:
        assert time.monotonic() < deadline, "nothing shipped in 60 s:\n" + server.log_tail()
        time.sleep(0.05)


def test_full_spool_answers_503_with_retry_after_and_keeps_what_it_acknowledged(
    world: World, tmp_path: Path
) -> None:
    env = {
        **world.env,
        "METRONOME_SPOOL_MAX_BYTES": "262144",
        "METRONOME_SPOOL_SEGMENT_BYTES": "65536",
    }
    server = MetronomeServer(env, data_dir=tmp_path / "data", args=("--no-shipper",))
    server.start()
    try:
        load = Load(server.url, threads=2).start()
        deadline = time.monotonic() + 60
        while not load.refused:
            assert time.monotonic() < deadline, "the spool limit never answered 503"
            time.sleep(0.05)
        load.stop()
        refusal = load.refused[0]
        assert refusal.status_code == 503
        assert refusal.headers["Retry-After"].isdigit()
        assert refusal.json()["error"] == "spool_full"
        # each worker re-reads the spool size at most every 0.25 s: the other worker may
        # still hold a size from just before the limit was crossed
        deadline = time.monotonic() + 5
        while (ready := httpx.get(server.url + "/readyz", timeout=30)).status_code != 503:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        assert ready.json()["error"] == "spool_full"
        metrics = server.metrics()
        assert metric_value(metrics, "metronome_spool_bytes") >= 262144
    finally:
        assert server.stop() == 0, server.log_tail()
    drained = server.run_cli("worker", "--drain")
    assert drained.returncode == 0, drained.stderr
    assert f"shipped {len(load.acknowledged)} events" in drained.stderr
    _assert_exactly_once(world.stored_ids(server.data_dir), load.acknowledged)


def test_torn_last_record_is_cut_and_everything_before_it_ships(
    world: World, tmp_path: Path
) -> None:
    server = MetronomeServer(
        world.env, data_dir=tmp_path / "data", args=("--no-shipper",), workers=1
    )
    server.start()
    ids = []
    with httpx.Client(base_url=server.url) as client:
        for n in range(20):
            resp = client.post("/ticks", json=[{"id": "torn", "n": n, "i": i} for i in range(10)])
            ids += resp.json()["ids"]
    assert server.stop() == 0
    (segment,) = segments(spool_dir(server.data_dir))
    with open(segment, "ab") as handle:  # power lost in the middle of the next record
        handle.write(b"\x00\x02\x00\x00\x12\x34" + orjson.dumps({"id": "half"})[:7])

    drained = server.run_cli("worker", "--drain")
    assert drained.returncode == 0, drained.stderr
    assert "shipped 200 events" in drained.stderr
    assert "13 torn bytes cut" in drained.stderr
    assert not segment.exists()
    _assert_exactly_once(world.stored_ids(server.data_dir), ids)


def test_documents_the_store_refuses_go_to_dead_letters_and_the_rest_are_stored(
    engine_url: tuple[str, str], tmp_path: Path
) -> None:
    engine, es_url = engine_url
    prefix = unique_prefix()
    env = {_URL_VARIABLE[engine]: es_url, "METRONOME_INDEX_PREFIX": prefix}
    world = World(engine, env, es_url, prefix)
    server = MetronomeServer(env, data_dir=tmp_path / "data")
    server.start()
    try:
        # a daily index that refuses writes: its documents can never be stored
        blocked = f"{prefix}-ticks-2020.01.01"
        httpx.put(f"{es_url}/{blocked}", timeout=30).raise_for_status()
        httpx.put(
            f"{es_url}/{blocked}/_settings", json={"index.blocks.write": True}, timeout=30
        ).raise_for_status()
        ticks = [{"id": "dl", "ts": "2020-01-01T10:00:00Z", "n": i} for i in range(5)]
        ticks += [{"id": "dl", "ts": "2020-01-02T10:00:00Z", "n": i} for i in range(7)]
        resp = httpx.post(server.url + "/ticks", json=ticks, timeout=30)
        assert resp.status_code == 202
        ids = resp.json()["ids"]
        wait_for_drain(server)
        metrics = server.metrics()
        assert metric_value(metrics, "metronome_dead_letters_total") == 5
    finally:
        assert server.stop() == 0, server.log_tail()
        httpx.put(
            f"{es_url}/{prefix}-ticks-2020.01.01/_settings",
            json={"index.blocks.write": False},
            timeout=30,
        )
    letters = [
        orjson.loads(line)
        for line in (server.data_dir / "dead-letters.ndjson").read_bytes().splitlines()
    ]
    assert sorted(letter["id"] for letter in letters) == sorted(ids[:5])
    assert all("cluster_block_exception" in letter["reason"] for letter in letters)
    assert letters[0]["document"]["params"] == {"n": letters[0]["document"]["params"]["n"]}
    assert sorted(world.stored_ids(server.data_dir)) == sorted(ids[5:])
    delete_prefix(es_url, prefix)
