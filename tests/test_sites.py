"""Sites and keys: one site's key never reaches another site's data, on every backend.

Each backend gets its own ``metronome serve`` (the shared one has no sites). It starts in
the single-user default, then sites and keys are made with the CLI, as an operator would,
while it runs.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from metronome.sites.model import Site
from tests.support.backends import Backend, running_backend
from tests.support.metronome_server import MetronomeServer

# issue 18: these run on OpenSearch as a third store too (see tests/conftest.py)
OPENSEARCH_CONTRACT = True

ORIGIN_A = "https://a.example"
ORIGIN_B = "https://b.example"
RANGE = {"from": "2026-03-01", "to": "2026-03-02"}
TS = "2026-03-01T12:00:00Z"


@dataclass
class World:
    """A server with sites ``a`` (origins a.example and its subdomains), ``b`` (public
    item reports) and ``c``, and keys for them."""

    backend: Backend
    a: str
    b: str
    c: str
    key_a: str  # ingest + query on a
    key_b: str  # ingest + query on b
    read_a: str  # query on a
    ingest_a: str  # ingest on a
    admin: str  # admin on every site
    open_item: str  # ticked before any site existed

    def cli(self, *args: str) -> Any:
        result = self.backend.server.run_cli(*args, timeout_s=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if "--json" in args else result.stdout.strip()

    def post(
        self, path: str, body: Any, key: str | None = None, origin: str | None = None, **params: str
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if origin:
            headers["Origin"] = origin
        return self.backend.client.post(
            path, content=json.dumps(body), headers=headers, params=params
        )

    def tock(self, item: str, key: str | None = None, **params: str) -> httpx.Response:
        self.backend.settle()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.backend.client.get(f"/tock/{item}", headers=headers, params={**RANGE, **params})

    def sites_of(self, item: str) -> Counter[str]:
        """How many stored documents of ``item`` each site has, read from the store."""
        return Counter(doc.get("site", {}).get("id", "(none)") for doc in self.backend.find(item))


def _views(resp: httpx.Response) -> int:
    assert resp.status_code == 200, resp.text
    return sum(resp.json()["views"].values())


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["error"] == code, body
    return body


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    env = {
        "METRONOME_SITES_CACHE_S": "1",
        "METRONOME_BODY_TIMEOUT_S": "1",
        "METRONOME_RATE_LIMIT_PER_IP": "1",
        "METRONOME_RATE_LIMIT_PER_IP_BURST": "5",
        "METRONOME_RATE_LIMIT_PER_SITE": "1",
        "METRONOME_RATE_LIMIT_PER_SITE_BURST": "100",
    }
    with running_backend(request, tmp_path_factory, request.param, env) as backend:
        open_item = "open-" + request.param
        resp = backend.client.post("/tick", json={"id": open_item, "ts": TS})
        assert resp.status_code == 202, resp.text

        def cli(*args: str) -> Any:
            result = backend.server.run_cli(*args, "--json", timeout_s=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        a = cli(
            "sites",
            "create",
            "--name",
            "A",
            "--origin",
            ORIGIN_A,
            "--origin",
            "https://*.a.example",
        )["id"]
        b = cli("sites", "create", "--name", "B", "--origin", ORIGIN_B, "--public-tock")["id"]
        c = cli("sites", "create", "--name", "C")["id"]
        keys = [
            cli("keys", "create", *args)["secret"]
            for args in (
                ("--site", a, "--scope", "ingest", "--scope", "query"),
                ("--site", b, "--scope", "ingest", "--scope", "query"),
                ("--site", a, "--scope", "query"),
                ("--site", a, "--scope", "ingest"),
                ("--all-sites", "--scope", "admin"),
            )
        ]
        world = World(backend, a, b, c, *keys, open_item=open_item)
        deadline = time.monotonic() + 10  # every worker's cache sees the sites
        while time.monotonic() < deadline:
            codes = {backend.client.post("/tick", json={"id": "x"}).status_code for _ in range(4)}
            if codes == {401}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"keys not enforced: {codes}")
        yield world


def test_origins_match_exactly_or_as_subdomains_and_nothing_else() -> None:
    site = Site(
        "s", "S", ("https://Example.org/", "https://*.example.com", "http://localhost:8000")
    )
    assert site.origins == ("https://example.org", "https://*.example.com", "http://localhost:8000")
    for origin in (
        "https://example.org",
        "https://EXAMPLE.org:443",
        "https://a.example.com",
        "https://a.b.example.com",
        "http://localhost:8000",
    ):
        assert site.allows_origin(origin), origin
    for origin in (
        "http://example.org",
        "https://example.org:8443",
        "https://example.com",
        "https://evilexample.com",
        "https://example.org.evil.net",
        "null",
        "",
        "https://user@example.org",
        "http://localhost:8001",
        "https://a.example.com/x",
        "https://example.org\n",
    ):
        assert not site.allows_origin(origin), origin
    assert Site("s", "S", ("*",)).allows_origin("null")
    for bad in (
        "example.org",
        "https://example.org/app",
        "ftp://example.org",
        "https://*",
        "https://a.*.example.org",
    ):
        with pytest.raises(ValueError, match="not an origin"):
            Site("s", "S", (bad,))


def test_open_mode_stores_ticks_under_the_default_site(backend: Backend, item: str) -> None:
    event_id = backend.tick(id=item, site="default")
    assert backend.fetch(event_id)["site"] == {"id": "default"}
    resp = backend.client.post("/tick", json={"id": item, "site": "elsewhere"})
    _error(resp, 400, "unknown_site")


def test_a_sites_key_never_reads_or_writes_another_sites_data(world: World, item: str) -> None:
    w = world
    assert w.post("/tick", {"id": item, "ts": TS}, w.key_a).status_code == 202
    resp = w.post(
        "/ticks",
        [
            {"id": item, "ts": TS, "site": w.a},
            {"id": item, "ts": TS},
            {"id": item, "ts": TS, "event": "download"},
        ],
        w.key_a,
    )
    assert resp.status_code == 202 and resp.json()["accepted"] == 3, resp.text
    resp = w.post("/ticks", [{"id": item, "ts": TS}] * 5, w.key_b)
    assert resp.json()["accepted"] == 5, resp.text

    # every way of writing into b with a's key is refused, and stores nothing
    _error(w.post("/tick", {"id": item, "ts": TS, "site": w.b}, w.key_a), 403, "site_forbidden")
    _error(w.post("/tick", {"id": item, "ts": TS}, w.key_a, site=w.b), 403, "site_forbidden")
    _error(
        w.post("/ticks", [{"id": item, "ts": TS}, {"id": item, "ts": TS, "site": w.b}], w.key_a),
        403,
        "site_forbidden",
    )
    _error(
        w.post("/tick", {"id": item, "ts": TS}, w.key_a, origin=ORIGIN_B, site=w.b),
        403,
        "site_forbidden",
    )
    _error(w.post("/tick", {"id": item, "ts": TS, "site.id": w.b}, w.key_a), 400, "invalid_field")
    _error(
        w.post("/tick", {"id": item, "ts": TS, "site": {"id": w.b}}, w.key_a), 400, "invalid_field"
    )
    _error(w.post("/tick", {"id": item, "ts": TS}, w.read_a), 403, "scope_forbidden")
    _error(w.post("/tick", {"id": item, "ts": TS}, "mk_" + "x" * 43), 401, "invalid_key")
    _error(w.post("/tick", {"id": item, "ts": TS}), 401, "key_required")

    # reads: each key sees its own site only
    assert _views(w.tock(item, w.key_a)) == 3  # the download is not a view
    assert _views(w.tock(item, w.read_a)) == 3
    assert _views(w.tock(item, w.key_b)) == 5
    assert _views(w.tock(item, w.admin, site=w.b)) == 5
    assert _views(w.tock(item, w.admin, site=w.a)) == 3
    _error(w.tock(item, w.key_a, site=w.b), 403, "site_forbidden")
    _error(w.tock(item, w.ingest_a), 403, "scope_forbidden")
    _error(w.tock(item, w.admin), 400, "invalid_parameter")
    _error(w.tock(item), 401, "key_required")
    _error(w.tock(item, site=w.a), 401, "key_required")
    public = w.tock(item, site=w.b)  # b's item reports are public
    assert _views(public) == 5 and public.headers["Access-Control-Allow-Origin"] == "*"
    resp = w.backend.client.get("/tock", params={"id": item, "site": w.c, **RANGE})
    _error(resp, 401, "key_required")

    assert w.sites_of(item) == {w.a: 4, w.b: 5}
    # events from before the sites existed stay with the default site, out of a's reach
    assert w.sites_of(w.open_item) == {"default": 1}
    assert _views(w.tock(w.open_item, w.key_a)) == 0


def test_browser_ingest_needs_the_site_id_and_an_allowed_origin(world: World, item: str) -> None:
    w = world
    client = w.backend.client
    beacon = {"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN_A}
    resp = client.post(
        "/tick", params={"site": w.a}, headers=beacon, content=json.dumps({"id": item, "ts": TS})
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN_A
    resp = client.post(
        "/tick",
        headers={**beacon, "Origin": "https://www.a.example"},
        content=json.dumps({"id": item, "ts": TS, "site": w.a}),
    )
    assert resp.status_code == 202, resp.text  # a subdomain; the site named in the tick

    body = _error(
        w.post("/tick", {"id": item, "ts": TS}, origin=ORIGIN_B, site=w.a), 403, "origin_forbidden"
    )
    assert body["details"] == {"origin": ORIGIN_B, "site": w.a}
    _error(
        w.post("/tick", {"id": item, "ts": TS}, origin="null", site=w.a), 403, "origin_forbidden"
    )
    _error(w.post("/tick", {"id": item, "ts": TS}, site=w.a), 401, "key_required")
    _error(
        w.post("/tick", {"id": item, "ts": TS}, origin=ORIGIN_A, site="nosuchsite"),
        400,
        "unknown_site",
    )
    _error(
        w.post("/ticks", [{"id": item, "site": w.a}, {"id": item, "site": w.b}], origin=ORIGIN_A),
        400,
        "invalid_field",
    )

    preflight = {
        "Origin": ORIGIN_A,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    resp = client.options("/ticks", params={"site": w.a}, headers=preflight)
    assert resp.status_code == 204, resp.text
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN_A
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"].lower() == "content-type"
    resp = client.options("/tick", params={"site": w.a}, headers={**preflight, "Origin": ORIGIN_B})
    _error(resp, 403, "origin_forbidden")
    assert "Access-Control-Allow-Origin" not in resp.headers

    assert w.sites_of(item) == {w.a: 2}


def test_a_revoked_key_is_refused_within_the_cache_time(world: World) -> None:
    w = world
    made = w.cli(
        "keys", "create", "--site", w.c, "--scope", "ingest", "--name", "soon gone", "--json"
    )
    created_at = time.monotonic()
    while w.post("/tick", {"id": "r", "ts": TS}, made["secret"]).status_code != 202:
        assert time.monotonic() - created_at < 5, "a new key is not taken"
        time.sleep(0.1)
    w.cli("keys", "revoke", made["id"])
    revoked_at = time.monotonic()
    while w.post("/tick", {"id": "r", "ts": TS}, made["secret"]).status_code == 202:
        assert time.monotonic() - revoked_at < 5, "a revoked key still works"
        time.sleep(0.1)
    _error(w.post("/tick", {"id": "r", "ts": TS}, made["secret"]), 401, "invalid_key")

    deadline = time.monotonic() + 30
    while True:  # use is recorded when a worker next reloads its copy (on a request)
        w.post("/tick", {"id": "r", "ts": TS}, made["secret"])
        listed = {k["id"]: k for k in w.cli("keys", "list", "--site", w.c, "--json")}
        if listed[made["id"]]["last_used"] is not None or time.monotonic() > deadline:
            break
    assert listed[made["id"]]["revoked"] is not None
    assert listed[made["id"]]["last_used"] is not None
    assert listed[made["id"]]["prefix"] == made["secret"][:7]
    assert "secret" not in listed[made["id"]] and "hash" not in listed[made["id"]]
    table = w.cli("keys", "list")
    assert made["id"] in table and made["secret"] not in table
    # the registry holds a hash of the secret, never the secret
    if w.backend.es_url:
        stored = httpx.get(
            f"{w.backend.es_url}/{w.backend.index_prefix}-sites/_search", params={"size": 100}
        ).text
        hidden = httpx.get(
            f"{w.backend.es_url}/{w.backend.index_prefix}-*/_search",
            params={"q": f"kind:key AND id:{made['id']}"},
        ).json()
        assert hidden["hits"]["total"]["value"] == 0  # hidden from <prefix>-* searches
    else:
        with sqlite3.connect(w.backend.server.data_dir / "metronome.sqlite3") as conn:
            stored = repr(conn.execute("SELECT * FROM keys").fetchall())
    assert made["id"] in stored and made["secret"] not in stored


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)
def test_ingest_is_rate_limited_per_client_address_and_per_site(world: World) -> None:
    w = world
    client = w.backend.client

    def beacon(address: str) -> httpx.Response:
        return client.post(
            "/tick",
            params={"site": w.a},
            content='{"id": "rl"}',
            headers={"Content-Type": "text/plain", "Origin": ORIGIN_A, "X-Forwarded-For": address},
        )

    codes = [beacon("198.51.100.7").status_code for _ in range(14)]  # burst 5 per worker
    assert 429 in codes and set(codes) == {202, 429}, codes
    limited = beacon("198.51.100.7")
    body = _error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    assert body["details"]["per"] == "client address"
    assert limited.headers["Access-Control-Allow-Origin"] == ORIGIN_A
    assert beacon("198.51.100.8").status_code == 202  # another address has its own bucket

    # a site's ticks are limited however they come: here an admin key (never per address)
    answers = [w.post("/ticks", [{"id": "rl"}] * 150, w.admin, site=w.c) for _ in range(4)]
    assert [r.status_code for r in answers].count(429) >= 1, [r.text for r in answers]
    assert next(r for r in answers if r.status_code == 429).json()["details"]["per"] == "site"
    assert w.post("/tick", {"id": "rl"}, w.key_b).status_code == 202  # other sites go on


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)
def test_a_body_that_comes_too_slowly_gets_408(world: World) -> None:
    port = world.backend.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /tick HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 40\r\n"
            f'Authorization: Bearer {world.key_a}\r\n\r\n{{"id"'.encode()
        )
        started = time.monotonic()
        answer = ""
        while not answer.endswith("}"):  # headers and body may come apart
            chunk = sock.recv(4096).decode()
            if not chunk:
                break
            answer += chunk
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"error":"request_timeout"' in answer
    assert time.monotonic() - started < 5


def test_serve_warns_when_reachable_from_other_machines_without_sites() -> None:
    server = MetronomeServer({}, workers=1, args=("--host", "0.0.0.0", "--no-shipper"))
    server.start(wait_ready=False)
    try:
        log = server.log_path.read_text()
    finally:
        assert server.stop() == 0
    assert "WARNING: listening on 0.0.0.0 with no sites: anyone" in log, log


def test_the_python_client_sends_with_its_key(world: World, item: str) -> None:
    from metronome.client import Client

    client = Client(world.backend.server.url, key=world.key_b, flush_interval_s=0.05)
    for _ in range(3):
        client.tick(item, ts=TS)
    assert client.flush(10)
    client.close()
    assert (client.stats.sent, client.stats.rejected) == (3, 0)
    assert world.sites_of(item) == {world.b: 3}


def test_query_and_reports_answer_for_the_keys_site_only(world: World, item: str) -> None:
    w = world
    assert w.post("/ticks", [{"id": item, "ts": TS}] * 2, w.key_a).json()["accepted"] == 2
    assert w.post("/ticks", [{"id": item, "ts": TS}] * 3, w.key_b).json()["accepted"] == 3
    w.backend.settle()
    window = {"from": RANGE["from"], "to": RANGE["to"]}

    def query(key: str | None, body: dict[str, Any], **params: str) -> httpx.Response:
        return w.post("/query", {"range": window, **body}, key, **params)

    def events(resp: httpx.Response) -> list[Any]:
        assert resp.status_code == 200, resp.text
        return [(*r["dimensions"], *r["metrics"]) for r in resp.json()["results"]]

    mine = {"filters": [["is", "item", [item]]]}
    assert events(query(w.key_a, mine)) == [(2,)]
    assert events(query(w.read_a, mine)) == [(2,)]
    assert events(query(w.key_b, mine)) == [(3,)]
    assert events(query(w.admin, mine, site=w.b)) == [(3,)]
    # asking for another site's documents through a filter or a dimension finds nothing
    assert events(
        query(w.key_a, {"filters": [["is", "item", [item]], ["is", "site.id", [w.b]]]})
    ) == [(0,)]
    assert events(
        query(w.key_a, {"filters": [["or", [["is", "site.id", [w.b]], ["is", "item", [item]]]]]})
    ) == [(2,)]
    assert events(query(w.key_a, {**mine, "dimensions": ["site.id"]})) == [(w.a, 2)]
    _error(query(w.key_a, mine, site=w.b), 403, "site_forbidden")
    _error(query(w.ingest_a, mine), 403, "scope_forbidden")
    _error(query(None, mine), 401, "key_required")
    _error(query(None, mine, site=w.b), 401, "key_required")  # public tock is not /query

    def report(name: str, key: str | None, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return w.backend.client.get(
            f"/reports/{name}", headers=headers, params={**window, **params}
        )

    top = report("top-items", w.key_a, limit="1000")
    assert (item, 2, 1) in events(top) or (item, 2, 0) in events(top)
    assert all(r["dimensions"][0] != w.open_item for r in top.json()["results"])
    _error(report("top-items", w.key_a, site=w.b), 403, "site_forbidden")
    _error(report("top-items", None), 401, "key_required")
    assert _views(report("tock", None, id=item, site=w.b)) == 3  # b's item reports are public
    _error(report("tock", None, id=item, site=w.a), 401, "key_required")

    forgotten = w.backend.server.run_cli(
        "forget", "--where", json.dumps(mine["filters"]), "--site", w.b, "--yes"
    )
    assert "deleted 3 events" in forgotten.stdout, forgotten.stderr
    assert w.sites_of(item) == {w.a: 2}
