"""Elasticsearch behind TLS and authentication: what a user sees when it is right or wrong.

The secured cluster is the suite's Elasticsearch behind nginx (tests/support/secure_proxy.py:
a test double of a secured cluster's door, with certificates from a CA made for the run).
The contract modules (ticks, tock, query) run through it with each credential kind; this
module covers the settings, the errors a wrong setup gets, and that secrets stay secret.
Every server the module needs is started once, several at a time (``servers``), and tests
share them where the settings are the same: a wrong setup's start mostly waits on the
store's answers, not on the CPU. The fixture checks every server's whole log at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from metronome.config import Settings
from metronome.errors import ConfigError
from metronome.pipeline.spool import backlog, spool_dir
from tests.support.backends import delete_prefix, unique_prefix, wait_for_drain
from tests.support.metronome_server import MetronomeServer
from tests.support.secure_proxy import SecureProxy

ROOT = Path(__file__).parent.parent


def _clean_env(**env: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items() if not k.startswith("METRONOME_")}
    return {**kept, **env}


def _metronome(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        capture_output=True,
        text=True,
        env=_clean_env(**env),
        cwd=ROOT,
        timeout=120,
    )


# the wrong setups: what each one gets at start and in /readyz
WRONG_SETUPS = {
    "untrusted": "not signed by a CA Metronome trusts",
    "expired": "certificate has expired",
    "wrong_host": "not valid for this host name",
    "wrong_password": "refused the credentials (401)",
    "revoked_key": "api key [mtk0] has been invalidated",
    "no_client_cert": "client certificate",
    "missing_privilege": "lacks the index privilege 'index' on sites",
}


def _settings(proxy: SecureProxy, password_file: Path) -> dict[str, dict[str, str]]:
    """The settings of every server the module starts, by name."""
    ca = {"METRONOME_ELASTICSEARCH_CA_CERTS": str(proxy.ca_path)}
    basic = proxy.env("basic")
    reader = {
        **basic,
        "METRONOME_ELASTICSEARCH_USERNAME": proxy.reader,
        "METRONOME_ELASTICSEARCH_PASSWORD": proxy.reader_password,
    }
    # the password from a file, and the server's certificate pinned by its fingerprint (as
    # openssl and Elasticsearch print it) instead of the CA file
    fingerprint = ":".join(proxy.ca_fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    pinned = {
        "METRONOME_ELASTICSEARCH_URL": proxy.auth_url,
        "METRONOME_ELASTICSEARCH_USERNAME": proxy.user,
        "METRONOME_ELASTICSEARCH_PASSWORD_FILE": str(password_file),
        "METRONOME_ELASTICSEARCH_CA_FINGERPRINT": fingerprint,
    }
    wrong = {
        "untrusted": {"METRONOME_ELASTICSEARCH_URL": proxy.untrusted_url, **ca},
        "expired": {"METRONOME_ELASTICSEARCH_URL": proxy.expired_url, **ca},
        "wrong_host": {"METRONOME_ELASTICSEARCH_URL": proxy.wrong_host_url, **ca},
        "wrong_password": {**basic, "METRONOME_ELASTICSEARCH_PASSWORD": "not-it"},
        "revoked_key": {
            **ca,
            "METRONOME_ELASTICSEARCH_URL": proxy.auth_url,
            "METRONOME_ELASTICSEARCH_API_KEY": proxy.revoked_api_key,
        },
        "no_client_cert": {"METRONOME_ELASTICSEARCH_URL": proxy.mtls_url, **ca},
        "missing_privilege": reader,  # also the write-privilege test's
    }
    return {
        "pinned": pinned,
        "apikey": proxy.env("apikey"),
        "unchecked": {
            "METRONOME_ELASTICSEARCH_URL": proxy.untrusted_url,
            "METRONOME_ELASTICSEARCH_VERIFY_CERTS": "false",
        },
        **{f"wrong_{case}": env for case, env in wrong.items()},
    }


@pytest.fixture(scope="module")
def servers(
    secure_proxy: SecureProxy, es_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, MetronomeServer]]:
    """Every server the module's tests look at, by name (see :func:`_settings`), started
    four at a time. At the end each is stopped, its whole log must hold no traceback and
    no secret, and its indices are deleted."""
    password_file = tmp_path_factory.mktemp("secrets") / "password"
    password_file.write_text(secure_proxy.password + "\n")
    started: dict[str, MetronomeServer] = {}
    for name, env in _settings(secure_proxy, password_file).items():
        settings = {"METRONOME_INDEX_PREFIX": unique_prefix(), "METRONOME_LOG_LEVEL": "info", **env}
        started[name] = MetronomeServer(
            _clean_env(**settings), data_dir=tmp_path_factory.mktemp(name), workers=1
        )
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda server: server.start(), started.values()))
        yield started
    finally:
        with ThreadPoolExecutor(max_workers=len(started)) as pool:  # each waits for its exit
            list(pool.map(lambda server: server.stop(), started.values()))
        for server in started.values():
            delete_prefix(es_url, server.env["METRONOME_INDEX_PREFIX"])
    for name, server in started.items():
        log = server.log_path.read_text()
        assert "Traceback" not in log, f"{name}:\n{server.log_tail(80)}"
        for secret in secure_proxy.secrets:
            assert secret not in log, name


def test_a_run_with_credentials_never_shows_them(
    secure_proxy: SecureProxy, servers: dict[str, MetronomeServer], tmp_path: Path
) -> None:
    """Every output of runs that used a password (from a file) and an API key: the
    server's log, its answers, /metrics, `metronome settings` and `status`, and the
    errors of a wrong password and a revoked key (their servers' logs and /readyz:
    test_a_wrong_setup_is_named_at_start_and_in_readyz)."""
    outputs: list[str] = []
    used = [servers["pinned"], servers["apikey"]]
    for server in used:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            tick = client.post("/tick", json={"id": "secret-item", "url": "https://a.example/"})
            assert tick.status_code == 202, tick.text
            wait_for_drain(server)
            for path in ("/readyz", "/metrics", "/tock/secret-item", "/openapi.json"):
                resp = client.get(path)
                assert resp.status_code == 200, resp.text
                outputs.append(resp.text)
            assert client.get("/readyz").json()["status"] == "ready"
        for command in (("settings",), ("status",), ("templates", "install")):
            done = _metronome(*command, env=server.env)
            assert done.returncode == 0, done.stderr
            outputs += [done.stdout, done.stderr]
        shown = outputs[-6]  # what `metronome settings` printed
        if "METRONOME_ELASTICSEARCH_API_KEY" in server.env:
            assert "elasticsearch_api_key = '(set, not shown)'" in shown
        else:
            assert "elasticsearch_password = '(set, not shown)'" in shown
    wrong = {**secure_proxy.env("basic"), "METRONOME_ELASTICSEARCH_PASSWORD": "not-it"}
    revoked = {**secure_proxy.env("apikey"), "METRONOME_ELASTICSEARCH_API_KEY": ""}
    revoked["METRONOME_ELASTICSEARCH_API_KEY"] = secure_proxy.revoked_api_key
    for env in (wrong, revoked):
        here = {"METRONOME_INDEX_PREFIX": unique_prefix(), "METRONOME_DATA_DIR": str(tmp_path)}
        done = _metronome("status", env={**here, **env})
        assert done.returncode == 1 and "NOT READY" in done.stdout, done.stdout
        outputs += [done.stdout, done.stderr]
    for server in used:  # the logs so far (and the whole logs: ``servers``)
        outputs.append(server.log_path.read_text())
    everything = "\n".join(outputs)
    assert "Traceback" not in everything
    for secret in secure_proxy.secrets:
        assert secret not in everything


@pytest.mark.parametrize("case", list(WRONG_SETUPS))
def test_a_wrong_setup_is_named_at_start_and_in_readyz(
    secure_proxy: SecureProxy, servers: dict[str, MetronomeServer], case: str
) -> None:
    says = WRONG_SETUPS[case]
    server = servers[f"wrong_{case}"]
    ready = httpx.get(server.url + "/readyz", timeout=30)
    assert ready.status_code == 200  # ticks are still taken into the spool
    assert ready.json()["status"] == "degraded"
    assert says in ready.json()["reason"]
    start = server.log_path.read_text()
    assert f"error: the store is not ready: {ready.json()['reason'].split(';')[0]}" in start
    assert says in start
    assert "Traceback" not in start
    for secret in secure_proxy.secrets:
        assert secret not in start and secret not in ready.text
    if case != "missing_privilege":  # that role may install the templates, not write events
        # the worker cannot install the templates, so nothing ships: /metrics says so
        _wait_for_metric(server, "metronome_schema_install_retries_total")


def _wait_for_metric(server: MetronomeServer, name: str, timeout_s: float = 60) -> None:
    """Wait until the counter ``name`` in ``/metrics`` is at least 1."""
    deadline = time.monotonic() + timeout_s
    while (value := server.metric(name, missing=0)) < 1:  # not there until counted once
        assert time.monotonic() < deadline, f"{name} is {value}:\n{server.log_tail()}"
        time.sleep(0.1)


def _wait_for_log(server: MetronomeServer, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in server.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged in {timeout_s:.0f}s:\n{server.log_tail()}")
        time.sleep(0.05)


def test_a_role_without_a_write_privilege_keeps_ticks_in_the_spool(
    servers: dict[str, MetronomeServer],
) -> None:
    """A bulk write refused for a missing privilege is not a bad document: nothing is
    dead-lettered, the tick stays in the spool, and the shipper's log names the privilege."""
    server = servers["wrong_missing_privilege"]  # the role that may read but not write
    resp = httpx.post(server.url + "/tick", json={"id": "kept", "url": "https://a.example/"})
    assert resp.status_code == 202, resp.text
    _wait_for_log(server, "lacks the index privilege 'create_doc' for indices:data/write/bulk")
    assert backlog(spool_dir(server.data_dir), with_age=False).bytes_unshipped > 0  # kept
    assert not (server.data_dir / "dead-letters.ndjson").exists()


