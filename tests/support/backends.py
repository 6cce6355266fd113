"""Running Metronome servers on a store, and how to read back what they stored.

:func:`running_backend` starts ``metronome serve`` on the embedded store or on
Elasticsearch (a fresh index prefix, deleted afterwards); :class:`Backend` posts ticks,
waits until they are searchable (:func:`wait_for_drain`, then a refresh) and reads the
stored documents from the store itself.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from metronome.pipeline.spool import backlog, spool_dir
from tests.support.metronome_server import MetronomeServer

__all__ = ["Backend", "delete_prefix", "running_backend", "unique_prefix", "wait_for_drain"]


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
            hits = self._search(
                "*", {"query": {"term": {"item.id": item}}, "size": 1000, "sort": ["@timestamp"]}
            )
            return [hit["_source"] for hit in hits]
        with sqlite3.connect(self.server.data_dir / "metronome.sqlite3") as conn:
            rows = conn.execute(
                "SELECT doc FROM events WHERE item_id = ? ORDER BY ts", (item,)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def _search(self, indices: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The hits of a search under the test's prefix. An index the shipper has just
        made can answer 503 (its shards are still being assigned) or 429 for a moment:
        such an answer is asked again for up to 30 s; any other error fails with its body."""
        deadline = time.monotonic() + 30
        while True:
            resp = httpx.post(
                f"{self.es_url}/{self.index_prefix}-{indices}/_search", json=body, timeout=30
            )
            if resp.status_code not in (429, 503) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert resp.status_code == 200, resp.text
        return resp.json()["hits"]["hits"]  # type: ignore[no-any-return]

    def fetch(self, event_id: str) -> dict[str, object]:
        """The stored document for an event id, read from the store itself."""
        self.settle()
        if self.es_url:
            hits = self._search("ticks-*", {"query": {"ids": {"values": [event_id]}}})
            assert len(hits) == 1, hits
            return hits[0]["_source"]  # type: ignore[no-any-return]
        with sqlite3.connect(self.server.data_dir / "metronome.sqlite3") as conn:
            row = conn.execute("SELECT doc FROM events WHERE id = ?", (event_id,)).fetchone()
        assert row is not None, event_id
        return json.loads(row[0])  # type: ignore[no-any-return]


def delete_prefix(es_url: str, prefix: str) -> None:
    """Delete every index and template a test made under ``prefix``."""
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
    """A fresh ``metronome serve`` on ``kind`` (``sqlite``, ``elasticsearch``, or
    ``elasticsearch-basic``, ``-apikey``, ``-mtls``: through the TLS proxy) with
    ``env``; stopped (and its indices deleted) afterwards, checking it exited cleanly.

    ``kind="elasticsearch"`` takes the ``es_url`` fixture (which starts the suite's
    Elasticsearch on first use); a test that gets here that way is marked
    ``elasticsearch`` by the "elasticsearch" value of its parameter (tests/conftest.py).
    """
    data_dir = tmp_path_factory.mktemp(f"data-{kind}")
    # keep client addresses, so tests can see which address was believed (default: drop)
    env = {"METRONOME_TRUSTED_PROXIES": "127.0.0.0/8", "METRONOME_CLIENT_IP": "keep", **env}
    es_url = prefix = None
    if kind.startswith("elasticsearch"):
        es_url = request.getfixturevalue("es_url")
        prefix = unique_prefix()
        env |= {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    if kind == "opensearch":  # the same REST API for reading back: es_url is its URL here
        es_url = request.getfixturevalue("os_url")
        prefix = unique_prefix()
        env |= {"METRONOME_OPENSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    if kind.startswith("elasticsearch-"):  # through TLS and auth: tests/support/secure_proxy.py
        env |= request.getfixturevalue("secure_proxy").env(kind.removeprefix("elasticsearch-"))
    server = MetronomeServer(env, data_dir=data_dir)
    server.start()

    def settle() -> None:
        wait_for_drain(server)
        if es_url:
            # expand_wildcards=all: the hidden <prefix>-related index (related items) too
            httpx.post(
                f"{es_url}/{prefix}-*/_refresh", params={"expand_wildcards": "all"}, timeout=30
            ).raise_for_status()

    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            name = kind.split("-")[0]  # the store /readyz names
            yield Backend(name, server, client, settle, es_url, prefix)
    finally:
        code = server.stop()
        if es_url and prefix:
            delete_prefix(es_url, prefix)
    assert code == 0, f"metronome serve did not exit cleanly:\n{server.log_tail()}"
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)
