"""``metronome apps``: creating, listing and updating apps, and the configuration file's
``[[apps]]`` tables (the commands run as a user runs them, on the embedded store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metronome.config import Settings
from metronome.errors import ConfigError
from metronome.telemetry.registry import apps_from_settings


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metronome", "apps", *args],
        env={"METRONOME_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_apps_are_created_listed_and_updated(tmp_path: Path) -> None:
    versions = tmp_path / "versions.json"
    versions.write_text(json.dumps([{"name": "v2", "releaseDate": "2024-01-01", "tags": []}]))
    made = _cli(tmp_path, "create", "longhorn", "--interval", "15", "--versions", str(versions))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "longhorn"
    rollups = tmp_path / "rollups.txt"
    rollups.write_text("# what InfluxDB's continuous queries did\nup every 1h max,last\n")
    again = _cli(tmp_path, "create", "longhorn")
    assert again.returncode == 2 and "exists" in again.stderr
    updated = _cli(
        tmp_path,
        "update",
        "longhorn",
        "--new-token",
        "--disable",
        "healthcheck",
        "--rollup",
        "enabled_feature every 1d sum,max by app_version",
        "--rollups-file",
        str(rollups),
        "--raw-days",
        "30",
        "--json",
    )
    assert updated.returncode == 0, updated.stderr
    shown = json.loads(updated.stdout)
    assert len(shown["token"]) >= 32  # the new token, shown once
    listed = _cli(tmp_path, "list", "--json")
    (app,) = json.loads(listed.stdout)
    assert app["token"] == "(set)"  # never shown again
    assert (app["interval_min"], app["versions"], app["disabled"]) == (15, 1, ["healthcheck"])
    assert app["rollups"] == [
        "enabled_feature every 1d sum,max by app_version",
        "up every 1h max,last",
    ]
    assert app["raw_days"] == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "Bad Name"), "an app id is"),
        (("create", "x", "--rollup", "enabled_feature hourly sum"), "write a rollup as"),
        (("create", "x", "--rollup", "m every 5m sum"), "rollups are every 1h or 1d"),
        (("create", "x", "--rollup", "m every 1h median"), "stats are"),
        (("create", "x", "--versions", "/nonexistent.json"), "--versions"),
        (("create", "x", "--site", "nosuch"), "there is no site"),
        (("update", "nosuch", "--interval", "5"), "there is no app"),
        (("create", "x", "--new-token", "--no-token"), "not both"),
    ],
)
def test_bad_app_options_are_refused_with_a_message(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    done = _cli(tmp_path, *args)
    assert done.returncode == 2, done.stdout
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_apps_of_the_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "metronome.toml"
    config.write_text(
        '[[apps]]\nid = "rancher"\ninterval_min = 1440\nrollups = ["up every 1h sum"]\n'
    )
    settings = Settings.from_env({"METRONOME_CONFIG": str(config)})
    (app,) = apps_from_settings(settings).values()
    assert (app.id, app.interval_min, app.rollups[0].text) == ("rancher", 1440, "up every 1h sum")
    config.write_text('[[apps]]\nid = "Bad!"\n')
    with pytest.raises(ConfigError, match=r"\[\[apps\]\] number 1"):
        apps_from_settings(Settings.from_env({"METRONOME_CONFIG": str(config)}))
    config.write_text('[[apps]]\nid = "ok"\nrollups = ["nonsense"]\n')
    with pytest.raises(ConfigError, match="write a rollup as"):
        apps_from_settings(Settings.from_env({"METRONOME_CONFIG": str(config)}))