def test_unchecked_certificates_work_and_warn_at_every_start(
    servers: dict[str, MetronomeServer],
) -> None:
    server = servers["unchecked"]
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    server.stop()
    log = server.log_path.read_text()
    assert "METRONOME_ELASTICSEARCH_VERIFY_CERTS is off" in log
    server.start()
    server.stop()
    assert server.log_path.read_text().count("warning: METRONOME_ELASTICSEARCH_VERIFY_CERTS") == 2


def test_a_certificate_fingerprint_replaces_the_ca_file(
    secure_proxy: SecureProxy, servers: dict[str, MetronomeServer], tmp_path: Path
) -> None:
    server = servers["pinned"]
    assert "METRONOME_ELASTICSEARCH_CA_CERTS" not in server.env
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    wrong = _metronome(
        "status",
        env={
            "METRONOME_ELASTICSEARCH_URL": secure_proxy.untrusted_url,
            "METRONOME_ELASTICSEARCH_CA_FINGERPRINT": server.env[
                "METRONOME_ELASTICSEARCH_CA_FINGERPRINT"
            ],
            "METRONOME_DATA_DIR": str(tmp_path),
        },
    )
    assert wrong.returncode == 1
    assert "does not match METRONOME_ELASTICSEARCH_CA_FINGERPRINT" in wrong.stdout, wrong.stdout


