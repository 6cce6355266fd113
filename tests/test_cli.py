"""The metronome command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from metronome import __version__


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_version_is_printed() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"metronome, version {__version__}"


def test_bad_setting_names_the_variable_and_refuses_to_start() -> None:
    result = _run("serve", METRONOME_PORT="eighty")
    assert result.returncode == 2
    assert "METRONOME_PORT" in result.stderr and "'eighty'" in result.stderr
    result = _run("settings", METRONOME_TRUSTED_PROXIES="10.0.0.0/8, not-a-net")
    assert result.returncode == 2 and "not-a-net" in result.stderr


def test_templates_install_without_a_store_reports_the_reason(tmp_path: object) -> None:
    result = _run(
        "templates",
        "install",
        METRONOME_ELASTICSEARCH_URL="http://127.0.0.1:9",
        METRONOME_ELASTICSEARCH_TIMEOUT_S="2",
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
