"""Settings are declared once and read from the environment and the configuration file."""

from __future__ import annotations

import ast
import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

import metronome.config
from metronome.config import Settings, settings_reference
from metronome.errors import ConfigError
from tests.support.metronome_server import MetronomeServer

ROOT = Path(__file__).parent.parent


def _load(tmp_path: Path, toml: str, **env: str) -> Settings:
    path = tmp_path / "metronome.toml"
    path.write_text(toml)
    return Settings.from_env({"METRONOME_CONFIG": str(path), **env})


def _refusal(tmp_path: Path, toml: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, toml, **env)
    return caught.value.message


def _cli_env(**env: str) -> dict[str, str]:
    """The test run's environment without its own METRONOME_* settings, plus ``env``."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("METRONOME_")}
    return {**kept, **env}


def _metronome(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        capture_output=True,
        text=True,
        env=_cli_env(**env),
        cwd=ROOT,
        timeout=60,
    )


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
        and node.value.func.id in ("setting", "section")
    ]
    assert declared == names
    # no second list keyed by name: no setting's name is spelled as a string anywhere
    strings = {n.value for n in ast.walk(module) if isinstance(n, ast.Constant)}
    assert not strings & set(names)
    assert not hasattr(metronome.config, "SETTINGS")
    assert [s.name for s in settings_reference()] == names


def test_the_reference_derives_each_variable_and_file_key_from_the_name() -> None:
    by_name = {s.name: s for s in settings_reference()}
    port = by_name["port"]
    assert (port.env, port.key, port.type, port.default) == (
        "METRONOME_PORT",
        "port",
        "integer",
        "8080",
    )
    assert port.help
    assert by_name["config"].env == "METRONOME_CONFIG" and by_name["config"].key is None
    assert by_name["forward"].type == "boolean"
    assert by_name["trusted_proxies"].type == "array of strings"
    assert by_name["elasticsearch_url"].type == "string"
    assert by_name["kibana_password"].secret and not by_name["kibana_url"].secret
    sections = {s.name: s.type for s in settings_reference() if s.env is None}
    assert sections == {
        "collectors": "array of tables",
        "monitors": "array of tables",
        "event_schemas": "table",
        "apps": "array of tables",
        "destinations": "array of tables",  # issue 23
        "queues": "array of tables",
    }


def test_defaults_need_no_environment_and_no_file() -> None:
    settings = Settings.from_env({})
    assert (settings.port, settings.config, settings.elasticsearch_url) == (8080, None, None)
    assert settings.collectors == () and dict(settings.event_schemas) == {}


def test_bad_environment_value_names_the_variable_and_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METRONOME_PORT": "eighty"})
    assert caught.value.message == "METRONOME_PORT: expected a whole number, got 'eighty'"
    assert caught.value.details == {"variable": "METRONOME_PORT"}
    with pytest.raises(ConfigError, match=r"^METRONOME_INDEX_PREFIX: .*'Acme'"):
        Settings.from_env({"METRONOME_INDEX_PREFIX": "Acme"})


def test_configuration_file_values_are_read_in_their_toml_types(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        """
        port = 9000
        workers = "4"
        forward = true
        trusted_proxies = ["10.0.0.0/8", "192.168.0.0/16"]
        referrer_blocklist = ["www.Spam.example", "junk.example"]
        elasticsearch_url = "http://localhost:9200"
        retention = "400D,shop=90d"
        """,
    )
    assert settings.port == 9000 and settings.workers == 4 and settings.forward is True
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.0.0/16"),
    )
    assert settings.referrer_blocklist == ("junk.example", "spam.example")
    assert settings.elasticsearch_url == "http://localhost:9200"
    assert settings.retention == "400d,shop=90d"
    assert settings.host == "127.0.0.1"  # not in the file: the default


def test_environment_wins_over_the_file_even_when_empty(tmp_path: Path) -> None:
    toml = 'port = 9000\nelasticsearch_url = "http://localhost:9200"\nforward = true\n'
    settings = _load(
        tmp_path,
        toml,
        METRONOME_PORT="9001",
        METRONOME_ELASTICSEARCH_URL="",
    )
    assert settings.port == 9001
    assert settings.elasticsearch_url is None
    assert settings.forward is True


def test_command_line_overrides_win_over_the_environment_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metronome.toml"
    path.write_text("port = 9000\n")
    env = {"METRONOME_CONFIG": str(path), "METRONOME_PORT": "9001"}
    assert Settings.from_env(env, port=9002).port == 9002


def test_unknown_key_is_refused_naming_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metronome.toml"
    message = _refusal(tmp_path, "prot = 9000\n")
    assert message == f"{path}: unknown key 'prot'; did you mean 'port'?"
    message = _refusal(tmp_path, "METRONOME_PORT = 9000\n")
    assert "unknown key 'METRONOME_PORT'; did you mean 'port'?" in message
    message = _refusal(tmp_path, '[elasticsearch]\nurl = "http://localhost:9200"\n')
    assert message.startswith(f"{path}: unknown key 'elasticsearch'")
    message = _refusal(tmp_path, 'config = "other.toml"\n')  # only METRONOME_CONFIG names it
    assert message.startswith(f"{path}: unknown key 'config'")


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ('port = "eighty"', "port: expected a whole number, got 'eighty'"),
        ("port = 70000", "port: expected a number from 0 to 65535, got 70000"),
        ("port = 80.5", "port: expected an integer (or a string), got a float"),
        ("port = true", "port: expected an integer (or a string), got a boolean"),
        ("forward = 1", "forward: expected a boolean (or a string), got an integer"),
        ("host = 5", "host: expected a string, got an integer"),
        ("trusted_proxies = [10]", "trusted_proxies: expected an array of strings, got an"),
        ('trusted_proxies = ["nowhere"]', "trusted_proxies: 'nowhere' is not an IP address"),
        ("log_level = 2026-01-01", "log_level: expected a string, got a date"),
        ('client_ip = "hide"', "client_ip: expected one of drop, truncate, keep, got 'hide'"),
    ],
)
def test_bad_file_value_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, toml: str, error: str
) -> None:
    message = _refusal(tmp_path, toml + "\n")
    assert message.startswith(f"{tmp_path / 'metronome.toml'}: {error}")


def test_missing_or_unreadable_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"METRONOME_CONFIG": str(missing)})
    assert caught.value.message == f"METRONOME_CONFIG: no configuration file at '{missing}'"
    with pytest.raises(ConfigError, match="METRONOME_CONFIG: cannot read"):
        Settings.from_env({"METRONOME_CONFIG": str(tmp_path)})
    message = _refusal(tmp_path, "port = \n")
    assert message.startswith(f"{tmp_path / 'metronome.toml'}: not valid TOML:")


def test_reserved_sections_are_kept_as_parsed_toml(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        """
        port = 9000

        [[collectors]]
        name = "signups"
        every = "1h"

        [[collectors]]
        name = "orders"

        [[monitors]]
        url = "https://example.org/healthz"

        [event_schemas.signup]
        plan = "string"

        [[apps]]
        id = "binoculars"
        """,
    )
    assert settings.collectors == ({"name": "signups", "every": "1h"}, {"name": "orders"})
    assert settings.monitors == ({"url": "https://example.org/healthz"},)
    assert dict(settings.event_schemas) == {"signup": {"plan": "string"}}
    assert settings.apps == ({"id": "binoculars"},)
    assert settings.port == 9000
    assert hash(settings) == hash(_load(tmp_path, "port = 9000\n"))  # still hashable


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ('collectors = "signups"', "collectors: expected an array of tables ([[collectors]])"),
        ("monitors = [1, 2]", "monitors: expected an array of tables ([[monitors]])"),
        ("[collectors]\nname = 1", "collectors: expected an array of tables ([[collectors]])"),
        ("event_schemas = [1]", "event_schemas: expected a table ([event_schemas]), got an"),
    ],
)
def test_reserved_section_of_the_wrong_shape_is_refused(
    tmp_path: Path, toml: str, error: str
) -> None:
    message = _refusal(tmp_path, toml + "\n")
    assert message.startswith(f"{tmp_path / 'metronome.toml'}: {error}")


def test_the_configuration_guide_example_file_loads(tmp_path: Path) -> None:
    configuration = (ROOT / "docs" / "guides" / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", configuration, re.S)
    assert example, "the configuration guide lost its example file"
    settings = _load(tmp_path, example.group(1))
    assert settings.port == 9000


def test_optimized_python_refuses_the_same_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "metronome.toml"
    path.write_text("prot = 1\n")
    script = (
        "import sys\n"
        "from metronome.config import Settings, settings_table\n"
        "from metronome.errors import ConfigError\n"
        "print(settings_table())\n"
        "for env in ({'METRONOME_PORT': 'eighty'}, {'METRONOME_CONFIG': sys.argv[1]}):\n"
        "    try:\n"
        "        Settings.from_env(env)\n"
        "    except ConfigError as exc:\n"
        "        print(exc.message)\n"
    )
    plain, optimized = (
        subprocess.run(
            [sys.executable, *flags, "-c", script, str(path)],
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
    assert "unknown key 'prot'" in plain.stdout


def test_metronome_settings_shows_the_values_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metronome.toml"
    path.write_text('port = 9123\nkibana_password = "s3cret"\n[[collectors]]\nname = "a"\n')
    shown = _metronome("settings", METRONOME_CONFIG=str(path), METRONOME_WORKERS="3")
    assert shown.returncode == 0, shown.stderr
    assert "port = 9123\n" in shown.stdout and "workers = 3\n" in shown.stdout
    assert "kibana_password = '(set, not shown)'" in shown.stdout and "s3cret" not in shown.stdout
    assert "collectors = ({'name': 'a'},)\n" in shown.stdout
    assert "event_schemas = {}\n" in shown.stdout
    by_option = _metronome("--config", str(path), "settings")
    assert by_option.returncode == 0, by_option.stderr
    assert "port = 9123\n" in by_option.stdout
    assert f"config = {str(path.resolve())!r}\n" in by_option.stdout


def test_metronome_refuses_to_start_with_a_bad_file_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "metronome.toml"
    path.write_text("port = 70000\n")
    refused = _metronome("settings", METRONOME_CONFIG=str(path))
    assert refused.returncode == 2
    assert f"{path}: port: expected a number from 0 to 65535, got 70000" in refused.stderr
    missing = _metronome("--config", str(tmp_path / "nowhere.toml"), "serve")
    assert missing.returncode == 2
    assert str(tmp_path / "nowhere.toml") in missing.stderr and "Traceback" not in missing.stderr


def test_serve_and_its_workers_use_the_configuration_file(tmp_path: Path) -> None:
    server = MetronomeServer({}, data_dir=tmp_path / "data")
    for name in ("METRONOME_PORT", "METRONOME_WORKERS"):
        del server.env[name]  # from the file instead
    config = tmp_path / "metronome.toml"
    config.write_text(f"port = {server.port}\nworkers = 1\nmax_body_bytes = 1024\n")
    server.env["METRONOME_CONFIG"] = str(config)
    server.start()
    try:
        too_big = httpx.post(
            server.url + "/tick",
            content=b'{"url": "/' + b"a" * 2000 + b'"}',
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert too_big.status_code == 413  # the workers read the file's limit
        assert "1024" in too_big.text
    finally:
        assert server.stop() == 0, server.log_tail()
