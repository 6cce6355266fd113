"""A three-node Elasticsearch cluster that loses a node, and one restarted node by node.

Three processes of the test distribution on loopback (tests/support/es_cluster.py), daily
indices with one replica, Metronome given all three URLs. Ingestion runs throughout;
``/tock`` and ``/query`` must be exact before, during (the cluster yellow) and after, and
every acknowledged event must be stored exactly once. The figures the README's "Scaling"
section quotes are printed (``-s`` shows them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from metronome.pipeline.spool import backlog, spool_dir
from tests.support.backends import unique_prefix, wait_for_drain
from tests.support.es_cluster import ElasticsearchCluster
from tests.support.metronome_server import MetronomeServer

# minutes per test: left out of the default run (tests/conftest.py); scripts/test -m cluster
pytestmark = pytest.mark.cluster

DAY = "2015-01-22"


@pytest.fixture(scope="module")
def es_cluster() -> Iterator[ElasticsearchCluster]:
    cluster = ElasticsearchCluster()
    try:
        cluster.start()
        cluster.wait_for("green", nodes=3)
        yield cluster
    finally:
        cluster.cleanup()


@dataclass
class Load:
    """Threads posting batches of ticks until stopped; remembers what was acknowledged."""

    url: str
    threads: int = 1
    batch: int = 10
    acknowledged: list[str] = field(default_factory=list)
    refused: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                ticks = [{"id": "load", "ts": f"{DAY}T12:00:00Z"}] * self.batch
                try:
                    resp = client.post("/ticks", json=ticks)
                except httpx.TransportError:
                    continue
                with self._lock:
                    if resp.status_code == 202:
                        self.acknowledged += [i for i in resp.json()["ids"] if i]
                    else:
                        self.refused += 1
                time.sleep(0.1)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=60)


@dataclass
class World:
    cluster: ElasticsearchCluster
    server: MetronomeServer
    prefix: str
    known: int = 0  # ticks of the item "known", all acknowledged

    def add_known(self, n: int) -> None:
        resp = httpx.post(
            self.server.url + "/ticks", json=[{"id": "known", "ts": f"{DAY}T08:00:00Z"}] * n
        )
        assert resp.status_code == 202, resp.text
        self.known += n

    def refresh(self, *, drain: bool = True) -> None:
        if drain:  # only when no load runs: under load the spool is never empty
            wait_for_drain(self.server, timeout_s=180)
        for url in self.cluster.urls:  # through any live node
            try:
                httpx.post(f"{url}/{self.prefix}-*/_refresh", timeout=60).raise_for_status()
                return
            except httpx.HTTPError:
                continue
        raise AssertionError("no node answers")

    def counts(self) -> tuple[int, int]:
        """The known item's count by ``/tock`` and by ``/query``."""
        tock = httpx.get(
            f"{self.server.url}/tock/known", params={"from": DAY, "to": DAY}, timeout=60
        )
        assert tock.status_code == 200, tock.text
        answer = httpx.post(
            f"{self.server.url}/query",
            json={
                "source": "ticks",
                "range": {"from": DAY, "to": DAY},
                "metrics": ["events"],
                "filters": [["is", "item", ["known"]]],
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        return tock.json()["views"][DAY], answer.json()["results"][0]["metrics"][0]

    def assert_exact(self, *, under_load: bool = False, timeout_s: float = 180) -> None:
        """``/tock`` and ``/query`` count the known item exactly: never more, and (under
        load, once the shipper has reached them) exactly what was acknowledged."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.refresh(drain=not under_load)
            counts = self.counts()
            assert max(counts) <= self.known, counts
            if counts == (self.known, self.known):
                return
            assert time.monotonic() < deadline, f"{counts}, expected {self.known}"
            time.sleep(1)

    def stored_ids(self) -> list[str]:
        self.refresh()
        url = self.cluster.urls[0]
        ids: list[str] = []
        resp = httpx.post(
            f"{url}/{self.prefix}-ticks-*/_search",
            params={"scroll": "1m"},
            json={"size": 5000, "_source": False, "sort": ["_doc"]},
            timeout=60,
        ).json()
        while resp["hits"]["hits"]:
            ids += [hit["_id"] for hit in resp["hits"]["hits"]]
            resp = httpx.post(
                f"{url}/_search/scroll",
                json={"scroll": "1m", "scroll_id": resp["_scroll_id"]},
                timeout=60,
            ).json()
        return ids


@pytest.fixture
def world(
    es_cluster: ElasticsearchCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    prefix = unique_prefix()
    server = MetronomeServer(
        {
            "METRONOME_ELASTICSEARCH_URL": ",".join(es_cluster.urls),
            "METRONOME_INDEX_PREFIX": prefix,
            "METRONOME_INDEX_REPLICAS": "1",
            "METRONOME_ELASTICSEARCH_RETRIES": "3",
        },
        data_dir=tmp_path_factory.mktemp("cluster"),
        workers=1,
    )
    server.start()
    try:
        yield World(es_cluster, server, prefix)
    finally:
        code = server.stop()
        for url in es_cluster.urls:
            try:
                httpx.delete(f"{url}/{prefix}-*", params={"expand_wildcards": "all"}, timeout=60)
                break
            except httpx.HTTPError:
                continue
    assert code == 0, server.log_tail()
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)


def _exactly_once(world: World, load: Load) -> None:
    stored = world.stored_ids()
    assert len(stored) == len(set(stored)), "an event was stored twice"
    acknowledged = set(load.acknowledged) | set()
    missing = acknowledged - set(stored)
    assert not missing, f"{len(missing)} acknowledged events are not stored"
    assert len(stored) == len(acknowledged) + world.known


def _spool_bytes(server: MetronomeServer) -> int:
    return backlog(spool_dir(Path(server.data_dir)), with_age=False).bytes_unshipped


def test_a_killed_node_loses_nothing_and_answers_stay_exact(world: World) -> None:
    cluster = world.cluster
    world.add_known(30)
    world.assert_exact()  # before
    with Load(world.server.url) as load:
        time.sleep(5)
        cluster.nodes[1].kill()
        killed_at = time.monotonic()
        yellow_s = cluster.wait_for("yellow", nodes=2)
        world.add_known(20)
        world.assert_exact(under_load=True)  # during: yellow, one node gone
        during = len(load.acknowledged)
        cluster.nodes[1].start()
        green_s = cluster.wait_for("green", nodes=3)
        time.sleep(3)
    world.add_known(10)
    world.assert_exact()  # after
    _exactly_once(world, load)
    print(
        f"\nkilled node: yellow {yellow_s:.1f}s after the kill, green {green_s:.1f}s after the"
        f" restart ({time.monotonic() - killed_at:.0f}s in all); {len(load.acknowledged)}"
        f" events acknowledged under load ({during} before the restart), {load.refused}"
        " batches refused"
    )
    assert load.refused == 0


def test_a_rolling_restart_loses_nothing_and_answers_stay_exact(world: World) -> None:
    cluster = world.cluster
    world.add_known(10)
    world.assert_exact()
    took = []
    with Load(world.server.url) as load:
        for node in cluster.nodes:
            started = time.monotonic()
            node.stop()
            cluster.wait_for("yellow", nodes=2)
            world.add_known(5)
            world.assert_exact(under_load=True)
            node.start()
            cluster.wait_for("green", nodes=3)
            took.append(time.monotonic() - started)
    world.assert_exact()
    _exactly_once(world, load)
    print(
        f"\nrolling restart: {', '.join(f'{t:.0f}s' for t in took)} per node;"
        f" {len(load.acknowledged)} events acknowledged under load, {load.refused} refused"
    )
    assert load.refused == 0


def test_a_red_cluster_keeps_ticks_in_the_spool_until_it_is_back(world: World) -> None:
    """Two of three nodes gone: no master, nothing can be written. Ticks are still
    acknowledged (into the spool, up to METRONOME_SPOOL_MAX_BYTES) and stored once it is
    back."""
    cluster = world.cluster
    world.add_known(10)
    world.assert_exact()
    with Load(world.server.url) as load:
        cluster.nodes[1].kill()
        cluster.nodes[2].kill()
        outage = time.monotonic()
        time.sleep(20)
        during = len(load.acknowledged)
        spooled = _spool_bytes(world.server)
        ready = httpx.get(world.server.url + "/readyz", timeout=60).json()
        assert ready["status"] == "degraded", ready
        cluster.nodes[1].start()
        cluster.nodes[2].start()
        cluster.wait_for("green", nodes=3)
        back = time.monotonic()
    drained = time.monotonic()
    world.assert_exact()
    drain_s = time.monotonic() - drained
    _exactly_once(world, load)
    print(
        f"\nred cluster: {during} events acknowledged in the first 20 s of the outage,"
        f" {spooled} bytes waiting in the spool; green again {back - outage:.0f}s after"
        f" the kill; the backlog stored {drain_s:.1f}s after that; readyz said:"
        f" {ready['reason']}"
    )
    assert during > 0 and spooled > 0
