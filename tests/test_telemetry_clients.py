"""Telemetry clients against a running Metronome, on each store: the Go agent in
``clients/go`` (its own ``go test -race``), the Python agent in ``metronome.client``, and
upgrade-responder's real client, unmodified, built into a small program.

Each server runs with the telemetry rate limits off (these tests send many reports from
one address and instance on purpose; the limits have their own tests) and a one-second
apps cache, so an app made with ``metronome apps create`` answers at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from metronome.client import TelemetryAgent, TelemetryAnswer, TelemetryError
from tests.support.backends import Backend, running_backend
from tests.support.es_server import cache_dir
from tests.support.golang import GoToolchain, go_toolchain
from tests.support.metronome_server import MetronomeServer

ROOT = Path(__file__).resolve().parent.parent
GO_MODULE = ROOT / "clients" / "go"
CONTRACT = ROOT / "tests" / "contract" / "upgrade_responder"
SERVER_ENV = {
    "METRONOME_TELEMETRY_RATE_PER_INSTANCE": "0",
    "METRONOME_TELEMETRY_RATE_PER_IP": "0",
    "METRONOME_SITES_CACHE_S": "1",
}
MINUTE_S = 0.25  # the server's minute, as the agents under test count it


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def telemetry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    with running_backend(request, tmp_path_factory, request.param, SERVER_ENV) as started:
        yield started


@pytest.fixture(scope="module")
def go() -> GoToolchain:
    return go_toolchain()


def create_app(server: MetronomeServer, *args: str) -> tuple[str, str | None]:
    """``metronome apps create`` a fresh app; (its id, its token if it got one), once the
    server answers for it."""
    name = "app-" + uuid.uuid4().hex[:10]
    made = server.run_cli("apps", "create", name, *args)
    assert made.returncode == 0, made.stderr
    token = re.search(r"^token: (\S+)$", made.stdout, re.M)
    deadline = time.monotonic() + 30
    answered = 0  # every worker (each caches the apps) answers: 20 times in a row
    while answered < 20:
        ok = httpx.get(f"{server.url}/apps/{name}/v1/healthcheck", timeout=10).status_code
        answered = answered + 1 if ok == 200 else 0
        assert time.monotonic() < deadline, f"the server never answered for app {name}"
        if not answered:
            time.sleep(0.1)
    return name, token.group(1) if token else None


def fleet(backend: Backend, app: str, **extra: Any) -> dict[tuple[str, ...], list[Any]]:
    """``POST /query`` on the app's points today: {dimensions: metrics}."""
    backend.settle()
    query = {
        "source": "metrics",
        "range": "1d",
        "metrics": ["events"],
        "dimensions": ["metric.name", "tags.app_version"],
        "filters": [["is", "app", [app]]],
        "limit": 1000,
        **extra,
    }
    resp = backend.client.post("/query", json=query)
    assert resp.status_code == 200, resp.text
    return {tuple(row["dimensions"]): row["metrics"] for row in resp.json()["results"]}


# --- the Go agent --------------------------------------------------------------------


def test_go_agent_passes_its_race_tests_against_metronome(
    telemetry: Backend, go: GoToolchain
) -> None:
    server = telemetry.server
    app, _ = create_app(server, "--interval", "2")
    token_app, token = create_app(server, "--new-token")
    assert token
    instance = "go-" + uuid.uuid4().hex
    vetted = go.run("vet", "./...", cwd=GO_MODULE)
    assert vetted.returncode == 0, vetted.stderr
    gofmt = Path(go.go).with_name("gofmt")
    unformatted = subprocess.run([gofmt, "-l", "."], cwd=GO_MODULE, capture_output=True, text=True)
    assert unformatted.stdout == "", f"gofmt -w these: {unformatted.stdout}"
    ran = go.run(
        "test",
        "-race",
        "-count=1",
        "./...",
        cwd=GO_MODULE,
        env={
            "METRONOME_URL": server.url,
            "METRONOME_TEST_APP": app,
            "METRONOME_TEST_TOKEN_APP": token_app,
            "METRONOME_TEST_TOKEN": token,
            "METRONOME_TEST_INSTANCE": instance,
        },
    )
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-3000:]
    assert "DATA RACE" not in ran.stdout + ran.stderr
    # what the agent sent is what the store holds, read back through /query
    rows = fleet(
        telemetry,
        app,
        metrics=[
            "instances",
            {"last_sum": "fields.value"},
            {"max": "fields.node_selector"},
            {"max": "fields.data_locality"},
        ],
        filters=[["is", "app", [app]], ["is", "tags.instance_uuid", [instance]]],
    )
    assert rows[("storage_capacity", "v1.4.0")][:2] == [1, 1e12]
    assert rows[("enabled_feature", "v1.4.0")][2:] == [1, 1]  # data_locality: true -> 1
    assert {key[1] for key in rows} == {"v1.4.0", "v1.5.0"}
    # the error helper (issue 25): the error tick SendError sent, as the store holds it
    (sent,) = telemetry.find("go-error-" + instance)
    error = sent["error"]
    assert (error["type"], error["message"]) == (
        "*fmt.wrapError",
        "saving the report: quota exceeded: 107 of 100 used",
    )
    assert error["source"].endswith("/client/errors_test.go") and error["line"] > 0
    # grouped by type, message without its numbers, and the frame that reported it
    assert error["group"].startswith(
        "*fmt.wrapError: saving the report: quota exceeded: <n> of <n> used at /"
    )
    assert error["group"].endswith(
        "/client/errors_test.go:github.com/metronome-analytics/metronome/clients/go/client"
        ".TestSendErrorReportsTheErrorAndWhereItWasHandled"
    )
    assert "TestSendErrorReportsTheErrorAndWhereItWasHandled" in error["stack_trace"]


