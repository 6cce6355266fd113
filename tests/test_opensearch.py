"""OpenSearch as a store: what differs from Elasticsearch, and AWS request signing.

The ticks, tock and query contract modules run on OpenSearch as a third store (they say
``OPENSEARCH_CONTRACT = True``; tests/conftest.py); this module covers what only
OpenSearch has: the templates compiled for it, the settings that do not apply, and SigV4
signing, checked by a local proxy that recomputes each signature with botocore's own
signer (a test double of AWS: tests/support/sigv4_proxy.py) in front of the suite's real
OpenSearch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metronome.config import Settings
from metronome.store.leases import open_leases
from metronome.store.templates import load_templates
from tests.support.backends import delete_prefix, unique_prefix, wait_for_drain
from tests.support.metronome_server import MetronomeServer
from tests.support.sigv4_proxy import SigV4Proxy

ROOT = Path(__file__).parent.parent
OPENSEARCH_CONTRACT = True  # a ``backend`` test added here runs on OpenSearch too


def _clean_env(**env: str) -> dict[str, str]:
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METRONOME_", "AWS_")) and k != "BOTO_CONFIG"
    }
    return {**kept, **env}


@pytest.fixture
def sigv4(os_url: str) -> Iterator[SigV4Proxy]:
    proxy = SigV4Proxy(os_url)
    proxy.start()
    yield proxy
    proxy.stop()


def _walk_keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _walk_keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _walk_keys(v)}
    return set()


def test_templates_are_compiled_for_opensearch_from_the_one_definition() -> None:
    elastic = load_templates(Settings.from_env({"METRONOME_ELASTICSEARCH_URL": "http://e:9200"}))
    opensearch = load_templates(Settings.from_env({"METRONOME_OPENSEARCH_URL": "http://o:9200"}))
    assert [t.name for t in elastic] == [t.name for t in opensearch]
    assert "subobjects" in _walk_keys([t.body for t in elastic])
    assert not {"subobjects", "ignore_dynamic_beyond_limit"} & _walk_keys(
        [t.body for t in opensearch]
    )
    # everything else is the same definition
    for a, b in zip(elastic, opensearch, strict=True):
        assert _walk_keys(a.body) - {"subobjects", "ignore_dynamic_beyond_limit"} == _walk_keys(
            b.body
        )


def test_signed_requests_reach_opensearch_and_a_wrong_secret_is_named(
    sigv4: SigV4Proxy, os_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    prefix = unique_prefix()
    env = _clean_env(**sigv4.env(), METRONOME_INDEX_PREFIX=prefix)
    server = MetronomeServer(env, data_dir=tmp_path_factory.mktemp("data"), workers=1)
    wrong = MetronomeServer(
        {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        data_dir=tmp_path_factory.mktemp("data"),
        workers=1,
    )
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ticks = [{"id": "signed", "ts": "2015-01-22T08:00:00Z"}] * 3
            assert client.post("/ticks", json=ticks).status_code == 202
            wait_for_drain(server)
            httpx.post(f"{os_url}/{prefix}-*/_refresh", timeout=30)
            tock = client.get("/tock/signed", params={"from": "2015-01-22", "to": "2015-01-22"})
            assert tock.status_code == 200, tock.text
            assert tock.json()["views"] == {"2015-01-22": 3}, tock.json()
            assert client.get("/readyz").json() == {"status": "ready", "store": "opensearch"}
        assert sigv4.checked > 0 and sigv4.refused == 0
        wrong.start()
        ready = httpx.get(wrong.url + "/readyz", timeout=30).json()
        assert ready["status"] == "degraded"
        assert "signature we calculated does not match" in ready["reason"]
    finally:
        assert server.stop() == 0
        wrong.stop()
        delete_prefix(os_url, prefix)
    for log in (server.log_path.read_text(), wrong.log_path.read_text()):
        assert "Traceback" not in log and sigv4.secret_key not in log


def test_settings_that_do_not_apply_to_opensearch_are_refused() -> None:
    for env, says in (
        (
            {"METRONOME_ELASTICSEARCH_URL": "http://e:9200"},
            "conflicts with METRONOME_OPENSEARCH_URL",
        ),
        ({"METRONOME_ELASTICSEARCH_API_KEY": "a:b"}, "does not work with OpenSearch"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "metronome", "settings"],
            capture_output=True,
            text=True,
            env=_clean_env(METRONOME_OPENSEARCH_URL="http://o:9200", **env),
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 2 and says in done.stderr, done.stderr


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        capture_output=True,
        text=True,
        env=_clean_env(**env),
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_apps_and_kpis_are_kept_in_opensearch(os_url: str) -> None:
    """The registries beside the store reach OpenSearch through its own client too."""
    prefix = unique_prefix()
    env = {"METRONOME_OPENSEARCH_URL": os_url, "METRONOME_INDEX_PREFIX": prefix}
    try:
        _cli(env, "apps", "create", "longhorn", "--no-token")
        apps = _cli(env, "apps", "list", "--json")
        assert "longhorn" in apps
        stored = httpx.get(f"{os_url}/{prefix}-apps/_doc/longhorn", timeout=30).json()
        assert stored["found"] and stored["_source"]["id"] == "longhorn"
        _cli(env, "kpis", "create", "--id", "signups", "--name", "Sign-ups")
        assert '"signups"' in _cli(env, "kpis", "list")
        stored = httpx.get(f"{os_url}/{prefix}-kpis/_doc/default:signups", timeout=30).json()
        assert stored["found"] and stored["_source"]["definition"]["name"] == "Sign-ups"
        _cli(env, "kpis", "delete", "signups")
        assert '"signups"' not in _cli(env, "kpis", "list")
    finally:
        delete_prefix(os_url, prefix)


def test_a_lease_is_won_once_in_opensearch(os_url: str) -> None:
    """Scheduled jobs claim their period in OpenSearch: one winner, state kept."""
    prefix = unique_prefix()
    settings = Settings.from_env(
        {"METRONOME_OPENSEARCH_URL": os_url, "METRONOME_INDEX_PREFIX": prefix}
    )

    async def run() -> None:
        async with open_leases(settings) as leases:
            assert await leases.leases() == []
            claims = [await leases.claim("retention", 7, who, 1_000, 60_000) for who in "ab"]
            assert [c.won for c in claims] == [True, False]
            assert await leases.release("retention", 7, "a", {"deleted": 3})
            (kept,) = await leases.leases()
            assert (kept.name, kept.period, kept.state) == ("retention", 7, {"deleted": 3})

    try:
        asyncio.run(run())
    finally:
        delete_prefix(os_url, prefix)
