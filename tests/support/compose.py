"""The real ``docker compose`` (the v2 CLI plugin) for validating docker-compose.yml.

The docker CLI on the test machines comes without the compose plugin, and release binaries
cannot be downloaded there: only package registries are reachable. So the plugin is built
from its Go module (``github.com/docker/compose/v2`` at a pinned version, fetched through
the Go module proxy with checksums verified against the Go checksum database) with the
machine's Go toolchain, once: about 5 minutes on 2 cores, then cached beside the
Elasticsearch download in ``<cache>/docker-compose-<version>/cli-plugins/``. Docker finds
it there through ``DOCKER_CONFIG``; nothing is installed outside the cache.

    python -m tests.support.compose      # build (if needed) and print `docker compose version`
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.es_server import cache_dir

__all__ = ["COMPOSE_VERSION", "Compose", "install"]

COMPOSE_MODULE = "github.com/docker/compose/v2"
COMPOSE_VERSION = "v2.40.3"
_BUILD_TIMEOUT_S = 40 * 60


def _config_dir() -> Path:
    return cache_dir() / f"docker-compose-{COMPOSE_VERSION}"


def _go() -> str:
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if go is None:
        raise RuntimeError(
            "building docker compose for the tests needs Go 1.24 or newer (`go` on PATH)"
        )
    return go


def install() -> Path:
    """Build the plugin unless it is cached; return the directory to use as DOCKER_CONFIG."""
    config = _config_dir()
    plugin = config / "cli-plugins" / "docker-compose"
    if plugin.exists():
        return config
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "docker-compose.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it right now
        if plugin.exists():
            return config
        go = _go()
        env = {**os.environ, "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}
        fetched = subprocess.run(
            [go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if fetched.returncode != 0:
            raise RuntimeError(
                f"go mod download {COMPOSE_MODULE}@{COMPOSE_VERSION} failed:\n"
                + (fetched.stdout + fetched.stderr)[-2000:]
            )
        source = json.loads(fetched.stdout)["Dir"]
        plugin.parent.mkdir(parents=True, exist_ok=True)
        partial = plugin.with_suffix(".part")
        # `go install module@version` refuses modules whose go.mod has exclude directives
        # (this one has), so build inside the downloaded module, as its own main module.
        built = subprocess.run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}",
                "-o",
                str(partial),
                "./cmd",
            ],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
        )
        if built.returncode != 0:
            raise RuntimeError(
                "building docker compose failed:\n" + (built.stdout + built.stderr)[-3000:]
            )
        os.chmod(partial, 0o755)
        partial.rename(plugin)
        os.chmod(config, 0o755)
    return config


class Compose:
    """``docker compose`` with the built plugin."""

    def __init__(self, config_dir: Path) -> None:
        docker = shutil.which("docker")
        if docker is None:
            raise RuntimeError("the docker CLI is not installed (`docker` on PATH)")
        self.docker = docker
        self.env = {**os.environ, "DOCKER_CONFIG": str(config_dir)}

    def run(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.docker, "compose", *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )


if __name__ == "__main__":
    version = Compose(install()).run("version")
    print(version.stdout or version.stderr, end="")
    sys.exit(version.returncode)