# --- the Python agent ----------------------------------------------------------------


class Recorder:
    """gather() and on_response() of an agent, remembered with their times."""

    def __init__(self, metrics: list[dict[str, Any]]) -> None:
        self.metrics = metrics
        self.gathered: list[float] = []
        self.handled: list[float] = []
        self.answers: list[TelemetryAnswer | None] = []
        self.errors: list[TelemetryError | None] = []
        self.changed = threading.Condition()

    def gather(self) -> list[dict[str, Any]]:
        with self.changed:
            self.gathered.append(time.monotonic())
        return self.metrics

    def on_response(self, answer: TelemetryAnswer | None, error: TelemetryError | None) -> None:
        with self.changed:
            self.handled.append(time.monotonic())
            self.answers.append(answer)
            self.errors.append(error)
            self.changed.notify_all()

    def wait(self, answers: int, timeout_s: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.handled) >= answers, timeout_s), (
                f"{len(self.handled)} of {answers} answers in {timeout_s}s: {self.errors}"
            )


def metrics_of(instance: str, version: str) -> list[dict[str, Any]]:
    tags = {"instance_uuid": instance, "app_version": version}
    return [
        {"name": "storage_capacity", "tags": tags, "fields": {"value": 2_000_000}},
        {"name": "enabled_feature", "tags": tags, "fields": {"node_selector": True}},
    ]


@pytest.fixture
def short_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's minutes, as the Python agent counts them, last a quarter second."""
    monkeypatch.setattr(TelemetryAgent, "seconds_per_minute", MINUTE_S)


@pytest.mark.usefixtures("short_minutes")
def test_python_agent_reports_and_obeys_the_servers_interval(telemetry: Backend) -> None:
    app, _ = create_app(telemetry.server, "--interval", "2")
    instance = "py-" + uuid.uuid4().hex
    seen = Recorder(metrics_of(instance, "v2.0.0"))
    agent = TelemetryAgent(
        f"{telemetry.server.url}/apps/{app}/v1/metrics",
        seen.gather,
        seen.on_response,
        default_interval_s=20 * MINUTE_S,  # until the server says 2
    )
    with agent:
        agent.start()
        seen.wait(3)
    assert not agent.running
    assert seen.errors[:3] == [None] * 3
    assert [(a.request_interval_minutes, a.refused) for a in seen.answers[:3] if a] == [(2, [])] * 3
    for n in (1, 2):  # each report two server-minutes after the answer before it
        gap = seen.gathered[n] - seen.handled[n - 1]
        assert 2 * MINUTE_S - 0.01 <= gap <= 10 * MINUTE_S, (n, gap)
    rows = fleet(
        telemetry,
        app,
        metrics=["instances", {"max": "fields.value"}, {"max": "fields.node_selector"}],
    )
    assert set(rows) == {("enabled_feature", "v2.0.0"), ("storage_capacity", "v2.0.0")}
    assert rows[("storage_capacity", "v2.0.0")][:2] == [1, 2_000_000]
    assert rows[("enabled_feature", "v2.0.0")][2] == 1  # True arrived as 1


