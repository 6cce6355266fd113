"""Remote probes (issue 20): ``metronome probe`` checks a local web site, its server goes
away for a while and comes back, and every result is stored once; the ``probe`` key can
post probe results and nothing else; bad result bodies get 4xx JSON errors. Real HTTP to
a real ``metronome serve`` on both stores, and a real probe process."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import Backend, running_backend
from tests.support.es_server import free_port


class CountingSite:
    """A local web site that counts the checks it answers (the probe's measurements)."""

    def __init__(self) -> None:
        self.hits = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                site.hits += 1
                body = b"<h1>Welcome</h1>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class World:
    backend: Backend
    site: str
    probe_key: str
    query_key: str


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    env = {"METRONOME_SITES_CACHE_S": "1"}
    with running_backend(request, tmp_path_factory, request.param, env) as backend:

        def cli(*args: str) -> Any:
            result = backend.server.run_cli(*args, "--json", timeout_s=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        site = cli("sites", "create", "--name", "Platform")["id"]
        probe_key = cli("keys", "create", "--site", site, "--scope", "probe")["secret"]
        query_key = cli("keys", "create", "--site", site, "--scope", "query")["secret"]
        world = World(backend, site, probe_key, query_key)
        deadline = time.monotonic() + 10  # every worker's cache sees the keys
        while _post(world, {"probe": "p-1", "region": "x", "results": []}).status_code != 200:
            if time.monotonic() > deadline:
                raise AssertionError("the probe key is not taken")
            time.sleep(0.2)
        yield world


def _post(world: World, body: Any, key: str | None = None, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {key or world.probe_key}", **kwargs.pop("headers", {})}
    if "content" not in kwargs:
        kwargs["json"] = body
    return world.backend.client.post("/probe/results", headers=headers, **kwargs)


def _count(world: World, *filters: list[Any]) -> int:
    world.backend.settle()
    resp = world.backend.client.post(
        "/query",
        headers={"Authorization": f"Bearer {world.query_key}"},
        json={
            "source": "metrics",
            "range": "1d",
            "metrics": ["events"],
            "filters": [["is", "metric.name", ["monitor"]], *filters],
        },
    )
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    return int(results[0]["metrics"][0]) if results else 0


def _wait(condition: Any, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {timeout_s:.0f}s")
        time.sleep(0.3)


def _result(monitor: str, at_ms: int, **overrides: Any) -> dict[str, Any]:
    return {
        "monitor": monitor,
        "kind": "http",
        "at_ms": at_ms,
        "ok": True,
        "state": "up",
        "previous": "up",
        "measured": {"total_ms": 12.5, "status": 200},
        **overrides,
    }


def test_a_probe_cut_off_from_the_server_delivers_every_result_once(
    world: World, tmp_path: Path
) -> None:
    site = CountingSite()
    config = tmp_path / "probe.toml"
    config.write_text(
        f'[[monitors]]\nname = "website"\nhttp = "{site.url}/"\nkeyword = "Welcome"\n'
        "interval = 1\ntimeout = 2\n"
    )
    data_dir = tmp_path / "probe-data"
    region = "eu-west-" + world.backend.name[:2]
    server = world.backend.server
    env = {k: v for k, v in server.env.items() if k != "METRONOME_CONFIG"}
    log_path = tmp_path / "probe.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metronome",
                "probe",
                "--server",
                server.url,
                "--region",
                region,
                "--config",
                str(config),
                "--data-dir",
                str(data_dir),
                "--max-backoff",
                "1",
            ],
            env={**env, "METRONOME_PROBE_KEY": world.probe_key, "METRONOME_LOG_LEVEL": "info"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        in_region = ["is", "tags.region", [region]]
        _wait(lambda: _count(world, in_region) >= 2, "two delivered results")
        assert server.stop() == 0
        stopped_at = site.hits
        _wait(lambda: site.hits >= stopped_at + 4, "four checks while the server is down")
        server.start()  # the same port, data and store
        _wait(lambda: _count(world, in_region) >= stopped_at + 4, "the queued results")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        site.close()
    output = log_path.read_text()
    assert code == 0, output
    measured = site.hits  # every check the site answered (the probe finishes running ones)
    assert f"probe stopped: {measured} measured, {measured} delivered, 0 dropped" in output
    assert "probe_delivery_failed" in output  # it did try while the server was away
    assert _count(world, in_region) == measured  # each once, none missing, none twice
    assert _count(world, in_region, ["gt", "fields.ok", 0]) == measured
    # the queue is private
    assert stat.S_IMODE(os.stat(data_dir / "queue.sqlite3").st_mode) == 0o600
    # the uptime report shows the region
    world.backend.settle()
    resp = world.backend.client.get(
        "/reports/uptime",
        params={"range": "1d"},
        headers={"Authorization": f"Bearer {world.query_key}"},
    )
    assert resp.status_code == 200, resp.text
    rows = [r for r in resp.json()["results"] if r["region"] == region]
    assert [(r["monitor"], r["uptime_percent"]) for r in rows] == [("website", 100)]


def _start_probe(
    world: World, server_url: str, config: Path, data_dir: Path, region: str, log_path: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in world.backend.server.env.items() if k != "METRONOME_CONFIG"}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "metronome", "probe", "--server", server_url),
                *("--region", region, "--config", str(config), "--data-dir", str(data_dir)),
                *("--max-backoff", "1"),
            ],
            env={**env, "METRONOME_PROBE_KEY": world.probe_key, "METRONOME_LOG_LEVEL": "info"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_results_queued_by_a_stopped_probe_are_delivered_by_its_next_start(
    world: World, tmp_path: Path
) -> None:
    """The queue is on disk: a probe that never reached the server (a port that refuses)
    is stopped, started again with the server reachable, and delivers both runs'
    results, under the same probe id."""
    site = CountingSite()
    config = tmp_path / "probe.toml"
    config.write_text(f'[[monitors]]\nname = "restarted"\nhttp = "{site.url}/"\ninterval = 1\n')
    data_dir = tmp_path / "probe-data"
    region = "us-east-" + world.backend.name[:2]
    in_region = ["is", "tags.region", [region]]
    try:
        first = _start_probe(
            world, f"http://127.0.0.1:{free_port()}", config, data_dir, region, tmp_path / "1.log"
        )
        try:
            _wait(lambda: site.hits >= 3, "three checks")
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=30) == 0, (tmp_path / "1.log").read_text()
        offline = site.hits
        output = (tmp_path / "1.log").read_text()
        assert f"probe stopped: {offline} measured, 0 delivered, 0 dropped" in output
        second = _start_probe(
            world, world.backend.server.url, config, data_dir, region, tmp_path / "2.log"
        )
        try:
            _wait(lambda: _count(world, in_region) >= offline + 2, "the first run's results")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, (tmp_path / "2.log").read_text()
    finally:
        site.close()
    total = site.hits
    assert f"{total - offline} measured, {total} delivered" in (tmp_path / "2.log").read_text()
    assert _count(world, in_region) == total
    world.backend.settle()
    resp = world.backend.client.post(
        "/query",
        headers={"Authorization": f"Bearer {world.query_key}"},
        json={
            "source": "metrics",
            "range": "1d",
            "metrics": ["events"],
            "dimensions": ["tags.probe"],
            "filters": [["is", "metric.name", ["monitor"]], in_region],
        },
    )
    assert resp.status_code == 200, resp.text
    assert [r["metrics"][0] for r in resp.json()["results"]] == [total]  # one probe id


def test_a_result_sent_again_is_stored_once(world: World) -> None:
    at_ms = int(time.time() * 1000) - 5_000
    body = {
        "probe": "p-again",
        "region": "ap-south",
        "results": [_result("again", at_ms), _result("again", at_ms + 1000, ok=False)],
    }
    for _ in range(3):  # the probe did not hear the answer, twice
        resp = _post(world, body)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"stored": 2, "documents": 2}
    assert _count(world, ["is", "tags.monitor", ["again"]]) == 2
    # the same check from another probe is another result
    assert _post(world, {**body, "probe": "p-other"}).status_code == 200
    assert _count(world, ["is", "tags.monitor", ["again"]]) == 4


def test_the_probe_key_writes_probe_results_and_nothing_else(world: World) -> None:
    client = world.backend.client
    auth = {"Authorization": f"Bearer {world.probe_key}"}
    answers = [
        client.post("/tick", json={"id": "x"}, headers=auth),
        client.post("/ticks", json=[{"id": "x"}], headers=auth),
        client.get("/tick.gif", params={"id": "x"}, headers=auth),
        client.post("/query", json={"metrics": ["events"], "range": "1d"}, headers=auth),
        client.get("/reports/uptime", params={"range": "1d"}, headers=auth),
        client.get("/tock", params={"id": "x"}, headers=auth),
    ]
    for resp in answers:
        assert resp.status_code == 403, (resp.request.url, resp.text)
        assert resp.json()["error"] == "scope_forbidden"
    # and a key of another scope cannot post probe results
    refused = _post(world, {"probe": "p", "region": "r", "results": []}, key=world.query_key)
    assert refused.status_code == 403 and refused.json()["error"] == "scope_forbidden"
    anonymous = client.post("/probe/results", json={"probe": "p", "region": "r", "results": []})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "key_required"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"probe": "p", "region": "r"}, "results"),
        ({"probe": "P!", "region": "r", "results": []}, "probe"),
        ({"probe": "p", "region": "", "results": []}, "region"),
        ({"probe": "p", "region": "r", "results": [], "extra": 1}, "extra"),
        ({"probe": "p", "region": "r", "results": [_result("w", 5)]}, "results[0].at_ms"),
        ({"probe": "p", "region": "r", "results": [_result("w", 2e12)]}, "results[0].at_ms"),
        (
            {"probe": "p", "region": "r", "results": [_result("w", 1_764_000_000_000, kind="ftp")]},
            "results[0].kind",
        ),
        (
            {
                "probe": "p",
                "region": "r",
                "results": [_result("w", 1_764_000_000_000, state="sideways")],
            },
            "results[0].state",
        ),
        (
            {
                "probe": "p",
                "region": "r",
                "results": [_result("w", 1_764_000_000_000, measured={"total_ms": "fast"})],
            },
            "results[0].measured.total_ms",
        ),
        (
            {"probe": "p", "region": "r", "results": [_result("w", 1_764_000_000_000, ok="yes")]},
            "results[0].ok",
        ),
    ],
)
def test_bad_result_bodies_get_a_400_naming_the_field(world: World, body: Any, field: str) -> None:
    resp = _post(world, body)
    assert resp.status_code == 400, resp.text
    answer = resp.json()
    assert answer["error"] == "invalid_field"
    assert answer["details"]["field"] == field, answer


def test_malformed_requests_get_4xx_json_errors(world: World) -> None:
    not_json = _post(
        world, None, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_json"
    text = _post(world, None, content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and text.json()["error"]
    many = {
        "probe": "p",
        "region": "r",
        "results": [_result("w", 1_764_000_000_000)] * 501,
    }
    too_many = _post(world, many)
    assert too_many.status_code == 400 and too_many.json()["error"] == "limit_exceeded"
