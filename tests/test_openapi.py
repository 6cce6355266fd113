"""``/openapi.json`` describes the whole API, and the API keeps every promise it makes.

Schemathesis reads the document from a running server and throws generated requests
(valid and invalid: odd types, unicode, huge numbers, missing fields) at every operation:
no answer may be a 500, and every answer must match the documented status codes, media
types and schemas. It does so three ways: on a server with no site (the single-user
default: no keys), and on a server with a site, without a key and with the site's key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from metronome.app import create_app
from metronome.config import Settings
from tests.support.fuzz import fuzz
from tests.support.metronome_server import MetronomeServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    srv = MetronomeServer({}, data_dir=tmp_path_factory.mktemp("openapi"))
    srv.start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


@dataclass
class Guarded:
    """A server with one site (public item reports, origin ``https://a.example``) and a
    key for it with the ``ingest``, ``query`` and ``probe`` scopes."""

    server: MetronomeServer
    site: str
    key: str


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    srv = MetronomeServer(
        {
            "METRONOME_SITES_CACHE_S": "1",
            "METRONOME_RATE_LIMIT_PER_IP": "0",
            "METRONOME_RATE_LIMIT_PER_SITE": "0",
        },
        data_dir=tmp_path_factory.mktemp("openapi-sites"),
    )
    srv.start()

    def cli(*args: str) -> Any:
        result = srv.run_cli(*args, "--json", timeout_s=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    site = cli("sites", "create", "--name", "A", "--origin", "https://a.example", "--public-tock")
    key = cli(
        "keys",
        "create",
        "--site",
        site["id"],
        *("--scope", "ingest", "--scope", "query", "--scope", "probe"),  # probe: issue 20
    )
    deadline = time.monotonic() + 10  # every worker's cache sees the site
    while {httpx.post(f"{srv.url}/tick", json={"id": "x"}).status_code for _ in range(4)} != {401}:
        assert time.monotonic() < deadline, "the site's rules are not enforced"
        time.sleep(0.2)
    yield Guarded(srv, site["id"], key["secret"])
    srv.stop()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


def _routes(tmp_path: Path) -> set[str]:
    app = create_app(Settings.from_env({"METRONOME_DATA_DIR": str(tmp_path)}))
    found: set[str] = set()
    todo = list(app.falcon_app._router._roots)  # falcon's compiled router: a tree of path segments
    while todo:
        node = todo.pop()
        if node.resource is not None:
            found.add(node.uri_template)
        todo.extend(node.children)
    return found


def test_the_document_lists_every_route_and_every_error_code(
    server: MetronomeServer, tmp_path: Path
) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == _routes(tmp_path)
    codes = set(document["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert {"invalid_query", "invalid_field", "spool_full", "not_found"} <= codes
    query = document["components"]["schemas"]["Query"]
    assert query["additionalProperties"] is False  # unknown fields are errors
    assert query["properties"]["filters"]["items"] == {"$ref": "#/components/schemas/QueryFilter"}


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_the_document_describes_who_may_call_each_operation(server: MetronomeServer) -> None:
    """Keys are bearer keys with scopes; each operation says which scope it needs (or
    none), answers 401 and 403 when it checks keys, and takes the ``site`` parameter when
    it works on one site's events."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    scheme = document["components"]["securitySchemes"]["key"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    scopes = {}
    for path, method, operation in _operations(document):
        requirements = operation["security"]
        scopes[(method, path)] = sorted(s for r in requirements for s in r.get("key", []))
        if requirements:
            assert {} in requirements, path  # no key while no site exists
            assert {"401", "403"} <= set(operation["responses"]), path
            names = [p["name"] for p in operation["parameters"] if p["in"] == "query"]
            assert names.count("site") == 1, path
    assert scopes == {
        ("post", "/tick"): ["ingest"],
        ("post", "/ticks"): ["ingest"],
        ("get", "/tick.gif"): ["ingest"],
        ("post", "/query"): ["query"],
        ("get", "/tock"): ["query"],
        ("get", "/tock/{item_id}"): ["query"],
        ("get", "/reports/{name}"): ["query"],
        ("get", "/kpis"): ["query"],
        ("post", "/kpis"): ["query"],
        ("get", "/kpis/{kpi_id}"): ["query"],
        ("delete", "/kpis/{kpi_id}"): ["query"],
        ("get", "/reports"): [],
        ("get", "/healthz"): [],
        ("get", "/readyz"): [],
        ("get", "/metrics"): [],
        ("get", "/metronome.js"): [],
        ("get", "/openapi.json"): [],
        ("post", "/probe/results"): ["probe"],  # remote probes (issue 20)
        # telemetry (issue 19): the clients send no key
        **{
            (method, f"{prefix}/v1/{name}"): []
            for prefix in ("", "/apps/{app}")
            for method, name in (
                ("post", "metrics"),
                ("post", "checkupgrade"),
                ("get", "healthcheck"),
            )
        },
        ("get", "/live"): ["query"],
        ("get", "/live/events"): ["query"],
        ("post", "/live/token"): ["query"],
        ("get", "/dashboard"): [],
        ("get", "/dashboard/{asset}"): [],
        ("get", "/items/{item_id}/related"): ["query"],  # issue 25: recommendations
        ("get", "/items/related"): ["query"],
        # issue 25: funnels saved per site
        ("get", "/funnels"): ["query"],
        ("post", "/funnels"): ["query"],
        ("get", "/funnels/{funnel_id}/report"): ["query"],
        ("get", "/funnels/{funnel_id}"): ["query"],
        ("put", "/funnels/{funnel_id}"): ["query"],
        ("delete", "/funnels/{funnel_id}"): ["query"],
    }


def test_the_server_enforces_exactly_the_documented_security(guarded: Guarded) -> None:
    """Once a site exists: an operation documented without security answers without a
    key; one that needs a key answers 401 without it (the public item report excepted, for
    a site that has one) and not 401 or 403 with the site's key."""
    url = guarded.server.url
    document = httpx.get(f"{url}/openapi.json").json()
    bodies: dict[str, Any] = {
        "/tick": {"id": "sec"},
        "/ticks": [{"id": "sec"}],
        "/query": {"metrics": ["events"], "range": {"from": "2026-01-01", "to": "2026-01-02"}},
        "/probe/results": {"probe": "p-sec", "region": "sec", "results": []},
        **{
            f"{prefix}/v1/{name}": body
            for prefix in ("", "/apps/{app}")
            for name, body in (
                ("metrics", [{"name": "sec", "fields": {"value": 1}}]),
                ("checkupgrade", {"appVersion": "v1"}),
            )
        },
        "/kpis": {"id": "sec", "name": "sec"},  # made before /kpis/{kpi_id} reads and removes it
        # made before /funnels/{funnel_id}/report and /funnels/{funnel_id} read and remove it
        "/funnels": {"id": "sec", "name": "sec", "steps": [{"page": "/a"}, {"page": "/b"}]},
        "/funnels/{funnel_id}": {"name": "sec", "steps": [{"page": "/a"}, {"page": "/b"}]},
    }
    params = {
        "/tick.gif": {"id": "sec"},
        "/tock": {"id": "sec"},
        "/items/related": {"id": "sec"},
        "/live/events": {"s": json.dumps({"id": "sec", "query": {"range": "5min"}})},
    }
    with httpx.Client(base_url=url, timeout=10) as client:
        for path, method, operation in _operations(document):
            target = path.replace("{item_id}", "sec").replace("{name}", "top-items")
            target = target.replace("{app}", "telemetry")  # the default app
            target = target.replace("{kpi_id}", "sec").replace("{funnel_id}", "sec")
            target = target.replace("{asset}", "dashboard.js")
            request: dict[str, Any] = {"params": params.get(path, {})}
            if path in bodies:
                request["json"] = bodies[path]
            anonymous = client.request(method, target, **request)
            key = {"Authorization": f"Bearer {guarded.key}"}
            # an event stream never ends: its status and headers tell
            with client.stream(method, target, headers=key, **request) as keyed:
                pass
            if not operation["security"]:
                assert anonymous.status_code < 400, (path, anonymous.text)
                continue
            assert anonymous.status_code == 401, (path, anonymous.text)
            assert anonymous.json()["error"] == "key_required"
            if path == "/live":  # a WebSocket, asked over plain HTTP
                assert keyed.status_code == 426, path
                continue
            assert keyed.status_code < 400, (path, keyed.status_code)
            if path.startswith("/tock"):  # the site's item reports are public
                public = client.request(
                    method, target, params={**request["params"], "site": guarded.site}
                )
                assert public.status_code == 200, (path, public.text)


# The suite sends the same generated requests on every run, so its verdict never depends
# on luck. To hunt for new failures: METRONOME_TEST_FUZZ_RANDOM=1 (new requests each run)
# and METRONOME_TEST_FUZZ_EXAMPLES=500 (per operation and mode; default 25); see
# tests/support/fuzz.py.

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("caller", ["no-sites", "anonymous", "key"])
def test_no_operation_answers_500_or_breaks_its_schema(
    request: pytest.FixtureRequest, mode: GenerationMode, caller: str
) -> None:
    """Every operation, with requests that follow the schema and requests that break it,
    on a server without sites, and on one with a site: without a key, and with its key.
    (Driven through schemathesis's Python API: its pytest plugin does not support pytest 9.)
    """
    headers: dict[str, str] = {}
    if caller == "no-sites":
        url = request.getfixturevalue("server").url
    else:
        guarded: Guarded = request.getfixturevalue("guarded")
        url = guarded.server.url
        if caller == "key":
            headers["Authorization"] = f"Bearer {guarded.key}"
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 12
    # an event stream (GET /live/events) never ends: a whole answer cannot be read and checked
    operations = [
        op
        for op in operations
        if "text/event-stream"
        not in op.definition.raw["responses"].get("200", {}).get("content", {})
    ]
    if mode == GenerationMode.NEGATIVE:  # only what takes input can be given bad input
        operations = [
            op for op in operations if len(op.body) or len(op.query) or len(op.path_parameters)
        ]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @fuzz(25)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        run()