def test_python_agent_backs_off_with_jitter_and_reports_the_servers_error(
    telemetry: Backend,
) -> None:
    seen = Recorder(metrics_of("py-" + uuid.uuid4().hex, "v2.0.0"))
    agent = TelemetryAgent(
        f"{telemetry.server.url}/apps/no-such-app/v1/metrics",
        seen.gather,
        seen.on_response,
        initial_backoff_s=0.2,
        max_backoff_s=0.8,
    )
    with agent:
        agent.start()
        seen.wait(5)
    for error in seen.errors:
        assert isinstance(error, TelemetryError)
        assert (error.status, error.code) == (404, "unknown_app")
        assert "no-such-app" in str(error)
    assert seen.answers[:5] == [None] * 5
    for n in range(1, 5):  # the n-th error in a row: half to all of min(0.2 * 2^(n-1), 0.8)
        ceiling = min(0.2 * 2 ** (n - 1), 0.8)
        gap = seen.gathered[n] - seen.handled[n - 1]
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 0.5, (n, gap)
    draws = {agent.backoff_s(3) for _ in range(200)}
    assert len(draws) == 200 and all(0.4 <= d <= 0.8 for d in draws)  # jittered, bounded


def test_python_agent_times_out_a_hung_server() -> None:
    # a socket that accepts and never answers: a hung server (a local stand-in: the real
    # Metronome cannot be made to hang)
    with socket.create_server(("127.0.0.1", 0)) as hung:
        port = hung.getsockname()[1]
        agent = TelemetryAgent(f"http://127.0.0.1:{port}/v1/metrics", list, timeout_s=0.3)
        started = time.monotonic()
        with agent, pytest.raises(TelemetryError, match="Timeout") as failed:
            agent.send(metrics_of("x", "v1"))
        assert failed.value.status is None
        assert time.monotonic() - started < 5


def test_python_agent_sends_the_apps_token_and_hears_refusals(telemetry: Backend) -> None:
    app, token = create_app(telemetry.server, "--new-token")
    url = f"{telemetry.server.url}/apps/{app}/v1/metrics"
    with TelemetryAgent(url, list) as without, pytest.raises(TelemetryError) as refused:
        without.send(metrics_of("x", "v1"))
    assert (refused.value.status, refused.value.code) == (401, "invalid_app_token")
    bad = [
        {
            "name": "enabled_feature",
            "tags": {"instance_uuid": "x"},
            "fields": {"on": "yes", "ha": 1},
        }
    ]
    with TelemetryAgent(url + "?lang=en", list, token=token) as agent:
        answer = agent.send(metrics_of("x", "v1") + bad)
    assert answer.request_interval_minutes == 60
    # the text field is left out (with why), the metric's number kept
    assert [(r["index"], r.get("field")) for r in answer.refused] == [(2, "on")]
    assert "number" in answer.refused[0]["reason"]