def test_elasticsearch_role_prints_least_privilege_roles_for_the_prefix() -> None:
    done = _metronome("elasticsearch", "role", env={"METRONOME_INDEX_PREFIX": "web"})
    assert done.returncode == 0, done.stderr
    roles = json.loads(done.stdout)
    assert sorted(roles) == ["web-read", "web-serve", "web-setup", "web-ship"]
    for name, role in roles.items():
        privileges = {p for entry in role["indices"] for p in entry["privileges"]}
        assert not privileges & {"all", "write"} or name == "web-setup", name
        assert "all" not in privileges and "manage" not in role["cluster"]
        assert all(n.startswith("web-") for entry in role["indices"] for n in entry["names"])
    ship = roles["web-ship"]["indices"][0]
    assert "create_doc" in ship["privileges"] and "index" not in ship["privileges"]
    assert roles["web-read"]["cluster"] == ["monitor"]


def test_settings_that_cannot_work_together_are_refused_at_start(tmp_path: Path) -> None:
    pem = tmp_path / "client.pem"
    pem.write_text("")
    cases = [
        ({"METRONOME_ELASTICSEARCH_USERNAME": "u"}, "_USERNAME is set without"),
        ({"METRONOME_ELASTICSEARCH_URL": "https://u:p@es:9200"}, "not in the URL"),
        ({"METRONOME_ELASTICSEARCH_CA_CERTS": str(tmp_path / "nope.pem")}, "no file at"),
        ({"METRONOME_ELASTICSEARCH_CA_FINGERPRINT": "ab:cd"}, "64 hex digits"),
        (
            {
                "METRONOME_ELASTICSEARCH_CA_FINGERPRINT": "ab" * 32,
                "METRONOME_ELASTICSEARCH_CLIENT_CERT": str(pem),
            },
            "_CA_FINGERPRINT cannot be used with a client certificate",
        ),
        ({"METRONOME_ELASTICSEARCH_PASSWORD_FILE": str(tmp_path / "gone")}, "cannot read"),
    ]
    for env, says in cases:  # each named (in process: a start per case costs seconds)
        with pytest.raises(ConfigError, match=re.escape(says)):
            Settings.from_env({"METRONOME_ELASTICSEARCH_URL": "https://es:9200", **env})
    # and at start: exit status 2, the sentence, no traceback
    done = _metronome("settings", env={"METRONOME_ELASTICSEARCH_URL": "https://u:p@es:9200"})
    assert done.returncode == 2, done.stdout
    assert "not in the URL" in done.stderr and "Traceback" not in done.stderr, done.stderr
