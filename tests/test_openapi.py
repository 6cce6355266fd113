"""``/openapi.json`` describes the whole API, and the API keeps every promise it makes.

Schemathesis reads the document from a running server and throws generated requests
(valid and invalid: odd types, unicode, huge numbers, missing fields) at every operation:
no answer may be a 500, and every answer must match the documented status codes, media
types and schemas.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from metronome.app import create_app
from metronome.config import Settings
from tests.support.metronome_server import MetronomeServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    srv = MetronomeServer({}, data_dir=tmp_path_factory.mktemp("openapi"))
    srv.start()
    yield srv
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


# The suite sends the same generated requests on every run, so its verdict never depends
# on luck. To hunt for new failures: METRONOME_TEST_FUZZ_RANDOM=1 (new requests each run)
# and METRONOME_TEST_FUZZ_EXAMPLES=500 (per operation and mode; default 25).
FUZZ_RANDOM = os.environ.get("METRONOME_TEST_FUZZ_RANDOM", "") not in ("", "0")
FUZZ_EXAMPLES = int(os.environ.get("METRONOME_TEST_FUZZ_EXAMPLES", "25"))

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_500_or_breaks_its_schema(
    server: MetronomeServer, mode: GenerationMode
) -> None:
    """Every operation, with requests that follow the schema and requests that break it.
    (Driven through schemathesis's Python API: its pytest plugin does not support pytest 9.)
    """
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 12
    if mode == GenerationMode.NEGATIVE:  # only what takes input can be given bad input
        operations = [
            op for op in operations if len(op.body) or len(op.query) or len(op.path_parameters)
        ]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=not FUZZ_RANDOM,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        run()
