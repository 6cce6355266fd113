"""The machine's Go toolchain, for the tests that build and run Go programs against Metronome.

``clients/go`` (the telemetry agent) is tested with ``go test -race`` against a running
server, and ``tests/contract/upgrade_responder`` builds upgrade-responder's own client.
Go comes from the machine (``go`` on PATH, or /usr/local/go); modules, when a program
needs any, come through the Go module proxy with checksums verified (``GOFLAGS=-mod=mod``),
and both the module cache and the build cache stay where Go keeps them, outside the
repository, so a second run compiles nothing. ``-race`` needs cgo and a C compiler: when
``cc`` is missing and the tests run as root, ``apt-get install gcc`` provides it.

    python -m tests.support.golang      # print the toolchain and caches the tests use
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support import prefetch

__all__ = ["GoToolchain", "go_toolchain"]

_APT_TIMEOUT_S = 600


class GoToolchain:
    """``go`` and the environment the tests run it in."""

    def __init__(self, go: str) -> None:
        self.go = go
        self.env = {
            **os.environ,
            "GOFLAGS": "-mod=mod -buildvcs=false",
            "GOTOOLCHAIN": "local",  # the machine's Go; never download another
            "CGO_ENABLED": "1",  # -race needs cgo
        }

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.go, *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def version(self) -> str:
        return subprocess.run(
            [self.go, "version"], capture_output=True, text=True, env=self.env, check=True
        ).stdout.strip()


def _c_compiler() -> None:
    prefetch.wait()
    if shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError("go test -race needs a C compiler (cc): install gcc")
    installed = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "gcc", "libc6-dev"],
        capture_output=True,
        text=True,
        timeout=_APT_TIMEOUT_S,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if installed.returncode != 0:
        raise RuntimeError("apt-get install gcc failed:\n" + installed.stderr[-2000:])


def go_toolchain() -> GoToolchain:
    """The machine's Go (1.22 or newer), with a C compiler for ``-race``; RuntimeError
    saying what is missing otherwise."""
    go = shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )
    if go is None:
        raise RuntimeError("the Go client tests need Go 1.22 or newer (`go` on PATH)")
    _c_compiler()
    return GoToolchain(go)


if __name__ == "__main__":
    toolchain = go_toolchain()
    print(toolchain.version())
    for name in ("GOCACHE", "GOMODCACHE", "GOPROXY"):
        print(name, toolchain.run("env", name, cwd=Path.cwd()).stdout.strip())
