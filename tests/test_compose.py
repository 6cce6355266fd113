"""docker-compose.yml: valid for the real `docker compose`, started in a working order, and
consistent with fluentd/fluent.conf, the NGINX configuration and Metronome's settings.

Nothing is started (there is no Docker engine on the test machines): `docker compose
config` validates the file against the Compose specification and resolves it, and the
tests read its resolved JSON.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from metronome.config import Settings
from metronome.logs.parse import ParsedLine, compile_format
from metronome.logs.rules import UrlRules
from tests.support.compose import Compose
from tests.support.es_server import ES_VERSION
from tests.test_fluentd_conf import ACCESS_TAG, parse_conf, route

ROOT = Path(__file__).resolve().parent.parent
LONG_RUNNING = {"elasticsearch", "kibana", "api", "shipper", "minio", "fluentd", "nginx", "grafana"}
ONE_SHOT = {"setup", "minio-init"}


@pytest.fixture(scope="module")
def resolved(docker_compose: Compose) -> dict[str, Any]:
    quiet = docker_compose.run("-f", "docker-compose.yml", "config", "--quiet", cwd=ROOT)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""
    full = docker_compose.run("-f", "docker-compose.yml", "config", "--format", "json", cwd=ROOT)
    assert full.returncode == 0, full.stderr
    return json.loads(full.stdout)  # type: ignore[no-any-return]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in service.get("environment", {}).items() if v is not None}


def _waits_for(service: dict[str, Any]) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


def test_docker_compose_rejects_a_broken_file(docker_compose: Compose, tmp_path: Path) -> None:
    """The validator is real: a dependency cycle and an unknown key are refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  a:\n    image: x\n    depends_on: [b]\n"
        "  b:\n    image: x\n    depends_on: [a]\n"
    )
    cycle = docker_compose.run("-f", str(broken), "config", "--quiet")
    assert cycle.returncode != 0 and "cycle" in cycle.stderr.lower()
    broken.write_text("services:\n  a:\n    image: x\n    helthcheck: {}\n")
    typo = docker_compose.run("-f", str(broken), "config", "--quiet")
    assert typo.returncode != 0 and "helthcheck" in typo.stderr


def test_every_service_is_there_with_a_health_check(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), name
        assert services[name]["restart"] == "unless-stopped", name
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no", name


def test_services_start_in_order_once_what_they_need_is_healthy(resolved: dict[str, Any]) -> None:
    s = resolved["services"]
    healthy, done = "service_healthy", "service_completed_successfully"
    assert _waits_for(s["kibana"]) == {"elasticsearch": healthy}
    assert _waits_for(s["setup"]) == {"elasticsearch": healthy, "kibana": healthy}
    assert _waits_for(s["api"]) == {"elasticsearch": healthy}
    assert _waits_for(s["shipper"]) == {"elasticsearch": healthy}
    assert _waits_for(s["minio-init"]) == {"minio": healthy}
    assert _waits_for(s["fluentd"]) == {"shipper": healthy, "minio-init": done}
    assert _waits_for(s["nginx"]) == {"api": healthy, "fluentd": healthy}
    assert _waits_for(s["grafana"]) == {"elasticsearch": healthy}
    # every condition is on something that has a health check (or is a one-shot)
    for name, service in s.items():
        for dep, condition in _waits_for(service).items():
            if condition == healthy:
                assert "healthcheck" in s[dep], (name, dep)
            else:
                assert dep in ONE_SHOT, (name, dep)


def test_metronome_services_run_the_right_commands_with_valid_settings(
    resolved: dict[str, Any],
) -> None:
    s = resolved["services"]
    assert s["api"]["command"] == ["serve", "--no-shipper"]
    assert s["shipper"]["command"] == ["worker"]
    script = " ".join(s["setup"]["entrypoint"] + s["setup"]["command"])
    assert "metronome templates install" in script
    assert re.search(r"metronome kibana import --overwrite --wait \d+", script)
    for name in ("api", "shipper", "setup"):
        env = _env(s[name])
        settings = Settings.from_env(env)  # a bad METRONOME_* value would raise here
        assert settings.elasticsearch_url == "http://elasticsearch:9200"
        assert s[name]["build"]["context"] == str(ROOT)
        assert settings.s3_bucket and settings.s3_endpoint_url == "http://minio:9000"
    assert Settings.from_env(_env(s["setup"])).kibana_url == "http://kibana:5601"
    assert _env(s["api"])["METRONOME_DATA_DIR"] == _env(s["shipper"])["METRONOME_DATA_DIR"]
    data = _env(s["api"])["METRONOME_DATA_DIR"]
    mounts = [{(v["source"], v["target"]) for v in s[n]["volumes"]} for n in ("api", "shipper")]
    assert mounts[0] == mounts[1] and any(target == data for _, target in mounts[0]), (
        "the API and the shipper must share the spool"
    )


