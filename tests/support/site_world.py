"""A running Metronome with one site and a key of each scope, for ingest tests.

:func:`site_world` starts ``metronome serve`` (through :func:`running_backend`), creates
site ``shop`` (pages at :data:`ORIGIN` may send it ticks), a second site ``other``, and
keys with the ``ingest``, ``query`` and ``admin`` scopes on ``shop``, then waits until
every worker enforces them.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.backends import Backend, running_backend

__all__ = ["ORIGIN", "SiteWorld", "rejected_counts", "site_world"]

ORIGIN = "https://shop.example"

_REJECTED = re.compile(r'^metronome_events_rejected_total\{reason="([^"]+)"\} (\S+)$', re.M)


def rejected_counts(client: httpx.Client) -> Counter[str]:
    """``metronome_events_rejected_total`` by reason, scraped from ``/metrics``."""
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    counts: Counter[str] = Counter()
    for reason, value in _REJECTED.findall(resp.text):
        counts[reason] += int(float(value))
    return counts


@dataclass
class SiteWorld:
    backend: Backend
    site: str
    other: str
    ingest: str
    query: str
    admin: str  # admin on every site

    @property
    def client(self) -> httpx.Client:
        return self.backend.client


@contextlib.contextmanager
def site_world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    kind: str = "sqlite",
    env: dict[str, str] | None = None,
) -> Iterator[SiteWorld]:
    settings = {"METRONOME_SITES_CACHE_S": "1", **(env or {})}
    with running_backend(request, tmp_path_factory, kind, settings) as backend:

        def cli(*args: str) -> Any:
            result = backend.server.run_cli(*args, "--json", timeout_s=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        site = cli("sites", "create", "--id", "shop", "--name", "Shop", "--origin", ORIGIN)["id"]
        other = cli("sites", "create", "--id", "other", "--name", "Other")["id"]
        ingest, query = (
            cli("keys", "create", "--site", site, "--scope", scope)["secret"]
            for scope in ("ingest", "query")
        )
        admin = cli("keys", "create", "--all-sites", "--scope", "admin")["secret"]
        world = SiteWorld(backend, site, other, ingest, query, admin)
        deadline = time.monotonic() + 10  # every worker's cache sees the sites
        codes: set[int] = set()
        while time.monotonic() < deadline:
            codes = {
                backend.client.post("/tick", json={"id": "x"}).status_code for _ in range(4)
            } | {
                backend.client.post(
                    "/tick", json={"id": "x"}, headers={"Authorization": f"Bearer {ingest}"}
                ).status_code
                for _ in range(4)
            }
            if codes == {401, 202}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"keys not enforced: {codes}")
        yield world
