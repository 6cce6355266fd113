"""Headless Chromium for browser tests: Debian's ``chromium`` package, driven by Playwright.

Playwright's own browser downloads are never used (``playwright install`` is not run); the
tests launch the distribution's ``/usr/bin/chromium``. When it is missing, :func:`ensure_chromium`
installs it with apt (the test command runs as root in CI). If that fails, it raises, so
browser tests error rather than skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.support import prefetch
from tests.support.shared import machine_lock

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "apt_install", "ensure_chromium"]

CHROMIUM = Path(os.environ.get("METRONOME_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def _run(*args: str, timeout_s: float) -> None:
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )


def ensure_chromium(timeout_s: float = 900) -> Path:
    """The Chromium executable, installed with apt first if it is missing."""
    prefetch.wait()
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(
            f"{CHROMIUM} is missing and cannot be installed here (needs root and"
            " apt-get); install Debian's chromium package, or point"
            " METRONOME_TEST_CHROMIUM at a Chromium executable"
        )
    started = time.monotonic()
    apt_install("chromium", timeout_s=timeout_s)
    if not CHROMIUM.exists():
        raise RuntimeError(f"apt installed chromium but {CHROMIUM} is still missing")
    print(f"installed chromium with apt in {time.monotonic() - started:.0f}s")
    return CHROMIUM


def apt_install(package: str, timeout_s: float = 900) -> None:
    """Install a Debian package with apt (needs root); raises when that fails."""
    prefetch.wait()
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(
            f"{package} is missing and cannot be installed here (needs root and apt-get)"
        )
    lock = ("-o", "DPkg::Lock::Timeout=300")
    with machine_lock("apt"):  # one apt at a time, whichever test process asks
        _run("apt-get", *lock, "update", timeout_s=timeout_s)
        _run(
            "apt-get",
            *lock,
            "install",
            "-y",
            "--no-install-recommends",
            package,
            timeout_s=timeout_s,
        )
