"""A report asked for while a new index's shard is starting (the first document of a day
or of a dataset is being written) waits for it rather than answering 503; a shard that
never starts is still a 503 that says so. Real HTTP to a real ``metronome serve`` on a
real Elasticsearch and OpenSearch.

The cluster is made to hold a new index's primary shard unassigned (an allocation filter
naming no node), which is what every new index goes through for a moment; lifting the
filter lets it start, as the cluster does by itself a few hundred milliseconds later.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from metronome.store.connection import SHARD_WAITS_S
from tests.support.backends import Backend, running_backend

_NOWHERE = {"index.routing.allocation.include._name": "no-such-node"}


@pytest.fixture(scope="module", params=["elasticsearch", "opensearch"])
def search_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    with running_backend(request, tmp_path_factory, request.param, {}) as backend:
        yield backend


@contextlib.contextmanager
def _unstarted_index(backend: Backend, day: str) -> Iterator[str]:
    """A ticks index whose primary shard is not allocated anywhere (yet), deleted after."""
    name = f"{backend.index_prefix}-ticks-{day}"
    resp = httpx.put(
        f"{backend.es_url}/{name}",
        params={"wait_for_active_shards": "0"},
        json={"settings": {"number_of_replicas": 0, **_NOWHERE}},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    try:
        health = httpx.get(f"{backend.es_url}/_cluster/health/{name}", timeout=30).json()
        assert health["active_primary_shards"] == 0, health
        yield name
    finally:
        httpx.delete(f"{backend.es_url}/{name}", timeout=30)


def _let_start(backend: Backend, name: str) -> None:
    """Lift the allocation filter: the cluster starts the index's shard."""
    lifted = httpx.put(
        f"{backend.es_url}/{name}/_settings",
        json={key: None for key in _NOWHERE},
        timeout=30,
    )
    assert lifted.status_code == 200, lifted.text


@contextlib.contextmanager
def _tock_in_background(backend: Backend) -> Iterator[Future[tuple[httpx.Response, float]]]:
    """``GET /tock/parks-dataset`` on another thread: its answer and how long it took."""

    def ask() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = backend.client.get("/tock/parks-dataset", timeout=60)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(ask)


def test_a_report_waits_for_a_new_index_whose_shard_is_starting(search_store: Backend) -> None:
    backend = search_store
    with _unstarted_index(backend, "2026.01.01") as name:
        # the cluster itself refuses a search of that index now: what the report must ride out
        raw = httpx.post(f"{backend.es_url}/{name}/_search", json={"size": 0}, timeout=30)
        assert raw.status_code == 503, raw.text
        with _tock_in_background(backend) as answer:
            # a few of the pauses, then the shard may start: lifted early, so a busy cluster
            # has most of the wait (about 2.8 s of SHARD_WAITS_S) to start it
            time.sleep(0.4)
            assert not answer.done(), answer  # still waiting for the shard, not answered
            _let_start(backend, name)
            resp, _ = answer.result(60)
        assert resp.status_code == 200, resp.text
        assert not any(resp.json()["views"].values())  # no views: the index is empty


def test_a_shard_that_never_starts_is_still_a_503_that_says_so(search_store: Backend) -> None:
    backend = search_store
    with _unstarted_index(backend, "2026.01.02"), _tock_in_background(backend) as answer:
        resp, seconds = answer.result(60)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "store_unavailable"
    assert "could not search every shard for the query" in resp.json()["message"]
    # it waited for the shard (every pause), and not much longer
    assert sum(SHARD_WAITS_S) <= seconds < sum(SHARD_WAITS_S) + 20


def test_a_report_is_complete_or_refused_never_partial(search_store: Backend) -> None:
    backend = search_store
    backend.tick(id="parks-dataset")  # today's index, started and holding one view
    backend.settle()
    with _unstarted_index(backend, "2026.01.03") as name:
        # the cluster itself counts what the started shards hold and says 200
        raw = httpx.post(
            f"{backend.es_url}/{backend.index_prefix}-ticks-*/_search",
            params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            json={"size": 0, "query": {"range": {"@timestamp": {"gte": "now-30d"}}}},
            timeout=30,
        )
        assert raw.status_code == 200, raw.text
        shards = raw.json()["_shards"]
        assert shards["successful"] < shards["total"]
        assert raw.json()["hits"]["total"]["value"] == 1
        with _tock_in_background(backend) as answer:
            resp, _ = answer.result(60)
        assert resp.status_code == 503, resp.text  # not today's 1 view as if it were all
        assert resp.json()["error"] == "store_unavailable"
        assert "rather than an incomplete one" in resp.json()["message"]
        _let_start(backend, name)
        report = backend.tock("parks-dataset")
        assert sum(report["views"].values()) == 1
