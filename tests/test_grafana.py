"""Grafana provisioning (deploy/grafana/): the telemetry data sources and fleet dashboard.

Grafana cannot run on the test machines, so, as for Kibana (tests/test_kibana.py), the
files are checked against what they will meet: every data source's index pattern is one
that Metronome's index templates cover, every field a panel, a query or a variable uses is
mapped there with a type Elasticsearch can aggregate (numbers where a number is needed),
panels refer to provisioned data sources and to variables the dashboard declares, and
docker-compose.yml mounts the files where the provisioning says they are.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.compose import Compose
from tests.test_kibana import MAPPINGS, Mapping

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = yaml.safe_load((GRAFANA / "provisioning/datasources/metronome.yaml").read_text())
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning/dashboards/metronome.yaml").read_text())
DASHBOARDS = {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("dashboards/*.json"))}
BY_UID = {d["uid"]: d for d in DATASOURCES["datasources"]}
NUMERIC_METRICS = {"sum", "avg", "min", "max", "extended_stats", "percentiles", "top_metrics"}
ANY_FIELD_METRICS = {"cardinality", "value_count"}
EXPRESSION = "__expr__"


def mapping_of(datasource: dict[str, Any]) -> Mapping:
    """The index template that creates the indices a data source's pattern reads."""
    pattern = datasource["jsonData"]["index"]
    sample = pattern.replace("*", "longhorn-2026.11.23")  # what a daily index is named
    found = [m for m in MAPPINGS if any(fnmatch.fnmatchcase(sample, p) for p in m.patterns)]
    assert len(found) == 1, f"{datasource['uid']}: {pattern} is covered by {len(found)} templates"
    return found[0]


def variables(board: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["current"]["value"] for v in board["templating"]["list"]}


