"""Every ``metronome`` command ends a mistake a user can make (a missing or unreadable
file, a bad flag or setting, an unknown site, a store that cannot be reached) with one
line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

UNREACHABLE = {"METRONOME_ELASTICSEARCH_URL": "http://127.0.0.1:1"}
WHERE = '[["is", "item", ["x"]]]'

# (command line, extra settings, what the line says); {dir} is a directory, {gz} a
# damaged gzip file, {log} a good log
CASES: list[tuple[tuple[str, ...], dict[str, str], str]] = [
    (("nosuch",), {}, "No such command"),
    (("serve", "--port", "eighty"), {}, "'eighty'"),
    (("serve", "--workers", "0"), {}, "--workers"),
    (("serve",), {"METRONOME_PORT": "eighty"}, "METRONOME_PORT"),
    (("worker", "--bogus"), {}, "--bogus"),
    (("worker",), {"METRONOME_FORWARD": "on", "METRONOME_LOG_SITE": "nosuch"}, "'nosuch'"),
    (("import",), {}, "FILES"),
    (("import", "/nonexistent.log"), {}, "/nonexistent.log: No such file or directory"),
    (("import", "{log}", "/nonexistent.log"), {}, "/nonexistent.log"),
    (("import", "{dir}"), {}, "Is a directory"),
    (("import", "{gz}"), {}, "damaged.log.gz: damaged gzip file"),
    (("import", "{log}"), {"METRONOME_LOG_SITE": "nosuch"}, "METRONOME_LOG_SITE"),
    (("import", "--site", "nosuch", "{log}"), {}, "'nosuch'"),
    (("import", "{log}"), UNREACHABLE, "unreachable"),
    (("import", "{log}"), {"METRONOME_URL_RULES": "datasets/{id}"}, "URL rule 1"),
    (("worker",), {"METRONOME_FORWARD": "on", "METRONOME_URL_RULES": "/a/{x}"}, "URL rule 1"),
    (
        ("worker",),
        {"METRONOME_FORWARD": "on", "METRONOME_FORWARD_HOST": "0.0.0.0"},
        "is not a loopback address, and the forward input has no key: set"
        " METRONOME_FORWARD_SHARED_KEY",
    ),
    (
        ("worker",),
        {"METRONOME_FORWARD": "on", "METRONOME_FORWARD_SITE_KEYS": "shop"},
        "METRONOME_FORWARD_SITE_KEYS: give site=key pairs",
    ),
    (
        ("serve",),
        {"METRONOME_FORWARD": "on", "METRONOME_FORWARD_SITE_KEYS": "nosuch=k1"},
        "'nosuch'",
    ),
    (
        ("worker",),
        {"METRONOME_FORWARD": "on", "METRONOME_FORWARD_USERS": "ops:pw"},
        "METRONOME_FORWARD_USERS needs a shared key",
    ),
    (("ship",), {}, "PATHS"),
    (("ship", "{dir}"), {}, "is a directory"),
    (("ship", "--site", "nosuch", "{log}"), {}, "'nosuch'"),
    (("restore", "--from", "2026-11-01"), {}, "--to"),
    (("restore", "--from", "2026-11-01", "--to", "2026-11-02"), {}, "METRONOME_S3_BUCKET"),
    (
        ("restore", "--from", "first of May", "--to", "2026-11-02"),
        {"METRONOME_S3_BUCKET": "logs"},
        "not a date",
    ),
    (("sites", "bogus"), {}, "No such command"),
    (("sites", "create"), {}, "--name"),
    (("sites", "create", "--name", "x", "--id", "Bad Id"), {}, "site id"),
    (("sites", "create", "--name", "x", "--origin", "example.org"), {}, "not an origin"),
    (("sites", "update", "nosuch", "--name", "x"), {}, "'nosuch'"),
    (("sites", "list"), UNREACHABLE, "unreachable"),
    (("keys", "create", "--site", "nosuch", "--scope", "query"), {}, "'nosuch'"),
    (("keys", "create", "--all-sites", "--scope", "bogus"), {}, "bogus"),
    (("keys", "create", "--scope", "query"), {}, "--all-sites"),
    (("keys", "revoke", "nosuch"), {}, "nosuch"),
    (("keys", "list"), UNREACHABLE, "unreachable"),
    (("forget", "--where", "not json"), {}, "--where"),
    (("forget", "--where", "[]"), {}, "--where"),
    (("forget", "--where", WHERE, "--site", "nosuch", "--yes"), {}, "'nosuch'"),
    (("forget", "--where", WHERE, "--yes"), UNREACHABLE, "unreachable"),
    (("retention",), {}, "--keep"),
    (("retention", "--keep", "5y"), {}, "5y"),
    (("retention", "--keep", "30d"), UNREACHABLE, "unreachable"),
    (("retention", "--keep", "30d", "--site", "nosuch"), {}, "'nosuch'"),
    (("retention", "--keep", "30d", "--site", "default", "--dataset", "metrics"), {}, "no site"),
    (("templates", "install"), UNREACHABLE, "unreachable"),
    (("templates", "bogus"), {}, "No such command"),
    (("kibana", "import"), {}, "--url"),
    (("kibana", "import", "--url", "http://127.0.0.1:1"), {}, "127.0.0.1:1"),
    (("settings",), {"METRONOME_TRUSTED_PROXIES": "10.0.0.0/8, not-a-net"}, "not-a-net"),
    (("settings", "--bogus"), {}, "--bogus"),
    (("status",), UNREACHABLE, "unreachable"),
]


@pytest.mark.parametrize(
    ("args", "env", "says"), CASES, ids=[" ".join(c[0]) + (" +env" if c[1] else "") for c in CASES]
)
def test_a_mistake_ends_with_one_line_on_stderr_and_a_failure_status(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    log = tmp_path / "access.log"
    log.write_text('8.8.8.8 - - [02/Apr/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "x"\n')
    damaged = tmp_path / "damaged.log.gz"
    damaged.write_bytes(gzip.compress(log.read_bytes() * 100)[:60])
    (tmp_path / "a-directory").mkdir()
    shown = {"log": str(log), "gz": str(damaged), "dir": str(tmp_path / "a-directory")}
    result = subprocess.run(
        [sys.executable, "-m", "metronome", *(a.format(**shown) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={
            **os.environ,
            "METRONOME_DATA_DIR": str(tmp_path / "data"),
            "METRONOME_ELASTICSEARCH_TIMEOUT_S": "2",
            **env,
        },
    )
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert says in lines[0], lines[0]


def test_a_group_without_a_command_shows_its_help() -> None:
    for args in ((), ("sites",), ("keys",), ("templates",), ("kibana",)):
        result = subprocess.run(
            [sys.executable, "-m", "metronome", *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert "Usage:" in result.stdout + result.stderr, result
        assert "Commands:" in result.stdout + result.stderr, result
        assert "Traceback" not in result.stderr
