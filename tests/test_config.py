"""Settings are declared once and read from the environment."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import metronome.config
from metronome.config import Settings, settings_reference
from metronome.errors import ConfigError

ROOT = Path(__file__).parent.parent


def _cli_env(**env: str) -> dict[str, str]:
    """The test run's environment without its own METRONOME_* settings, plus ``env``."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("METRONOME_")}
    return {**kept, **env}


def test_each_setting_is_declared_once_as_a_field_of_settings() -> None:
    module = ast.parse(Path(metronome.config.__file__).read_text())
    names = [f.name for f in fields(Settings)]
    (cls,) = [n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "Settings"]
    declared = [
        node.target.id
        for node in cls.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "setting"
    ]
    assert declared == names
    # no second list keyed by name: no setting's name is spelled as a string anywhere
    strings = {n.value for n in ast.walk(module) if isinstance(n, ast.Constant)}
    assert not strings & set(names)
    assert not hasattr(metronome.config, "SETTINGS")
    assert [s.name for s in settings_reference()] == names


def test_the_reference_derives_each_variable_from_the_name() -> None:
    by_name = {s.name: s for s in settings_reference()}
    port = by_name["port"]
    assert (port.env, port.default) == ("METRONOME_PORT", "8080") and port.help
    assert by_name["kibana_password"].secret and not by_name["kibana_url"].secret


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert (settings.port, settings.elasticsearch_url, settings.forward) == (8080, None, False)


def test_bad_environment_value_names_the_variable_and_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METRONOME_PORT": "eighty"})
    assert caught.value.message == "METRONOME_PORT: expected a whole number, got 'eighty'"
    assert caught.value.details == {"variable": "METRONOME_PORT"}
    with pytest.raises(ConfigError, match=r"^METRONOME_INDEX_PREFIX: .*'Acme'"):
        Settings.from_env({"METRONOME_INDEX_PREFIX": "Acme"})


def test_optimized_python_refuses_the_same_bad_values() -> None:
    script = (
        "from metronome.config import Settings, settings_table\n"
        "from metronome.errors import ConfigError\n"
        "print(settings_table())\n"
        "try:\n"
        "    Settings.from_env({'METRONOME_PORT': 'eighty'})\n"
        "except ConfigError as exc:\n"
        "    print(exc.message)\n"
    )
    plain, optimized = (
        subprocess.run(
            [sys.executable, *flags, "-c", script],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_cli_env(),
            timeout=60,
        )
        for flags in ((), ("-O",))
    )
    assert plain.returncode == 0, plain.stderr
    assert optimized.stdout == plain.stdout
    assert "METRONOME_PORT: expected a whole number, got 'eighty'" in plain.stdout
