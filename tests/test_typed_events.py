"""Typed platform events through real HTTP on both stores: schemas from the configuration
file refuse bad ticks naming the field, typed fields are stored with their types and are
summed, split and ranked by /query and the platform reports."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import Backend, running_backend

CONFIG = """
[event_schemas."file.uploaded".schema]
type = "object"
required = ["bytes", "dataset", "space"]
properties.bytes = { type = "integer", minimum = 0 }
properties.dataset = { type = "string" }
properties.space = { type = "string" }
properties.user = { type = "string" }

[event_schemas."file.deleted"]
negative = ["bytes"]
[event_schemas."file.deleted".schema]
type = "object"
required = ["bytes", "space"]
properties.bytes = { type = "integer", minimum = 0 }
properties.dataset = { type = "string" }
properties.space = { type = "string" }

[event_schemas."extraction.queued".schema]
type = "object"
required = ["extractor"]
properties.extractor = { type = "string" }
properties.message = { type = "string" }

[event_schemas."extraction.started".schema]
type = "object"
required = ["extractor"]
properties.extractor = { type = "string" }

[event_schemas."extraction.finished".schema]
type = "object"
required = ["extractor", "runtime_ms"]
properties.extractor = { type = "string" }
properties.message = { type = "string" }
properties.runtime_ms = { type = "number", minimum = 0 }

[event_schemas."resource.download".schema]
type = "object"
required = ["resource", "url"]
properties.resource = { type = "string" }
properties.url = { type = "string", pattern = "^https?://" }