def test_python_agent_start_and_stop_are_idempotent_from_many_threads(
    telemetry: Backend,
) -> None:
    app, _ = create_app(telemetry.server, "--interval", "2")
    seen = Recorder(metrics_of("py-" + uuid.uuid4().hex, "v2.1.0"))
    agent = TelemetryAgent(f"{telemetry.server.url}/apps/{app}/v1/metrics", seen.gather)

    def flip(n: int) -> None:
        for i in range(10):
            agent.stop(wait=False) if (n + i) % 3 == 0 else agent.start()
            _ = agent.running

    threads = [threading.Thread(target=flip, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    agent.stop()
    agent.stop()
    assert not agent.running
    before = len(seen.gathered)
    time.sleep(0.5)
    assert len(seen.gathered) == before, "the agent gathered after stop()"
    for _ in range(10):  # stopped, it starts again, once, however often it is asked
        agent.start()
    deadline = time.monotonic() + 10
    while len(seen.gathered) == before:
        assert time.monotonic() < deadline, "no report after start()"
        time.sleep(0.01)
    time.sleep(0.3)
    agent.close()
    assert len(seen.gathered) == before + 1


@pytest.mark.usefixtures("short_minutes")
def test_python_agent_stops_from_its_own_callback(telemetry: Backend) -> None:
    app, _ = create_app(telemetry.server, "--interval", "1")
    seen = Recorder(metrics_of("py-" + uuid.uuid4().hex, "v2.2.0"))
    agent: TelemetryAgent

    def heard(answer: TelemetryAnswer | None, error: TelemetryError | None) -> None:
        seen.on_response(answer, error)
        agent.stop()  # from the agent's own thread: must not wait for itself

    agent = TelemetryAgent(f"{telemetry.server.url}/apps/{app}/v1/metrics", seen.gather, heard)
    agent.start()
    seen.wait(1)
    time.sleep(3 * MINUTE_S)  # three of the server's minutes: no second report
    assert not agent.running
    started = time.monotonic()
    agent.close()  # joins the thread, which has ended
    assert time.monotonic() - started < 2
    assert len(seen.gathered) == 1 and seen.errors == [None]


# --- upgrade-responder's own client --------------------------------------------------


def upgrade_responder_source() -> Path:
    """``shared/clients/upgrade-responder`` beside the checkout (for a git worktree: beside
    its main checkout; for a clone of a local checkout: beside that checkout), or
    ``METRONOME_TEST_UPGRADE_RESPONDER``."""
    named = os.environ.get("METRONOME_TEST_UPGRADE_RESPONDER")
    candidates = [Path(named)] if named else []
    candidates.append(ROOT.parent / "shared" / "clients" / "upgrade-responder")
    common = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if common:
        candidates.append(Path(common).parent.parent / "shared" / "clients" / "upgrade-responder")
    origin = subprocess.run(
        ["git", "config", "--get", "remote.origin.url"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if origin and "://" not in origin and ":" not in origin.split("/")[0]:  # a local clone
        candidates.append(
            (ROOT / origin).resolve().parent / "shared" / "clients" / "upgrade-responder"
        )
    for candidate in candidates:
        if (candidate / "client" / "client.go").is_file():
            return candidate
    raise RuntimeError(
        "upgrade-responder's client package is not at ../shared/clients/upgrade-responder"
        " (tried: " + ", ".join(map(str, candidates)) + "); set METRONOME_TEST_UPGRADE_RESPONDER"
    )


def _sync(source: Path, target: Path) -> None:
    """Copy ``source``'s files to ``target`` byte for byte, writing only what changed (so
    the Go build cache, keyed on paths and contents, stays warm)."""
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        dest = target / path.relative_to(source)
        data = path.read_bytes()
        if not dest.is_file() or dest.read_bytes() != data:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)


@pytest.fixture(scope="module")
def upgrade_checker(go: GoToolchain) -> Path:
    """tests/contract/upgrade_responder built with upgrade-responder's client, unmodified,
    in a build directory of this checkout under the test cache (outside the repository)."""
    source = upgrade_responder_source()
    key = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    build = cache_dir() / f"upgrade-responder-contract-{key}"
    _sync(CONTRACT, build)
    _sync(source, build / "upgrade-responder")  # where go.mod's replace points
    for path in source.rglob("*.go"):  # unmodified: the very bytes of the shared package
        assert (build / "upgrade-responder" / path.relative_to(source)).read_bytes() == (
            path.read_bytes()
        )
    built = go.run("build", "-o", "upgraderesponder", ".", cwd=build)
    assert built.returncode == 0, built.stderr
    return build / "upgraderesponder"


def check_upgrade(program: Path, url: str, version: str, *extra: str) -> dict[str, Any]:
    args = [str(program), "-url", url, "-version", version]
    for pair in extra:
        args += ["-extra", pair]
    ran = subprocess.run(args, capture_output=True, text=True, timeout=90)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)  # type: ignore[no-any-return]


def test_upgrade_responders_own_client_checks_for_upgrades(
    telemetry: Backend, upgrade_checker: Path, tmp_path: Path
) -> None:
    versions = [
        {"name": "v1.6.0", "releaseDate": "2026-11-02T00:00:00Z", "tags": ["latest"]},
        {"name": "v1.5.3", "releaseDate": "2026-10-01T00:00:00Z", "tags": ["stable"]},
    ]
    (tmp_path / "versions.json").write_text(json.dumps({"versions": versions}))
    app, _ = create_app(
        telemetry.server, "--interval", "7", "--versions", str(tmp_path / "versions.json")
    )
    url = f"{telemetry.server.url}/apps/{app}/v1/checkupgrade"
    got = check_upgrade(upgrade_checker, url, "v1.5.2", "kubernetesVersion=v1.28.2", "platform=k3s")
    assert "error" not in got, got["error"]  # the client needs a 200
    assert got["response"]["requestIntervalInMinutes"] == 7
    assert [
        {k: v[k] for k in ("name", "releaseDate", "tags")} for v in got["response"]["versions"]
    ] == versions

    # one upgrade_request point: the version and the extra info as tags, no address
    rows = fleet(
        telemetry,
        app,
        dimensions=["metric.name", "tags.app_version", "tags.kubernetesVersion", "tags.platform"],
        metrics=["events", {"sum": "fields.value"}],
    )
    assert rows == {("upgrade_request", "v1.5.2", "v1.28.2", "k3s"): [1, 1]}

    # what the client reports when the server says no: an unknown app answers 404
    missing = check_upgrade(
        upgrade_checker, f"{telemetry.server.url}/apps/nobody/v1/checkupgrade", "v1"
    )
    assert missing["response"] is None
    assert missing["error"].startswith("query return status code 404")
    assert '"error":"unknown_app"' in missing["error"].replace(" ", "")
