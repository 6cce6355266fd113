"""Collectors with real sources: a SQLite database, a real PostgreSQL server, a local HTTP
server and a Python entry point; run by hand (``metronome collect NAME --once``) and by
the worker's scheduler on both stores, once per period across two workers, with a hanging
source timed out and recorded while the next periods still run."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from metronome.config import Settings
from metronome.errors import ConfigError
from metronome.jobs.collectors import parse_collectors, run_period
from metronome.store import open_store
from metronome.store.leases import open_leases
from tests.support.backends import Backend, running_backend, unique_prefix
from tests.support.postgres import PostgresServer

SOURCE_MODULE = """
import os, time

def counts():
    with open(os.environ["COLLECTOR_CALLS"], "a") as calls:
        calls.write(f"{time.time()}\\n")
    return {"users": 5, "channels": 2}

def total():
    return 42
"""


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server, started once for this module (errors if it cannot)."""
    server = PostgresServer()
    server.start()
    try:
        server.sql("CREATE TABLE memberships (user_id int, channel text)")
        server.sql("INSERT INTO memberships VALUES (1, 'general'), (2, 'general'), (3, 'random')")
        yield server
    finally:
        server.stop()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/slow":
            time.sleep(5)  # longer than any collector's timeout here
        body = json.dumps({"stats": {"instances": 7, "locations": [{"n": 3}]}}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the collector gave up waiting: what a timeout is

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    """A local HTTP server answering JSON (``/slow``: after 5 s)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("collector-module")
    (directory / "platform_counts.py").write_text(SOURCE_MODULE)
    return directory


def _collect_once(config: str, tmp_path: Path, name: str, **env: str):
    path = tmp_path / "metronome.toml"
    path.write_text(config)
    return subprocess.run(
        [sys.executable, "-m", "metronome", "--config", str(path), "collect", name, "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("METRONOME_")},
            "METRONOME_DATA_DIR": str(tmp_path / "data"),
            **env,
        },
    )


def _printed(result: subprocess.CompletedProcess[str]) -> dict[str, float]:
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(d["metric"]["name"] == "collector" for d in docs)
    return {d["tags"]["type"]: d["fields"]["count"] for d in docs}


def test_collect_once_prints_what_a_sqlite_query_counts(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, active INTEGER)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", [(1, 1), (2, 1), (3, 0)])
    config = f"""
[[collectors]]
name = "active-users"
[collectors.sql]
url = "sqlite:///{db}"
query = "SELECT count(*) FROM users WHERE active = 1"
"""
    result = _collect_once(config, tmp_path, "active-users")
    assert _printed(result) == {"active-users": 2.0}
    assert "1 points from sql sqlite:///" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["app"] == "active-users" and doc["tags"]["collector"] == "active-users"


def test_collect_once_reads_rows_of_type_and_count_from_postgresql(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    config = f"""
[[collectors]]
name = "users-per-channel"
[collectors.sql]
url = "{postgres.url}"
query = "SELECT channel, count(*) FROM memberships GROUP BY channel"
"""
    assert _printed(_collect_once(config, tmp_path, "users-per-channel")) == {
        "general": 2.0,
        "random": 1.0,
    }


def test_collect_once_reads_json_paths_from_an_http_endpoint(tmp_path: Path, http_url: str) -> None:
    config = f"""
[[collectors]]
name = "api"
[collectors.http]
url = "{http_url}/stats"
points = {{ instances = "$.stats.instances", locations = "$.stats.locations[0].n" }}
"""
    assert _printed(_collect_once(config, tmp_path, "api")) == {"instances": 7.0, "locations": 3.0}


def test_collect_once_runs_a_python_entry_point(tmp_path: Path, module_dir: Path) -> None:
    config = """
[[collectors]]
name = "answer"
type = "everything"
python = "platform_counts:total"
"""
    result = _collect_once(config, tmp_path, "answer", PYTHONPATH=str(module_dir))
    assert _printed(result) == {"everything": 42.0}


def test_collect_once_says_what_failed(tmp_path: Path, http_url: str) -> None:
    config = f"""
[[collectors]]
name = "api"
[collectors.http]
url = "{http_url}/stats"
points = {{ missing = "$.nothing.here" }}
"""
    result = _collect_once(config, tmp_path, "api")
    assert result.returncode == 1
    assert "points.missing" in result.stderr and "matched 0 values" in result.stderr
    unknown = _collect_once(config, tmp_path, "nope")
    assert unknown.returncode == 1 and "no collector 'nope'; collectors: api" in unknown.stderr


def test_bad_collector_configuration_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"collectors.x: give exactly one source"):
        parse_collectors([{"name": "x"}])
    with pytest.raises(ConfigError, match=r"collectors.x.http.points.a: not a JSONPath"):
        parse_collectors([{"name": "x", "http": {"url": "http://h/", "points": {"a": "$[["}}}])
    with pytest.raises(ConfigError, match=r"collectors.x.every: expected a number"):
        parse_collectors([{"name": "x", "every": "often", "python": "m:f"}])


# --- leases: one run per period, missed periods recorded ------------------------------


@pytest.fixture(params=["sqlite", "elasticsearch"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    env = {"METRONOME_DATA_DIR": str(tmp_path / "data")}
    if request.param == "elasticsearch":
        es_url = request.getfixturevalue("es_url")
        prefix = unique_prefix()
        env |= {"METRONOME_ELASTICSEARCH_URL": es_url, "METRONOME_INDEX_PREFIX": prefix}
    yield Settings.from_env(env)
    if request.param == "elasticsearch":
        httpx.delete(f"{es_url}/{prefix}-*", params={"expand_wildcards": "all"}, timeout=30)
        httpx.delete(f"{es_url}/_index_template/{prefix}-*", timeout=30)
        httpx.delete(f"{es_url}/_component_template/{prefix}-*", timeout=30)


def test_each_period_runs_once_across_racing_workers_and_gaps_are_missed(
    store_settings: Settings, tmp_path: Path, module_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    monkeypatch.setenv("COLLECTOR_CALLS", str(calls))
    monkeypatch.syspath_prepend(str(module_dir))
    (spec,) = parse_collectors([{"name": "race", "every": 60, "python": "platform_counts:counts"}])

    async def scenario() -> tuple[list[object], list[object], dict[str, object]]:
        async with open_store(store_settings) as store:
            await store.ensure_schema()
            async with open_leases(store_settings) as one, open_leases(store_settings) as two:
                # four workers (two lease connections each) ask for the same period at once
                racing = await asyncio.gather(
                    *(
                        run_period(spec, store, lease, 1000, f"w{i}")
                        for i, lease in enumerate([one, two, one, two])
                    )
                )
                # the next run comes three periods later: two periods nobody ran
                later = [await run_period(spec, store, one, 1003, "w0")]
                (lease,) = await one.leases()
                return racing, later, lease.state

    racing, later, state = asyncio.run(scenario())
    assert sum(run is not None for run in racing) == 1
    assert later[0] is not None and later[0].outcome == "ok"  # type: ignore[attr-defined]
    assert len(calls.read_text().splitlines()) == 2  # the source ran once per period
    assert state["missed_total"] == 2 and state["runs_total"] == 2
    assert state["last_outcome"] == "ok" and state["last_points"] == 2


# --- the worker's scheduler, through real HTTP -----------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def scheduled(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresServer,
    http_url: str,
    module_dir: Path,
) -> Iterator[tuple[Backend, Path, subprocess.Popen[bytes]]]:
    """``metronome serve`` (with its worker) and a second ``metronome worker`` on one
    store, running three collectors every 2 s."""
    directory = tmp_path_factory.mktemp("scheduled")
    calls = directory / "calls"
    config = directory / "metronome.toml"
    config.write_text(
        f"""
[[collectors]]
name = "platform"
every = 2
python = "platform_counts:counts"

[[collectors]]
name = "channels"
every = 2
[collectors.sql]
url = "{postgres.url}"
query = "SELECT channel, count(*) FROM memberships GROUP BY channel"

[[collectors]]
name = "hanging"
every = 2
timeout = 0.5
retries = 0
[collectors.http]
url = "{http_url}/slow"
points = {{ instances = "$.stats.instances" }}
"""
    )
    env = {
        "METRONOME_CONFIG": str(config),
        "COLLECTOR_CALLS": str(calls),
        "PYTHONPATH": str(module_dir),
    }
    with running_backend(request, tmp_path_factory, request.param, env) as backend:
        metrics_dir = (backend.server.data_dir / "metrics").resolve()  # serve's, shared
        second = subprocess.Popen(
            [sys.executable, "-m", "metronome", "worker"],
            env={**backend.server.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 90  # four periods or more, however busy the machine
            while time.monotonic() < deadline:
                if calls.exists() and len(calls.read_text().split()) >= 4:
                    break
                time.sleep(0.5)
            time.sleep(2.5)  # one more period for the slower sources
            yield backend, calls, second
        finally:
            second.terminate()
            second.wait(timeout=60)


def _query(backend: Backend, body: dict[str, object]) -> list[dict]:
    backend.settle()
    resp = backend.client.post("/query", json={"source": "metrics", "range": "1d", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def _run_times(backend: Backend, collector: str) -> list[str]:
    """The period starts of a collector's successful runs, read from the store itself."""
    backend.settle()
    if backend.es_url:
        resp = httpx.post(
            f"{backend.es_url}/{backend.index_prefix}-metrics-*/_search",
            json={
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"metric.name": "collector_run"}},
                            {"term": {"app": collector}},
                            {"term": {"tags.outcome": "ok"}},
                        ]
                    }
                },
                "size": 1000,
            },
            timeout=30,
        )
        return [hit["_source"]["@timestamp"] for hit in resp.json()["hits"]["hits"]]
    with sqlite3.connect(backend.server.data_dir / "metronome.sqlite3") as conn:
        rows = conn.execute(
            "SELECT ts FROM events WHERE dataset = 'metrics'"
            " AND json_extract(doc, '$.metric.name') = 'collector_run'"
            " AND json_extract(doc, '$.app') = ?"
            " AND json_extract(doc, '$.tags.outcome') = 'ok'",
            (collector,),
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_two_workers_run_each_period_once(scheduled) -> None:
    backend, calls, second = scheduled
    assert second.poll() is None, "the second worker stopped"
    # the collectors keep running while this reads: a run whose source was called but
    # whose result is not stored yet is in flight, so the counts are compared at a moment
    # with none in flight; a period run twice would leave an extra call for good
    deadline = time.monotonic() + 30
    while True:
        runs = _run_times(backend, "platform")
        made = calls.read_text().split()
        if len(made) == len(runs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(runs) >= 3
    assert len(runs) == len(set(runs)), runs  # one run per period
    assert len(made) == len(runs), (made, runs)  # and the source ran once for each


def test_collector_points_are_a_time_series_per_type_with_a_latest_value(scheduled) -> None:
    backend, _, _ = scheduled
    rows = _query(
        backend,
        {
            "metrics": [{"sum": "fields.count"}, "events"],
            "dimensions": ["tags.type"],
            "filters": [
                ["is", "tags.collector", ["channels"]],
                ["is", "metric.name", ["collector"]],
            ],
        },
    )
    got = {r["dimensions"][0]: r["metrics"] for r in rows}
    assert set(got) == {"general", "random"}
    runs = got["general"][1]
    assert runs >= 2 and got["general"][0] == 2 * runs and got["random"] == [runs, runs]
    latest = _query(
        backend,
        {
            "metrics": [{"last_sum": "fields.count", "instance": "tags.type"}],
            "dimensions": ["tags.collector"],
            "filters": [["is", "metric.name", ["collector"]]],
        },
    )
    assert {r["dimensions"][0]: r["metrics"][0] for r in latest} == {
        "channels": 3.0,
        "platform": 7.0,
    }


def test_a_hanging_source_is_timed_out_recorded_and_the_next_periods_run(scheduled) -> None:
    backend, _, _ = scheduled
    rows = _query(
        backend,
        {
            "metrics": ["events"],
            "dimensions": ["tags.collector", "tags.outcome"],
            "filters": [["is", "metric.name", ["collector_run"]]],
        },
    )
    outcomes = {tuple(r["dimensions"]): r["metrics"][0] for r in rows}
    assert outcomes.get(("hanging", "timeout"), 0) >= 3  # every period tried, none blocked
    assert outcomes.get(("platform", "ok"), 0) >= 3
    assert ("platform", "timeout") not in outcomes
    scraped = backend.client.get("/metrics").text
    assert 'metronome_collector_runs_total{collector="hanging",outcome="timeout"}' in scraped
    status = backend.server.run_cli("status")
    assert "collector hanging: every 2s" in status.stdout
    assert "took longer than 0.5s" in status.stdout, status.stdout
    assert "collector platform: every 2s" in status.stdout


def test_readme_example_configuration_is_valid() -> None:
    """The configuration a new user copies from the README passes every check."""
    import re
    import tomllib

    from metronome.events.typed import EventSchemas
    from metronome.jobs.monitors import parse_monitors

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Watching the platform", 1)[1]
    (block,) = re.findall(r"```toml\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    config = tomllib.loads(block)
    assert set(EventSchemas.from_config(config["event_schemas"]).types) == {
        "file.uploaded",
        "file.deleted",
    }
    (collector,) = parse_collectors(config["collectors"])
    assert collector.every_s == 1800
    (monitor,) = parse_monitors(config["monitors"])
    assert monitor.retries == 2 and monitor.webhooks[0].secret == "change-me"


def test_serve_checks_the_sections_without_importing_prometheus_early(tmp_path: Path) -> None:
    """``metronome serve`` checks ``[[collectors]]`` and ``[[monitors]]`` before it names
    the Prometheus multiprocess directory: importing prometheus_client first would leave
    its forked workers counting in memory, and ``/metrics`` would miss their counts."""
    config = tmp_path / "metronome.toml"  # a RabbitMQ queue too (issue 23): its check as well
    config.write_text(
        '[[queues]]\nname = "q"\nqueue = "q"\nurl = "amqp://u:p@127.0.0.1:5672/%2F"\n'
        'kind = "ticks"\n'
    )
    for env in ({}, {"METRONOME_CONFIG": str(config)}):
        code = (
            "import sys; from metronome.config import Settings; import metronome.cli as cli;"
            f" cli._check_sections(Settings.from_env({env!r}));"
            " print('prometheus_client' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert result.stdout.strip() == "False", (env, result.stderr)