# declared for another site only: the default site's ticks of this type are free
[event_schemas."page.flagged"]
sites = ["research"]
[event_schemas."page.flagged".schema]
type = "object"
required = ["reason"]
properties.reason = { type = "string" }
"""


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def typed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    config = tmp_path_factory.mktemp("typed-config") / "metronome.toml"
    config.write_text(CONFIG)
    env = {"METRONOME_CONFIG": str(config)}
    with running_backend(request, tmp_path_factory, request.param, env) as started:
        yield started


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _query(backend: Backend, body: dict[str, object]) -> dict:
    backend.settle()
    resp = backend.client.post("/query", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _report(backend: Backend, name: str, **params: str) -> dict:
    backend.settle()
    resp = backend.client.get(f"/reports/{name}", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_typed_fields_are_stored_with_their_types_not_as_params(typed: Backend) -> None:
    space = _name("space")
    uploaded = typed.tick(
        id="file-1", event="file.uploaded", bytes=1500, dataset="d1", space=space, note="x"
    )
    deleted = typed.tick(id="file-1", event="file.deleted", bytes=500, space=space)
    doc = typed.fetch(uploaded)
    assert doc["typed"] == {"bytes": 1500, "dataset": "d1", "space": space}
    assert doc["params"] == {"note": "x"}  # undeclared keys stay free parameters
    assert typed.fetch(deleted)["typed"] == {"bytes": -500, "space": space}  # counts negative


def test_tick_breaking_its_schema_is_refused_naming_the_field(typed: Backend) -> None:
    missing = typed.client.post("/tick", json={"id": "f", "event": "file.uploaded", "bytes": 3})
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_field"
    assert missing.json()["details"]["field"] == "dataset"
    wrong = typed.client.post(
        "/tick",
        json={"id": "f", "event": "file.uploaded", "bytes": "many", "dataset": "d", "space": "s"},
    )
    assert wrong.status_code == 400
    assert wrong.json()["details"]["field"] == "bytes"
    assert "'bytes'" in wrong.json()["message"]
    bad_url = typed.client.post(
        "/tick", json={"id": "r", "event": "resource.download", "resource": "r", "url": "ftp://x"}
    )
    assert bad_url.status_code == 400
    assert bad_url.json()["details"]["field"] == "url"


def test_batch_refuses_only_the_items_that_break_their_schema(typed: Backend) -> None:
    space = _name("space")
    resp = typed.client.post(
        "/ticks",
        json=[
            {"id": "a", "event": "file.uploaded", "bytes": 10, "dataset": "d", "space": space},
            {"id": "b", "event": "file.uploaded", "bytes": -1, "dataset": "d", "space": space},
            {"id": "c", "event": "file.deleted", "space": space},
            {"id": "d", "event": "custom.thing", "bytes": "free text"},
        ],
    )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["error"], r["details"]["field"]) for r in body["rejected"]] == [
        (1, "invalid_field", "bytes"),
        (2, "invalid_field", "bytes"),
    ]
    free = typed.fetch(body["ids"][3])
    assert free["params"] == {"bytes": "free text"} and "typed" not in free


def test_a_schema_for_other_sites_leaves_this_sites_ticks_free(typed: Backend) -> None:
    event_id = typed.tick(id="p", event="page.flagged", other=1)
    doc = typed.fetch(event_id)
    assert doc["params"] == {"other": 1} and "typed" not in doc


def test_query_sums_typed_numbers_per_typed_keyword(typed: Backend) -> None:
    a, b = _name("space"), _name("space")
    for space, sizes in ((a, [100, 250]), (b, [7])):
        for size in sizes:
            typed.tick(id="f", event="file.uploaded", bytes=size, dataset="d", space=space)
    typed.tick(id="f", event="file.deleted", bytes=50, space=a)
    answer = _query(
        typed,
        {
            "source": "ticks",
            "range": "2d",
            "metrics": [{"sum": "typed.bytes"}, "events"],
            "dimensions": ["typed.space"],
            "filters": [["is", "typed.space", [a, b]]],
            "order_by": [["typed.space", "asc"]],
        },
    )
    got = {row["dimensions"][0]: row["metrics"] for row in answer["results"]}
    assert got == {a: [300, 3], b: [7, 1]}


def test_query_refuses_undeclared_and_misused_typed_fields(typed: Backend) -> None:
    unknown = typed.client.post(
        "/query", json={"source": "ticks", "metrics": [{"sum": "typed.nothing"}]}
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_query"
    assert "typed.bytes" in unknown.json()["message"]  # lists the declared ones
    text_sum = typed.client.post(
        "/query", json={"source": "ticks", "metrics": [{"sum": "typed.space"}]}
    )
    assert text_sum.status_code == 400
    assert "numeric" in text_sum.json()["message"]


def test_storage_growth_report_keeps_a_running_total_per_space(typed: Backend) -> None:
    space = _name("space")
    events = [
        ("2025-02-01T10:00:00Z", "file.uploaded", 1000),  # before the range
        ("2025-02-03T10:00:00Z", "file.uploaded", 300),
        ("2025-02-03T11:00:00Z", "file.deleted", 100),
        ("2025-02-05T09:00:00Z", "file.uploaded", 50),
    ]
    for ts, event, size in events:
        typed.tick(id="f", event=event, bytes=size, dataset="d", space=space, ts=ts)
    answer = _report(typed, "storage-growth", **{"from": "2025-02-02", "to": "2025-02-05"})
    rows = [
        (r["time"], r["added_bytes"], r["removed_bytes"], r["net_bytes"], r["total_bytes"])
        for r in answer["results"]
        if r["space"] == space
    ]
    assert rows == [  # every day of the range, the quiet ones too
        ("2025-02-02", 0, 0, 0, 1000),
        ("2025-02-03", 300, 100, 200, 1200),
        ("2025-02-04", 0, 0, 0, 1200),
        ("2025-02-05", 50, 0, 50, 1250),
    ]


def test_extractions_report_counts_queue_length_over_time(typed: Backend) -> None:
    extractor = _name("ocr")
    events = [
        ("2025-03-01T09:10:00Z", "extraction.queued", {}),  # before the range
        ("2025-03-02T09:05:00Z", "extraction.queued", {}),
        ("2025-03-02T09:06:00Z", "extraction.queued", {}),
        ("2025-03-02T09:20:00Z", "extraction.started", {}),
        ("2025-03-02T11:30:00Z", "extraction.finished", {"runtime_ms": 120}),
    ]
    for ts, event, extra in events:
        typed.tick(id="x", event=event, extractor=extractor, ts=ts, **extra)
    answer = _report(
        typed, "extractions", interval="hour", **{"from": "2025-03-02", "to": "2025-03-02"}
    )
    busy = [r for r in answer["results"] if r["queued"] or r["started"] or r["finished"]]
    assert busy == [
        {
            "time": "2025-03-02T09:00+00:00",
            "queued": 2,
            "started": 1,
            "finished": 0,
            "queue_length": 3,
        },
        {
            "time": "2025-03-02T11:00+00:00",
            "queued": 0,
            "started": 0,
            "finished": 1,
            "queue_length": 2,
        },
    ]
    assert len(answer["results"]) == 24  # every hour of the day, the quiet ones too
    assert answer["results"][-1]["queue_length"] == 2


def test_runtime_percentiles_and_downloads_per_resource(typed: Backend) -> None:
    fast, slow = _name("fast"), _name("slow")
    for runtime in (10, 20, 30):
        typed.tick(id="x", event="extraction.finished", extractor=fast, runtime_ms=runtime)
    typed.tick(id="x", event="extraction.finished", extractor=slow, runtime_ms=5000.5)
    runtime = _report(typed, "extraction-runtime", range="2d")
    rows = {r["dimensions"][0]: r["metrics"] for r in runtime["results"]}
    assert rows[fast][0] == 3 and rows[fast][1] == pytest.approx(20)
    assert rows[fast][5] == 30
    assert rows[slow][5] == 5000.5
    assert runtime["meta"]["metrics"][:3] == [
        "events",
        "p50:typed.runtime_ms",
        "p95:typed.runtime_ms",
    ]

    popular, rare = _name("res"), _name("res")
    for resource, count in ((popular, 3), (rare, 1)):
        for _ in range(count):
            typed.tick(
                id=resource,
                event="resource.download",
                resource=resource,
                url=f"https://data.example.org/{resource}",
            )
    downloads = _report(typed, "downloads-per-resource", range="2d", limit="100")
    counts = {r["dimensions"][0]: r["metrics"][0] for r in downloads["results"]}
    assert counts[popular] == 3 and counts[rare] == 1
    names = [r["dimensions"][0] for r in downloads["results"]]
    assert names.index(popular) < names.index(rare)


def test_conflicting_field_types_stop_serve_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[event_schemas."a".schema]\nproperties.size = { type = "integer" }\n'
        '[event_schemas."b".schema]\nproperties.size = { type = "string" }\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "metronome", "--config", str(config), "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("METRONOME_")},
            "METRONOME_DATA_DIR": str(tmp_path / "data"),
        },
    )
    assert result.returncode != 0
    assert "event_schemas.b.schema.properties.size" in result.stderr
    assert "one type" in result.stderr
