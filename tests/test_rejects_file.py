"""The rejected access-log lines: kept as the address policy says, bounded, and expired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metronome.logs.rejects import redact_line

BAD = 'not a log line from 81.2.69.160 and 2001:db8:abcd:12::7 at 10:00:00 "GET /s?q=me&id=42"'


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        env={
            **os.environ,
            "METRONOME_DATA_DIR": str(tmp_path / "data"),
            # named: a file of lines no format reads is refused whole when recognised
            "METRONOME_LOG_FORMAT": "combined",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def _records(tmp_path: Path, name: str = "rejects.ndjson") -> list[dict]:
    path = tmp_path / "data" / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (None, 'not a log line from - and - at 10:00:00 "GET /s?"'),
        ("truncate", 'not a log line from 81.2.69.0 and 2001:db8:abcd:: at 10:00:00 "GET /s?"'),
        ("keep", BAD),
    ],
)
def test_rejected_lines_keep_what_the_address_policy_keeps(
    tmp_path: Path, policy: str | None, kept: str
) -> None:
    log = tmp_path / "access.log"
    log.write_text(BAD + "\n")
    _cli(
        tmp_path,
        "import",
        "--quiet",
        str(log),
        **({"METRONOME_CLIENT_IP": policy} if policy else {}),
    )
    (record,) = _records(tmp_path)
    assert record["line"] == kept
    assert record["reason"] == "no_match"
    if policy != "keep":
        assert "81.2.69.160" not in json.dumps(record) and "q=me" not in json.dumps(record)


def test_times_and_versions_are_not_taken_for_addresses() -> None:
    assert redact_line("at 10:00:00 HTTP/1.1 v1.2.3", "drop") == "at 10:00:00 HTTP/1.1 v1.2.3"


def test_the_rejects_file_is_rotated_at_its_size_and_a_rerun_adds_nothing(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    log.write_text("".join(f"bad line number {n}\n" for n in range(24)))
    env = {"METRONOME_REJECTS_MAX_BYTES": "4096"}
    _cli(tmp_path, "import", "--quiet", str(log), **env)
    current, rotated = _records(tmp_path), _records(tmp_path, "rejects.1.ndjson")
    assert rotated and current
    assert (tmp_path / "data" / "rejects.ndjson").stat().st_size <= 4096
    assert len(current) + len(rotated) == 24
    again = _cli(tmp_path, "import", str(log), **env)
    assert "rejected 24 (no_match 24)" in again.stderr
    assert _records(tmp_path) == current
    assert _records(tmp_path, "rejects.1.ndjson") == rotated


def test_retention_removes_rejected_lines_older_than_the_logs_and_forget_names_them(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    log.write_text(BAD + "\n")
    _cli(tmp_path, "import", "--quiet", str(log))
    rejects = tmp_path / "data" / "rejects.ndjson"
    forgot = _cli(tmp_path, "forget", "--where", '[["is", "item", ["x"]]]', "--yes")
    assert f"--where cannot match the rejected access-log lines in {rejects}" in forgot.stderr
    kept = _cli(tmp_path, "retention", "--keep", "30d", "--dataset", "logs")
    assert rejects.exists() and "rejected lines" not in kept.stdout
    old = time.time() - 40 * 86400
    os.utime(rejects, (old, old))
    removed = _cli(tmp_path, "retention", "--keep", "30d", "--dataset", "logs")
    assert f"deleted rejected lines file {rejects}" in removed.stdout
    assert not rejects.exists()
