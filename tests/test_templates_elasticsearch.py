"""Elasticsearch-only: index templates install idempotently and keep the mapping closed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from metronome.config import Settings
from metronome.events import fields as F
from metronome.store.templates import load_templates, templates_dir
from tests.support.backends import Backend, unique_prefix
from tests.support.mappings import leaf_fields


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_templates_install_is_idempotent_and_follows_file_changes(
    es_url: str, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    env = {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    try:
        first = _cli("templates", "install", env=env)
        assert first.returncode == 0, first.stderr
        names = [
            f"{prefix}-{n}"
            for n in (
                "base-mappings",
                "insights-mappings",
                "logs-mappings",
                "metrics-mappings",
                "rollups-mappings",  # telemetry rollups (issue 19)
                "settings",
                "ticks-mappings",
                "visit-mappings",  # visits (issue 25): the visit fields of events
                "visits-mappings",  # and the visit summaries
                "insights",
                "logs",
                "metrics",
                "rollups",
                "ticks",
                "visits",
            )
        ]
        assert [line.split() for line in first.stdout.splitlines()] == [
            ["created", name] for name in names
        ]

        again = _cli("templates", "install", env=env)
        assert again.returncode == 0, again.stderr
        assert again.stdout.split()[::2] == ["unchanged"] * len(names)

        replicas = _cli("templates", "install", env={**env, "METRONOME_INDEX_REPLICAS": "1"})
        changed = [
            line.split()
            for line in replicas.stdout.splitlines()
            if not line.startswith("unchanged")
        ]
        assert changed == [["updated", f"{prefix}-settings"]]
        installed = httpx.get(f"{es_url}/_component_template/{prefix}-settings").json()
        settings = installed["component_templates"][0]["component_template"]["template"]
        assert settings["settings"]["index"]["number_of_replicas"] == "1"
    finally:
        httpx.delete(f"{es_url}/_index_template/{prefix}-*")
        httpx.delete(f"{es_url}/_component_template/{prefix}-*")


def test_changed_template_file_updates_the_installed_template(es_url: str, tmp_path: Path) -> None:
    prefix = unique_prefix()
    settings = Settings.from_env({"METRONOME_INDEX_PREFIX": prefix})
    copy = tmp_path / "index_templates"
    shutil.copytree(templates_dir(), copy)
    before = {t.name: t.digest for t in load_templates(settings, copy)}
    path = copy / "component" / "metronome-ticks-mappings.json"
    body = json.loads(path.read_text())
    body["template"]["mappings"]["properties"]["item"]["properties"]["format"]["ignore_above"] = 128
    path.write_text(json.dumps(body))
    after = {t.name: t.digest for t in load_templates(settings, copy)}
    assert [n for n in before if before[n] != after[n]] == [f"{prefix}-ticks-mappings"]


def _mapped_by(index_template: str) -> set[str]:
    templates = {t.name: t for t in load_templates(Settings.from_env({}))}
    mapped: set[str] = set()
    for name in templates[index_template].body["composed_of"]:
        mappings = templates[name].body["template"].get("mappings", {})
        mapped |= leaf_fields(mappings.get("properties", {}))
    return mapped


def test_index_templates_map_exactly_the_fields_events_names() -> None:
    assert _mapped_by("metronome-ticks") - {F.PARAMS, F.TYPED} == set(F.TICK_FIELDS)
    assert _mapped_by("metronome-logs") == set(F.LOG_FIELDS)
    # points (issue 19): tags.* and fields.* are objects of dynamic keywords and doubles
    assert _mapped_by("metronome-metrics") - {F.METRICS, F.TAGS, F.FIELDS} == set(F.METRIC_FIELDS)
    assert _mapped_by("metronome-insights") == set(F.INSIGHT_FIELDS)
    assert _mapped_by("metronome-visits") == set(F.VISIT_FIELDS)


def test_metrics_documents_index_into_daily_metrics_indices(es_url: str) -> None:
    """A metrics document lands in a daily index shaped by the metrics template: names are
    keywords, every value under ``metrics`` a double, nothing else is accepted."""
    prefix = unique_prefix()
    env = {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    index = f"{prefix}-metrics-2026.11.23"
    try:
        installed = _cli("templates", "install", env=env)
        assert installed.returncode == 0, installed.stderr
        doc = {
            "@timestamp": "2026-11-23T10:00:00Z",
            "@version": "1",
            "event": {"dataset": "metronome.metrics"},
            "metricset": {"name": "spool"},
            "host": {"name": "api-1"},
            "service": {"name": "metronome"},
            "metrics": {"spool.bytes": 1024, "lag_seconds": 0.25},
        }
        resp = httpx.post(f"{es_url}/{index}/_doc", params={"refresh": "true"}, json=doc)
        assert resp.status_code == 201, resp.text
        mapping = httpx.get(f"{es_url}/{index}/_mapping").json()[index]["mappings"]
        props = mapping["properties"]
        assert props["metrics"]["properties"]["spool.bytes"]["type"] == "double"
        assert props["metrics"]["properties"]["lag_seconds"]["type"] == "double"
        assert props["metricset"]["properties"]["name"]["type"] == "keyword"
        stray = httpx.post(f"{es_url}/{index}/_doc", json={**doc, "cpu": 1})
        assert stray.status_code == 400 and "strict" in stray.text
        total = httpx.post(
            f"{es_url}/{index}/_search",
            json={"size": 0, "aggs": {"bytes": {"sum": {"field": "metrics.spool.bytes"}}}},
        ).json()
        assert total["aggregations"]["bytes"]["value"] == 1024
    finally:
        httpx.delete(f"{es_url}/{index}")
        httpx.delete(f"{es_url}/_index_template/{prefix}-*")
        httpx.delete(f"{es_url}/_component_template/{prefix}-*")


@pytest.mark.parametrize("backend", ["elasticsearch"], indirect=True)
def test_odd_parameters_never_create_fields_outside_params_elasticsearch(
    backend: Backend, item: str
) -> None:
    odd: list[dict[str, object]] = [
        {
            "__proto__": "x",
            "constructor": 1,
            "@timestamp": "not a date",
            "$where": "1==1",
            "x-y": True,
            "Ünïcödé": "ß",
            "num": 12,
            "event_id": None,
            "_id": "forged",
            "_source": "s",
            "ts_ms": 1.5e300,
        },
        {"mixed": 5},
        {"mixed": "five"},  # a number first, then text: stored, num sub-field ignored
        {"bot": "yes", "item": "nested?", "URL": "ftp://odd", "params": "params"},
        {f"k{i}": i for i in range(100)},
    ]
    ids = [backend.tick(id=item, ts="2026-07-01T00:00:00Z", **fields) for fields in odd]
    backend.settle()
    mapping = httpx.get(f"{backend.es_url}/{backend.index_prefix}-ticks-2026.07.01/_mapping").json()
    (index_mapping,) = mapping.values()
    fields = leaf_fields(index_mapping["mappings"]["properties"])
    outside = {f for f in fields if not f.startswith("params.")}
    assert outside - {F.TYPED} == set(F.TICK_FIELDS)  # typed: the typed events' (empty) object
    assert {
        "params.__proto__",
        "params.@timestamp",
        "params.mixed",
        "params.mixed.num",
        "params.Ünïcödé",
        "params._id",
    } <= fields
    for event_id, sent in zip(ids, odd, strict=True):
        assert backend.fetch(event_id)["params"] == sent
    assert backend.tock(item, **{"from": "2026-07-01", "to": "2026-07-01"})["views"] == {
        "2026-07-01": len(odd)
    }


def test_an_upgrade_adds_new_fields_to_indices_that_exist_already(es_url: str) -> None:
    """Indices made before ``site.id`` existed take it once the templates are updated, so
    today's index does not refuse the new documents (the mapping is strict)."""
    prefix = unique_prefix()
    env = {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    try:
        for template in load_templates(Settings.from_env(env)):  # as an older release had
            body = json.loads(json.dumps(template.body))
            body["_meta"]["metronome_hash"] = "older"
            kind = "_component_template" if template.kind == "component" else "_index_template"
            if template.name.endswith("-base-mappings"):
                del body["template"]["mappings"]["properties"]["site"]
            httpx.put(f"{es_url}/{kind}/{template.name}", json=body).raise_for_status()
        index = f"{prefix}-ticks-2026.01.01"
        httpx.put(
            f"{es_url}/{index}/_doc/old",
            params={"refresh": "true"},
            json={"@timestamp": "2026-01-01T00:00:00Z", "item": {"id": "old"}},
        ).raise_for_status()
        refused = httpx.put(
            f"{es_url}/{index}/_doc/new",
            json={"@timestamp": "2026-01-01T00:00:00Z", "site": {"id": "s"}},
        )
        assert refused.status_code == 400, refused.text  # strict: site is unknown

        result = _cli("templates", "install", env=env)
        assert result.returncode == 0, result.stderr
        assert f"updated   {prefix}-base-mappings" in result.stdout

        mapping = httpx.get(f"{es_url}/{index}/_mapping").json()[index]["mappings"]
        assert mapping["properties"]["site"]["properties"]["id"]["type"] == "keyword"
        stored = httpx.put(
            f"{es_url}/{index}/_doc/new",
            params={"refresh": "true"},
            json={"@timestamp": "2026-01-01T00:00:00Z", "site": {"id": "s"}},
        )
        assert stored.status_code == 201, stored.text
    finally:
        httpx.delete(f"{es_url}/{prefix}-*")
        httpx.delete(f"{es_url}/_index_template/{prefix}-*")
        httpx.delete(f"{es_url}/_component_template/{prefix}-*")
