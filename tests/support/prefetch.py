"""Install, in the background, the Debian packages the selected tests will need.

A fresh machine has none of Chromium, PostgreSQL, RabbitMQ, nginx or a C compiler. Each
``ensure_*`` helper installs its own package when its first test asks for it, which puts
every install (minutes together) on the suite's critical path. When collection ends,
tests/conftest.py calls :func:`start` with the fixtures the selected tests use; one
``apt-get install`` of everything missing then runs beside the first tests, and each
``ensure_*`` helper calls :func:`wait` before looking, so it finds its package installed
(or installs it itself, as before, when the prefetch failed: the prefetch never makes a
test error that would not have errored without it).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.support.shared import machine_lock

__all__ = ["start", "wait"]


def _missing_path(path: str) -> Callable[[], bool]:
    return lambda: not Path(path).exists()


def _no_postgres() -> bool:
    return shutil.which("pg_ctl") is None and not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")


def _no_cc() -> bool:
    return not (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"))


# fixture -> (is its package missing?, the packages that provide it)
NEEDS: dict[str, tuple[Callable[[], bool], tuple[str, ...]]] = {
    "browser": (
        _missing_path(os.environ.get("METRONOME_TEST_CHROMIUM", "/usr/bin/chromium")),
        ("chromium",),
    ),
    "postgres": (_no_postgres, ("postgresql",)),
    "rabbitmq": (_missing_path("/usr/lib/rabbitmq/bin/rabbitmq-server"), ("rabbitmq-server",)),
    "secure_proxy": (
        _missing_path(os.environ.get("METRONOME_TEST_NGINX", "/usr/sbin/nginx")),
        ("nginx",),
    ),
    "go": (_no_cc, ("gcc", "libc6-dev")),
}

_thread: threading.Thread | None = None


def _install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    with machine_lock("apt"):  # the run's other test process prefetches the same
        _apt(env, lock, packages)


def _apt(env: dict[str, str], lock: list[str], packages: list[str]) -> None:
    for command in (
        ["apt-get", *lock, "update"],
        ["apt-get", *lock, "install", "-y", "--no-install-recommends", *packages],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0:
            return  # each ensure_* helper tries again itself and reports what went wrong


def start(fixturenames: Iterable[str]) -> None:
    """Begin installing what the given fixtures need and the machine lacks (root only)."""
    global _thread
    if _thread is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    wanted = set(fixturenames)
    packages = sorted(
        {
            package
            for fixture, (missing, provides) in NEEDS.items()
            if fixture in wanted and missing()
            for package in provides
        }
    )
    if packages:
        _thread = threading.Thread(
            target=_install, args=(packages,), name="apt-prefetch", daemon=True
        )
        _thread.start()


def wait() -> None:
    """Return once the background install (if any) has finished."""
    if _thread is not None:
        _thread.join()
