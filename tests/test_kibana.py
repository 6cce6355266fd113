"""Kibana saved objects (metronome/kibana_objects/metronome.ndjson), `metronome kibana import`.

The objects are checked against the index templates they will meet: every field a data
view, a Lens column, a query or a filter names must be mapped with a type Kibana can
aggregate, and every reference must resolve. The import command runs against a test
double of Kibana's import endpoint (tests/support/kibana_double.py): Kibana itself cannot
run on the test machines.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from metronome.config import Settings
from metronome.kibana import load_saved_objects, saved_objects_path
from metronome.store.templates import load_templates
from scripts.gen_kibana import render
from tests.support.es_server import free_port
from tests.support.kibana_double import KibanaDouble

AGGREGATABLE = {
    "keyword": "string",
    "constant_keyword": "string",
    "long": "number",
    "integer": "number",
    "short": "number",
    "byte": "number",
    "double": "number",
    "float": "number",
    "half_float": "number",
    "scaled_float": "number",
    "unsigned_long": "number",
    "date": "date",
    "date_nanos": "date",
    "ip": "ip",
    "boolean": "boolean",
}
NUMERIC_OPERATIONS = {
    "sum",
    "average",
    "min",
    "max",
    "median",
    "percentile",
    "standard_deviation",
    "percentile_rank",
}
RECORDS = "___records___"
ACCESSOR_KEYS = {
    "xAccessor",
    "splitAccessor",
    "accessors",
    "primaryGroups",
    "metrics",
    "columnId",
    "metricAccessor",
    "secondaryGroups",
}

OBJECTS = load_saved_objects()
GUIDE = (Path(__file__).resolve().parent.parent / "docs" / "guides" / "kibana.md").read_text()
BY_KEY = {(o["type"], o["id"]): o for o in OBJECTS}


class Mapping:
    """The field types an index template maps (explicitly or by dynamic template)."""

    def __init__(self, index_template: str) -> None:
        templates = {t.name: t for t in load_templates(Settings.from_env({}))}
        self.name = index_template
        self.patterns = templates[index_template].body["index_patterns"]
        self.types: dict[str, str] = {}
        self.dynamic: list[tuple[str, str]] = []
        for name in templates[index_template].body["composed_of"]:
            mappings = templates[name].body["template"].get("mappings", {})
            self._walk(mappings.get("properties", {}), "")
            for entry in mappings.get("dynamic_templates", []):
                (spec,) = entry.values()
                if "path_match" in spec and "type" in spec["mapping"]:
                    self.dynamic.append((spec["path_match"], spec["mapping"]["type"]))

    def _walk(self, properties: dict[str, Any], prefix: str) -> None:
        for name, spec in properties.items():
            path = prefix + name
            if "properties" in spec:
                self._walk(spec["properties"], path + ".")
                continue
            self.types[path] = spec.get("type", "object")
            for sub, sub_spec in spec.get("fields", {}).items():
                self.types[f"{path}.{sub}"] = sub_spec["type"]

    def type_of(self, field: str) -> str | None:
        if field in self.types:
            return self.types[field]
        for pattern, kind in self.dynamic:
            if fnmatch.fnmatchcase(field, pattern) and field not in self.types:
                return kind
        return None

    def check(self, field: str, where: str) -> str:
        """The Lens data type of an aggregatable field; fails the test otherwise."""
        kind = self.type_of(field)
        assert kind is not None, f"{where}: {field!r} is not mapped by {self.name}"
        assert kind in AGGREGATABLE, (
            f"{where}: {field!r} is a {kind} in {self.name}, which Kibana cannot aggregate"
        )
        return AGGREGATABLE[kind]


MAPPINGS = [Mapping(t.name) for t in load_templates(Settings.from_env({})) if t.kind == "index"]


def mapping_for(data_view: dict[str, Any]) -> Mapping:
    title = data_view["attributes"]["title"]
    (found,) = [m for m in MAPPINGS if title in m.patterns]
    return found


def kql_fields(query: str) -> list[str]:
    """Field names in a KQL query (``field : value``), quoted values removed first."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    return re.findall(r"(?:^|[\s(])([A-Za-z_@][\w.@]*)\s*:", bare)


def referenced(obj: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    refs = [r for r in obj["references"] if r["name"] == name]
    assert len(refs) == 1, f"{obj['id']}: reference {name!r} missing or repeated"
    assert refs[0]["type"] == kind, refs[0]
    key = (refs[0]["type"], refs[0]["id"])
    assert key in BY_KEY, f"{obj['id']}: {name} points at {key}, which is not in the file"
    return BY_KEY[key]


def accessors(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ACCESSOR_KEYS:
                found |= {value} if isinstance(value, str) else set(value)
            else:
                found |= accessors(value)
    elif isinstance(node, list):
        for item in node:
            found |= accessors(item)
    return found


def lens_data_views(lens: dict[str, Any]) -> list[dict[str, Any]]:
    layers = lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
    return [
        referenced(lens, f"indexpattern-datasource-layer-{layer_id}", "index-pattern")
        for layer_id in layers
    ]


# --- the saved objects ----------------------------------------------------------------


def test_the_file_is_what_the_generator_writes() -> None:
    assert saved_objects_path().read_text() == render(), (
        "regenerate with: python scripts/gen_kibana.py"
    )


def test_there_is_a_data_view_per_dataset_on_timestamp() -> None:
    views = {o["attributes"]["title"]: o for o in OBJECTS if o["type"] == "index-pattern"}
    assert set(views) == {"metronome-ticks-*", "metronome-logs-*", "metronome-metrics-*"}
    for view in views.values():
        mapping = mapping_for(view)
        attributes = view["attributes"]
        assert attributes["timeFieldName"] == "@timestamp"
        assert mapping.check("@timestamp", view["id"]) == "date"
        for field in json.loads(attributes["fieldFormatMap"]):
            mapping.check(field, f"{view['id']} field format")
        for field in json.loads(attributes["fieldAttrs"]):
            mapping.check(field, f"{view['id']} field attributes")


def test_every_lens_field_is_mapped_aggregatable_with_the_type_lens_expects() -> None:
    lenses = [o for o in OBJECTS if o["type"] == "lens"]
    assert len(lenses) >= 10
    for lens in lenses:
        state = lens["attributes"]["state"]
        (view,) = {v["id"]: v for v in lens_data_views(lens)}.values()
        mapping = mapping_for(view)
        where = f"lens {lens['id']}"
        for layer in state["datasourceStates"]["formBased"]["layers"].values():
            assert set(layer["columnOrder"]) == set(layer["columns"]), where
            for column_id, column in layer["columns"].items():
                field = column["sourceField"]
                if field == RECORDS:
                    assert column["operationType"] == "count", where
                else:
                    data_type = mapping.check(field, f"{where} column {column_id}")
                    if column["operationType"] == "unique_count":  # a count of any type
                        assert column["dataType"] == "number", (where, column_id)
                    else:
                        assert column["dataType"] == data_type, (where, column_id, data_type)
                    if column["operationType"] in NUMERIC_OPERATIONS:
                        assert data_type == "number", (where, column_id)
                    if column["operationType"] == "date_histogram":
                        assert data_type == "date", (where, column_id)
                if column.get("filter"):
                    for name in kql_fields(column["filter"]["query"]):
                        mapping.check(name, f"{where} column {column_id} filter")
                order = column.get("params", {}).get("orderBy", {})
                if order.get("type") == "column":
                    assert order["columnId"] in layer["columns"], where
            assert accessors(state["visualization"]) == set(layer["columns"]), (
                f"{where}: the chart and the columns disagree"
            )
        for name in kql_fields(state["query"]["query"]):
            mapping.check(name, f"{where} query")
        for flt in state["filters"]:
            mapping.check(flt["meta"]["key"], f"{where} filter")


def test_every_dashboard_panel_resolves_and_its_query_fits_every_panel() -> None:
    dashboards = [o for o in OBJECTS if o["type"] == "dashboard"]
    assert {d["attributes"]["title"] for d in dashboards} == {
        "Metronome: ticks",
        "Metronome: access logs",
        "Metronome: telemetry",
        "Metronome: monitors",
    }
    titles: list[str] = []
    for board in dashboards:
        panels = json.loads(board["attributes"]["panelsJSON"])
        search = json.loads(board["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        cells: Counter[tuple[int, int]] = Counter()
        for panel in panels:
            name = f"{panel['panelIndex']}:{panel['panelRefName']}"
            target = referenced(board, name, panel["type"])
            titles.append(target["attributes"]["title"])
            grid = panel["gridData"]
            assert grid["i"] == panel["panelIndex"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 48, (board["id"], grid)
            cells.update(
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            )
            for view in lens_data_views(target):
                for field in kql_fields(search["query"]["query"]):
                    mapping_for(view).check(field, f"dashboard {board['id']} query")
                for flt in search["filter"]:
                    mapping_for(view).check(flt["meta"]["key"], f"dashboard {board['id']}")
        assert max(cells.values()) == 1, f"{board['id']}: panels overlap"
        assert len(board["references"]) == len(panels)
    for wanted in (
        "over time",
        "Top items",
        "Downloads by format",
        "referrers",
        "Status codes",
        "Browsers",
        "Countries",
        "Active instances",
        "Version spread",
        "latest per instance",
    ):
        assert any(wanted.lower() in t.lower() for t in titles), wanted


def test_ids_are_unique_and_every_reference_resolves() -> None:
    keys = [(o["type"], o["id"]) for o in OBJECTS]
    assert len(keys) == len(set(keys))
    for obj in OBJECTS:
        assert obj["coreMigrationVersion"] and obj["typeMigrationVersion"], obj["id"]
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in BY_KEY, (obj["id"], ref)


def test_the_field_checker_catches_what_kibana_would_not_draw() -> None:
    ticks = next(m for m in MAPPINGS if m.name == "metronome-ticks")
    with pytest.raises(AssertionError, match="not mapped"):
        ticks.check("http.response.status_code", "x")  # a logs field
    with pytest.raises(AssertionError, match="cannot aggregate"):
        ticks.check("params", "x")  # the object itself
    assert ticks.check("params.plan", "x") == "string"  # free parameters: keywords
    metrics = next(m for m in MAPPINGS if m.name == "metronome-metrics")
    assert metrics.check("metrics.spool.bytes", "x") == "number"
    assert kql_fields('not bot : true and (event.action : "a:b" or url.path:/x)') == [
        "bot",
        "event.action",
        "url.path",
    ]


# --- metronome kibana import, against the test double ----------------------------------


def _kibana(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METRONOME_KIBANA")}
    return subprocess.run(
        [sys.executable, "-m", "metronome", "kibana", "import", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_posts_the_objects_and_prints_what_kibana_did() -> None:
    with KibanaDouble() as kibana:
        first = _kibana("--url", kibana.url + "/")
        assert first.returncode == 0, first.stderr
        counts = Counter(o["type"] for o in OBJECTS)
        assert first.stdout.strip() == (
            f"imported {len(OBJECTS)} saved objects into the default space"
            f" ({counts['dashboard']} dashboards, {counts['index-pattern']} data views,"
            f" {counts['lens']} visualizations)"
        )
        assert first.stdout in GUIDE  # the Kibana guide shows this very line
        (seen,) = kibana.requests
        assert (seen.method, seen.path, seen.query) == ("POST", "/api/saved_objects/_import", {})
        assert seen.headers["kbn-xsrf"] == "true"
        assert seen.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert seen.file_name == "metronome.ndjson"
        assert seen.objects == OBJECTS

        again = _kibana("--url", kibana.url)
        assert again.returncode == 1
        assert f"{len(OBJECTS)} saved objects were not imported" in again.stderr
        assert (
            "error: dashboard metronome-ticks-overview (Metronome: ticks): already"
            " exists in Kibana; run again with --overwrite" in again.stderr
        )

        replaced = _kibana("--url", kibana.url, "--overwrite")
        assert replaced.returncode == 0, replaced.stderr
        assert kibana.requests[-1].query == {"overwrite": ["true"]}
        assert f"{len(OBJECTS)} of them replaced existing ones" in replaced.stdout


def test_import_into_a_space_with_credentials_and_the_index_prefix() -> None:
    with KibanaDouble(
        username="elastic",
        password="s3cret",
        api_key="a2V5OnNlY3JldA==",
        spaces=("default", "analytics"),
    ) as kibana:
        refused = _kibana("--url", kibana.url, "--space", "analytics")
        assert refused.returncode == 1
        assert "Kibana refused the import (401 Unauthorized)" in refused.stderr
        assert "METRONOME_KIBANA_API_KEY" in refused.stderr

        basic = _kibana(
            "--url",
            kibana.url,
            "--space",
            "analytics",
            METRONOME_KIBANA_USERNAME="elastic",
            METRONOME_KIBANA_PASSWORD="s3cret",
            METRONOME_INDEX_PREFIX="acme",
        )
        assert basic.returncode == 0, basic.stderr
        assert "into space 'analytics'" in basic.stdout
        seen = kibana.requests[-1]
        assert seen.path == "/s/analytics/api/saved_objects/_import"
        assert seen.headers["authorization"].startswith("Basic ")
        views = {o["attributes"]["title"] for o in seen.objects if o["type"] == "index-pattern"}
        assert views == {"acme-ticks-*", "acme-logs-*", "acme-metrics-*"}

        keyed = _kibana(
            "--overwrite",
            METRONOME_KIBANA_URL=kibana.url,
            METRONOME_KIBANA_API_KEY="a2V5OnNlY3JldA==",
        )
        assert keyed.returncode == 0, keyed.stderr
        assert kibana.requests[-1].headers["authorization"] == "ApiKey a2V5OnNlY3JldA=="

        nowhere = _kibana(
            "--url", kibana.url, "--space", "sales", METRONOME_KIBANA_API_KEY="a2V5OnNlY3JldA=="
        )
        assert nowhere.returncode == 1
        assert "404 Not Found" in nowhere.stderr and "space 'sales' exist?" in nowhere.stderr
        shown = subprocess.run(
            [sys.executable, "-m", "metronome", "settings"],
            env={**os.environ, "METRONOME_KIBANA_PASSWORD": "s3cret"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "kibana_password = '(set, not shown)'" in shown.stdout
        assert "s3cret" not in shown.stdout


def test_import_reports_objects_kibana_rejected_and_waits_for_a_starting_kibana() -> None:
    with KibanaDouble() as kibana:
        kibana.not_ready = 2  # 503 "Kibana server is not ready yet" twice, then the import
        # someone imported the ticks dashboard before: without --overwrite only it fails
        board = BY_KEY[("dashboard", "metronome-ticks-overview")]
        kibana.spaces["default"][("dashboard", board["id"])] = board
        partial = _kibana("--url", kibana.url, "--wait", "30")
        assert len(kibana.requests) == 3
    assert partial.returncode == 1
    assert partial.stdout.startswith(f"imported {len(OBJECTS) - 1} saved objects")
    assert partial.stderr.splitlines() == [
        "error: dashboard metronome-ticks-overview (Metronome: ticks): already exists in"
        " Kibana; run again with --overwrite to replace it",
        "error: 1 saved objects were not imported",
    ]


def test_kibana_errors_become_sentences() -> None:
    from metronome.kibana import _summarise

    # the shape Kibana documents for an import with a missing reference
    summary = _summarise(
        {
            "success": False,
            "successCount": 1,
            "successResults": [
                {"type": "index-pattern", "id": "metronome-ticks", "meta": {"title": "t"}}
            ],
            "errors": [
                {
                    "id": "d",
                    "type": "dashboard",
                    "title": "Board",
                    "meta": {},
                    "error": {
                        "type": "missing_references",
                        "references": [{"type": "lens", "id": "gone"}],
                    },
                },
                {
                    "id": "x",
                    "type": "tag",
                    "meta": {"title": "X"},
                    "error": {"type": "unknown", "message": "boom", "statusCode": 500},
                },
            ],
        }
    )
    assert summary.imported == Counter({"data views": 1}) and not summary.ok
    assert summary.errors == [
        "dashboard d (Board): refers to objects Kibana does not have: lens gone",
        "tag x (X): boom",
    ]


def test_import_fails_clearly_when_kibana_is_unreachable_or_not_kibana() -> None:
    closed = _kibana("--url", f"http://127.0.0.1:{free_port()}")
    assert closed.returncode == 1
    assert "error: Kibana at http://127.0.0.1:" in closed.stderr
    assert "is unreachable" in closed.stderr and "Traceback" not in closed.stderr
    missing = _kibana()
    assert missing.returncode == 2 and "--url or METRONOME_KIBANA_URL" in missing.stderr
    bad_space = _kibana("--url", "http://127.0.0.1:9", "--space", "Not A Space")
    assert bad_space.returncode == 1 and "is not a Kibana space id" in bad_space.stderr
    with KibanaDouble() as kibana:  # Elasticsearch's URL by mistake answers 404 here too
        wrong = _kibana("--url", kibana.url + "/elasticsearch")
    assert wrong.returncode == 1
    assert "is this the URL of Kibana (not of Elasticsearch)?" in wrong.stderr


def test_the_telemetry_fleet_total_sums_the_last_value_of_each_instance() -> None:
    lens = BY_KEY[("lens", "metronome-telemetry-fleet-gauge")]
    layer = lens["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]["main"]
    columns = layer["columns"]
    assert columns["instance"]["operationType"] == "terms"
    assert columns["instance"]["sourceField"] == "tags.instance_uuid"
    assert columns["value"]["operationType"] == "last_value"
    assert columns["value"]["params"]["sortField"] == "@timestamp"
    (summed,) = [
        c for c in lens["attributes"]["state"]["visualization"]["columns"] if "summaryRow" in c
    ]
    assert summed == {"columnId": "value", "summaryRow": "sum", "summaryLabel": "Fleet total"}