def expand(text: str, values: dict[str, str]) -> str:
    """Grafana's variable interpolation ($name, ${name}), with each variable's default."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values or name.startswith("__"), f"{text!r}: no variable {name!r}"
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def lucene_fields(query: str) -> list[str]:
    """Field names in a Lucene query string (``field:value``), quoted values removed."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    return re.findall(r"(?:^|[\s(])([A-Za-z_@][\w.@]*):", bare)


def fields_of(target: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, what it needs: "number", "date" or "any") for every field a target uses."""
    used: list[tuple[str, str]] = [(target["timeField"], "date")]
    for metric in target["metrics"]:
        kind = metric["type"]
        if kind == "top_metrics":
            used += [(f, "number") for f in metric["settings"]["metrics"]]
            used.append((metric["settings"]["orderBy"], "any"))
        elif kind in NUMERIC_METRICS:
            used.append((metric["field"], "number"))
        elif kind in ANY_FIELD_METRICS:
            used.append((metric["field"], "any"))
        else:
            assert kind == "count", f"metric type {kind!r} is not checked here"
    for agg in target["bucketAggs"]:
        needs = "date" if agg["type"] == "date_histogram" else "any"
        used.append((agg["field"], needs))
    used += [(f, "any") for f in lucene_fields(target["query"])]
    return used


def check(mapping: Mapping, field: str, needs: str, where: str) -> None:
    data_type = mapping.check(field, where)  # mapped, and aggregatable
    if needs != "any":
        assert data_type == needs, f"{where}: {field!r} is a {data_type}, not a {needs}"


# --- provisioning --------------------------------------------------------------------


def test_the_data_sources_read_indices_metronome_templates_create() -> None:
    assert DATASOURCES["apiVersion"] == 1
    sources = DATASOURCES["datasources"]
    assert len(BY_UID) == len(sources)
    assert [d["isDefault"] for d in sources].count(True) == 1
    for source in sources:
        assert source["type"] == "elasticsearch" and source["access"] == "proxy"
        assert source["url"] == "http://elasticsearch:9200"  # the compose service
        mapping = mapping_of(source)
        check(mapping, source["jsonData"]["timeField"], "date", source["uid"])
    (raw,) = [d for d in sources if d["uid"] == "metronome-telemetry"]
    assert raw["jsonData"]["index"] == "metronome-metrics-*"
    mapping = mapping_of(raw)
    for field, needs in (
        ("app", "string"),
        ("metric.name", "string"),
        ("tags.instance_uuid", "string"),
        ("tags.app_version", "string"),
        ("fields.value", "number"),
    ):
        check(mapping, field, needs, "telemetry points")


def test_the_dashboard_provider_loads_the_dashboards_directory() -> None:
    assert PROVIDERS["apiVersion"] == 1
    (provider,) = PROVIDERS["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["options"]["path"].startswith("/etc/grafana/dashboards/")
    assert DASHBOARDS, "no dashboard in deploy/grafana/dashboards/"


# --- the dashboards ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_field_is_mapped_aggregatable_with_the_type_it_needs(name: str) -> None:
    board = DASHBOARDS[name]
    values = variables(board)
    for panel in board["panels"]:
        refs = {t["refId"] for t in panel["targets"]}
        for target in panel["targets"]:
            where = f"{name} panel {panel['title']!r} query {target['refId']}"
            uid = target["datasource"]["uid"]
            if uid == EXPRESSION:  # server-side maths on the panel's other queries
                named = set(re.findall(r"\$(\w+)", target["expression"]))
                assert named and named <= refs - {target["refId"]}, where
                continue
            assert uid in BY_UID, f"{where}: data source {uid!r} is not provisioned"
            mapping = mapping_of(BY_UID[uid])
            expanded = json.loads(expand(json.dumps(target), values))
            for field, needs in fields_of(expanded):
                check(mapping, field, needs, where)
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        where = f"{name} variable {variable['name']}"
        mapping = mapping_of(BY_UID[variable["datasource"]["uid"]])
        query = json.loads(expand(variable["query"], values))
        if query["find"] == "terms":
            check(mapping, query["field"], "string", where)
            for field in lucene_fields(query.get("query", "")):
                check(mapping, field, "any", where)
        else:  # the names of the fields of a type, filtered by the variable's regex
            assert query["find"] == "fields" and query["type"] == "number", where
            pattern = variable["regex"].strip("/")
            assert re.fullmatch(pattern, "fields." + variable["current"]["value"]), where
            check(mapping, "fields." + variable["current"]["value"], "number", where)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    board = DASHBOARDS[name]
    assert board["uid"] and board["title"].startswith("Metronome")
    assert board["editable"] is False  # the file is the truth (see the provider)
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        if "repeat" in panel:
            repeated = next(v for v in board["templating"]["list"] if v["name"] == panel["repeat"])
            assert repeated["multi"], panel["title"]


def test_the_rollups_have_their_data_source_and_a_panel() -> None:
    (rollups,) = [d for d in DATASOURCES["datasources"] if d["uid"] == "metronome-rollups"]
    mapping = mapping_of(rollups)
    assert mapping.name == "metronome-rollups"
    for field, needs in (
        ("fields.value", "number"),  # sums
        ("fields_last.value", "number"),
        ("fields_max.value", "number"),
        ("rollup.count", "number"),
        ("rollup.interval", "string"),
        ("tags.instance_uuid", "string"),
    ):
        check(mapping, field, needs, "rollups")
    board = DASHBOARDS["telemetry.json"]
    assert any(
        t["datasource"]["uid"] == "metronome-rollups" for p in board["panels"] for t in p["targets"]
    )


def test_the_fleet_panels_are_there() -> None:
    board = DASHBOARDS["telemetry.json"]
    titles = [p["title"] for p in board["panels"]]
    for wanted in ("Active instances", "Fleet total", "Feature adoption", "Version spread"):
        assert any(t.startswith(wanted) for t in titles), wanted
    total = next(p for p in board["panels"] if p["title"].startswith("Fleet total"))
    (target,) = total["targets"]
    # the last value per instance, then summed over the instances: not a sum of reports
    (metric,) = target["metrics"]
    assert metric["type"] == "top_metrics" and metric["settings"]["order"] == "desc"
    assert metric["settings"]["orderBy"] == "@timestamp"
    assert [a["type"] for a in target["bucketAggs"]] == ["terms", "date_histogram"]
    assert [t["id"] for t in total["transformations"]] == ["joinByField", "calculateField"]
    assert total["transformations"][1]["options"]["reduce"]["reducer"] == "sum"


def test_the_field_checks_catch_what_grafana_could_not_draw() -> None:
    (raw,) = [d for d in DATASOURCES["datasources"] if d["uid"] == "metronome-telemetry"]
    mapping = mapping_of(raw)
    with pytest.raises(AssertionError, match="not mapped"):
        check(mapping, "http.response.status_code", "any", "x")  # an access-log field
    with pytest.raises(AssertionError, match="not a number"):
        check(mapping, "tags.instance_uuid", "number", "x")  # tags are keywords
    with pytest.raises(AssertionError, match="no variable"):
        expand("fields.$nope", {"app": "a"})
    assert lucene_fields('app:"a:b" AND metric.name:"x" AND fields.f:1') == [
        "app",
        "metric.name",
        "fields.f",
    ]


# --- docker compose ------------------------------------------------------------------


def test_compose_mounts_the_provisioning_where_grafana_reads_it(docker_compose: Compose) -> None:
    full = docker_compose.run("-f", "docker-compose.yml", "config", "--format", "json", cwd=ROOT)
    assert full.returncode == 0, full.stderr
    grafana = json.loads(full.stdout)["services"]["grafana"]
    mounts = {v["target"]: v for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert Path(provisioning["source"]) == GRAFANA / "provisioning"
    assert provisioning["read_only"] is True
    (provider,) = PROVIDERS["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert Path(dashboards["source"]) == GRAFANA / "dashboards"
    assert grafana["image"].startswith("grafana/grafana")
    assert "GF_SECURITY_ADMIN_PASSWORD" in grafana["environment"]
