"""Once sites exist, losing them never opens the server: a registry whose sites are gone
or unreadable (a deleted ``<prefix>-sites`` index, a broken ``sites`` table) refuses
requests until they are back; single-user mode comes back only with ``metronome sites
reset --confirm``."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from metronome.sites.elasticsearch import PROPERTIES
from metronome.store.hidden_index import hidden_index_body
from tests.support.backends import Backend, running_backend

TS = 1_700_000_000_000


def _cli(backend: Backend, *args: str) -> Any:
    result = backend.server.run_cli(*args, "--json", timeout_s=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _tick(backend: Backend, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return backend.client.post("/tick", json={"id": "fc", "ts": TS}, headers=headers)


def _until(what: str, check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _every_worker_answers(backend: Backend, status: int, key: str | None = None) -> bool:
    return {_tick(backend, key).status_code for _ in range(6)} == {status}


def _remove_mark(backend: Backend) -> None:
    if backend.es_url:
        url = f"{backend.es_url}/{backend.index_prefix}-sites-created"
        httpx.delete(url, timeout=30).raise_for_status()
    else:
        (backend.server.data_dir / "sites-created").unlink()


def _is_marked(backend: Backend) -> bool:
    if backend.es_url:
        url = f"{backend.es_url}/{backend.index_prefix}-sites-created/_doc/sites-created"
        return httpx.head(url, timeout=30).status_code == 200
    return (backend.server.data_dir / "sites-created").exists()


def _break_sites(backend: Backend) -> list[dict[str, Any]]:
    """Take the sites away as a careless operator would; the documents, to restore."""
    if not backend.es_url:
        with sqlite3.connect(backend.server.data_dir / "metronome.sqlite3") as db:
            db.execute("ALTER TABLE sites RENAME TO sites_saved")
        return []
    index = f"{backend.es_url}/{backend.index_prefix}-sites"
    found = httpx.get(f"{index}/_search", params={"size": 100}, timeout=30)
    found.raise_for_status()
    httpx.delete(index, timeout=30).raise_for_status()
    return list(found.json()["hits"]["hits"])


def _restore_sites(backend: Backend, saved: list[dict[str, Any]]) -> None:
    if not backend.es_url:
        with sqlite3.connect(backend.server.data_dir / "metronome.sqlite3") as db:
            db.execute("DROP TABLE IF EXISTS sites")  # a restarted server made an empty one
            db.execute("ALTER TABLE sites_saved RENAME TO sites")
        return
    index = f"{backend.es_url}/{backend.index_prefix}-sites"
    httpx.put(index, json=hidden_index_body(PROPERTIES), timeout=30)
    for hit in saved:
        httpx.put(
            f"{index}/_doc/{hit['_id']}",
            params={"refresh": "true"},
            json=hit["_source"],
            timeout=30,
        ).raise_for_status()


@pytest.mark.parametrize("kind", ["sqlite", "elasticsearch"])
def test_lost_sites_refuse_requests_until_restored_or_explicitly_reset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str
) -> None:
    with running_backend(request, tmp_path_factory, kind, {"METRONOME_SITES_CACHE_S": "1"}) as b:
        site = _cli(b, "sites", "create", "--name", "A")["id"]
        key = _cli(b, "keys", "create", "--site", site, "--scope", "ingest", "--scope", "query")
        secret = key["secret"]
        _until("keys are not enforced", lambda: _every_worker_answers(b, 401))
        # sites made before the mark existed (an upgrade): a server's next reload marks them
        _remove_mark(b)
        _until("the mark is not written back", lambda: _tick(b).status_code > 0 and _is_marked(b))

        saved = _break_sites(b)
        # running servers keep their last copy: keys are still needed, through many reloads
        started = time.monotonic()
        while time.monotonic() - started < 3:
            assert _tick(b).status_code == 401
            assert b.client.post("/query", json={"metrics": ["ticks"]}).status_code == 401
            time.sleep(0.2)
        # a server starting with no copy of its own refuses everything, saying what to do
        b.server.stop()
        (b.server.data_dir / "sites-cache.json").unlink()
        b.server.start()
        for resp in (_tick(b), _tick(b, secret), b.client.post("/query", json={})):
            assert resp.status_code == 503, resp.text
            error = resp.json()
            assert error["error"] == "store_unavailable"
            assert "metronome sites reset --confirm" in error["message"]
        listed = b.server.run_cli("sites", "list", timeout_s=60)
        assert listed.returncode == 1 and "Traceback" not in listed.stderr, listed.stderr
        assert "sites reset --confirm" in listed.stderr

        _restore_sites(b, saved)
        _until("restored keys are not taken", lambda: _every_worker_answers(b, 202, secret))
        assert _every_worker_answers(b, 401)

        # single-user mode again only on an explicit, confirmed reset
        unconfirmed = b.server.run_cli("sites", "reset", timeout_s=60)
        assert unconfirmed.returncode == 2 and "--confirm" in unconfirmed.stderr
        assert _every_worker_answers(b, 401)
        reset = b.server.run_cli("sites", "reset", "--confirm", timeout_s=60)
        assert reset.returncode == 0, reset.stderr
        _until("a reset server does not open", lambda: _every_worker_answers(b, 202))
        assert _cli(b, "sites", "list") == []
