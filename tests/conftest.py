"""Fixtures that describe the world: a real Elasticsearch, running Metronome servers.

``es_url`` is ``METRONOME_TEST_ELASTICSEARCH_URL`` when set, else a server this run
downloads and starts (it is started when the session begins, so it boots while the first
tests run). If it cannot start, every test that needs it errors: nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from metronome.pipeline.spool import backlog, spool_dir
from tests.support import compose
from tests.support.es_server import ElasticsearchServer
from tests.support.metronome_server import MetronomeServer

_es: ElasticsearchServer | None = None
_es_error: BaseException | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _es, _es_error
    if os.environ.get("METRONOME_TEST_ELASTICSEARCH_URL") or hasattr(config, "workerinput"):
        return
    try:
        _es = ElasticsearchServer()
        _es.start()
    except BaseException as exc:  # reported by the es_url fixture, never swallowed
        _es_error = exc


def pytest_unconfigure(config: pytest.Config) -> None:
    if _es is not None:
        _es.cleanup()


@pytest.fixture(scope="session")
def es_server() -> ElasticsearchServer:
    """The Elasticsearch server this run owns (tests may stop and start it)."""
    if os.environ.get("METRONOME_TEST_ELASTICSEARCH_URL"):
        pytest.fail(
            "this test needs the suite's own Elasticsearch server; "
            "unset METRONOME_TEST_ELASTICSEARCH_URL"
        )
    if _es_error is not None:
        raise RuntimeError(f"Elasticsearch could not be started: {_es_error}")
    assert _es is not None
    _es.wait_ready()
    return _es


@pytest.fixture(scope="session")
def es_url() -> str:
    url = os.environ.get("METRONOME_TEST_ELASTICSEARCH_URL")
    if url:
        httpx.get(
            f"{url}/_cluster/health",
            params={"wait_for_status": "yellow", "timeout": "60s"},
            timeout=70,
        )
        return url.rstrip("/")
    if _es_error is not None:
        raise RuntimeError(f"Elasticsearch could not be started: {_es_error}")
    assert _es is not None
    _es.wait_ready()
    return _es.url


def wait_for_drain(server: MetronomeServer, timeout_s: float = 60.0) -> None:
    """Wait until the shipper has moved everything acknowledged into the store."""
    deadline = time.monotonic() + timeout_s
    spool = spool_dir(server.data_dir)
    while backlog(spool, with_age=False).bytes_unshipped:
        if time.monotonic() > deadline:
            raise AssertionError(f"spool not drained in {timeout_s}s:\n{server.log_tail()}")
        time.sleep(0.02)


def unique_prefix() -> str:
    return "mt-" + uuid.uuid4().hex[:10]


@dataclass
class Backend:
    """A running Metronome on one store, and how to make its writes searchable."""

    name: str
    server: MetronomeServer
    client: httpx.Client
    settle: Callable[[], None]
    es_url: str | None = None
    index_prefix: str | None = None

    def tick(self, **fields: object) -> str:
        """POST one tick; return its event id (asserting 202)."""
        resp = self.client.post("/tick", json=fields)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    def tock(self, item: str, **params: str) -> dict[str, dict[str, int]]:
        self.settle()
        resp = self.client.get(f"/tock/{item}", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def find(self, item: str) -> list[dict[str, Any]]:
        """Every stored document of an item, oldest first, read from the store itself."""
        self.settle()
        if self.es_url:
            resp = httpx.post(
                f"{self.es_url}/{self.index_prefix}-*/_search",
                timeout=30,
                json={"query": {"term": {"item.id": item}}, "size": 1000, "sort": ["@timestamp"]},
            )
            return [hit["_source"] for hit in resp.json()["hits"]["hits"]]
        with sqlite3.connect(self.server.data_dir / "metronome.sqlite3") as conn:
            rows = conn.execute(
                "SELECT doc FROM events WHERE item_id = ? ORDER BY ts", (item,)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def fetch(self, event_id: str) -> dict[str, object]:
        """The stored document for an event id, read from the store itself."""
        self.settle()
        if self.es_url:
            resp = httpx.post(
                f"{self.es_url}/{self.index_prefix}-ticks-*/_search",
                json={"query": {"ids": {"values": [event_id]}}},
                timeout=30,
            )
            hits = resp.json()["hits"]["hits"]
            assert len(hits) == 1, hits
            return hits[0]["_source"]  # type: ignore[no-any-return]
        with sqlite3.connect(self.server.data_dir / "metronome.sqlite3") as conn:
            row = conn.execute("SELECT doc FROM events WHERE id = ?", (event_id,)).fetchone()
        assert row is not None, event_id
        return json.loads(row[0])  # type: ignore[no-any-return]


def _delete_prefix(es_url: str, prefix: str) -> None:
    # expand_wildcards=all: the hidden <prefix>-sites index too
    httpx.delete(f"{es_url}/{prefix}-*", params={"expand_wildcards": "all"}, timeout=30)
    httpx.delete(f"{es_url}/_index_template/{prefix}-*", timeout=30)
    httpx.delete(f"{es_url}/_component_template/{prefix}-*", timeout=30)


@contextlib.contextmanager
def running_backend(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    env: dict[str, str],
) -> Iterator[Backend]:
    """A fresh ``metronome serve`` on ``kind`` (``sqlite``, ``elasticsearch``) with
    ``env``; stopped (and its indices deleted) afterwards, checking it exited cleanly."""
    data_dir = tmp_path_factory.mktemp(f"data-{kind}")
    # keep client addresses, so tests can see which address was believed (default: drop)
    env = {"METRONOME_TRUSTED_PROXIES": "127.0.0.0/8", "METRONOME_CLIENT_IP": "keep", **env}
    es_url = prefix = None
    if kind == "elasticsearch":
        es_url = request.getfixturevalue("es_url")
        prefix = unique_prefix()
        env |= {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    server = MetronomeServer(env, data_dir=data_dir)
    server.start()

    def settle() -> None:
        wait_for_drain(server)
        if es_url:
            httpx.post(f"{es_url}/{prefix}-*/_refresh", timeout=30).raise_for_status()

    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Backend(kind, server, client, settle, es_url, prefix)
    finally:
        code = server.stop()
        if es_url and prefix:
            _delete_prefix(es_url, prefix)
    assert code == 0, f"metronome serve did not exit cleanly:\n{server.log_tail()}"
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)


@pytest.fixture(scope="session", params=["sqlite", "elasticsearch"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """Metronome on each backend in turn (one server per backend for the session), with
    no sites: nothing needs a key (tests/test_sites.py has servers with sites)."""
    with running_backend(request, tmp_path_factory, request.param, {}) as started:
        yield started


@pytest.fixture
def item() -> str:
    """A fresh item id, so tests sharing a server never see each other's ticks."""
    return "item-" + uuid.uuid4().hex[:12]


_compose_build: threading.Thread | None = None
_compose_built: dict[str, Any] = {}


def _build_compose() -> None:
    try:
        _compose_built["config"] = compose.install()
    except BaseException as exc:  # reported by the docker_compose fixture
        _compose_built["error"] = exc


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need ``docker compose`` run last, and the plugin (built from source the
    first time, minutes) starts building now, in the background, while the rest run."""
    global _compose_build
    needs = [i for i in items if "docker_compose" in getattr(i, "fixturenames", ())]
    if not needs or _compose_build is not None or config.option.collectonly:
        return
    items[:] = [i for i in items if i not in needs] + needs
    _compose_build = threading.Thread(target=_build_compose, name="compose-build", daemon=True)
    _compose_build.start()


@pytest.fixture(scope="session")
def docker_compose() -> compose.Compose:
    """The real ``docker compose`` CLI (see tests/support/compose.py)."""
    if _compose_build is None:
        _build_compose()
    else:
        _compose_build.join()
    if "error" in _compose_built:
        raise RuntimeError(f"docker compose is not available: {_compose_built['error']}")
    return compose.Compose(_compose_built["config"])