def test_elasticsearch_and_kibana_are_the_tested_version_and_stay_on_loopback(
    resolved: dict[str, Any],
) -> None:
    s = resolved["services"]
    assert s["elasticsearch"]["image"].endswith(f"/elasticsearch:{ES_VERSION}")
    assert s["kibana"]["image"].endswith(f"/kibana:{ES_VERSION}")
    assert s["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert "http://elasticsearch:9200" in s["kibana"]["environment"]["ELASTICSEARCH_HOSTS"]
    for name in ("elasticsearch", "kibana", "minio", "fluentd", "grafana"):
        for port in s[name].get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)  # no security: loopback only
    assert "ports" not in s["api"] and "ports" not in s["shipper"]  # only through NGINX


def test_fluentd_nginx_and_the_shipper_agree_with_fluent_conf(resolved: dict[str, Any]) -> None:
    s = resolved["services"]
    conf = parse_conf((ROOT / "fluentd" / "fluent.conf").read_text())
    assert s["fluentd"]["build"]["context"] == str(ROOT / "fluentd")

    # forward: fluent.conf sends to host `metronome`; the shipper answers to that name and
    # runs the forward input on that port
    forward = next(o for o in route(conf, ACCESS_TAG) if o.type == "forward")
    server = forward.one("server")
    assert s["shipper"]["networks"]["default"]["aliases"] == [server.params["host"]]
    shipper = Settings.from_env(_env(s["shipper"]))
    assert shipper.forward and shipper.forward_host == "0.0.0.0"
    assert shipper.forward_port == int(server.params["port"])
    # a forward port reachable by the network asks for the key fluentd sends, and is
    # published to no host (fluentd's own input only on loopback)
    assert shipper.forward_shared_key
    assert _env(s["fluentd"])["METRONOME_FORWARD_SHARED_KEY"] == shipper.forward_shared_key
    assert "METRONOME_FORWARD_SHARED_KEY" in forward.one("security").params["shared_key"]
    assert not shipper.forward_record_site and not shipper.forward_site_keys

    # archive: the bucket fluentd writes is the one minio-init creates and Metronome reads
    env = _env(s["fluentd"])
    bucket = env["METRONOME_S3_BUCKET"]
    assert f"local/{bucket}" in " ".join(s["minio-init"]["command"])
    assert Settings.from_env(_env(s["api"])).s3_bucket == bucket
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["METRONOME_S3_FORCE_PATH_STYLE"] == "true"
    assert env["AWS_ACCESS_KEY_ID"] == s["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == s["minio"]["environment"]["MINIO_ROOT_PASSWORD"]

    # the access log: the file NGINX writes is the file fluent.conf tails
    tail = PurePosixPath(next(x for x in conf.all("source") if x.type == "tail").params["path"])
    fluentd_mount = next(v for v in s["fluentd"]["volumes"] if tail.is_relative_to(v["target"]))
    nginx_mount = next(v for v in s["nginx"]["volumes"] if v["source"] == fluentd_mount["source"])
    nginx_conf = next(v for v in s["nginx"]["volumes"] if v["target"].endswith(".conf"))
    text = Path(nginx_conf["source"]).read_text()
    (log_path, log_format) = re.findall(r"^\s*access_log\s+(\S+)\s+(\S+);", text, re.M)[0]
    assert PurePosixPath(log_path) == PurePosixPath(nginx_mount["target"]) / tail.relative_to(
        fluentd_mount["target"]
    )
    assert log_format == _env(s["api"])["METRONOME_LOG_FORMAT"] == "combined"
    assert re.search(r"set \$metronome http://api:8080;", text)


def test_a_line_nginx_writes_becomes_a_download_with_the_compose_settings(
    resolved: dict[str, Any],
) -> None:
    env = _env(resolved["services"]["shipper"])
    line = (
        '203.0.113.7 - - [23/Nov/2026:10:00:00 +0000] "GET /datasets/parks/download.csv'
        ' HTTP/1.1" 200 5120 "https://www.example.org/" "Mozilla/5.0"'
    )
    parsed = compile_format(env["METRONOME_LOG_FORMAT"]).parse(line)
    assert isinstance(parsed, ParsedLine) and parsed.status == 200
    match = UrlRules.parse(env["METRONOME_URL_RULES"]).match("/datasets/parks/download.csv")
    assert match is not None
    assert (match.item_id, match.event, match.format) == ("parks", "download", "csv")


def test_the_metronome_image_holds_everything_the_package_needs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY\s+(\S+)", dockerfile, re.M))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    # package data lives inside the packages; anything force-included must be copied too
    needed = set(wheel["packages"]) | set(wheel.get("force-include", {})) | {"pyproject.toml"}
    assert needed <= copied | {"README.md"}, needed - copied
    assert re.search(r"^ENTRYPOINT \[\"metronome\"\]$", dockerfile, re.M)
    assert re.findall(r"^USER\s+(\S+)", dockerfile, re.M)[-1] != "root"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not needed & set(ignored)
