"""A real PostgreSQL server for collector tests: Debian's ``postgresql`` package.

:func:`ensure_postgres` finds ``initdb``/``pg_ctl`` (installing the package with apt when
they are missing, as :mod:`tests.support.browser` does for Chromium); :class:`PostgresServer`
starts one on a free port with a throwaway data directory (as the ``postgres`` user when
the tests run as root, since PostgreSQL refuses to run as root) and stops it. Anything that
goes wrong raises, so the tests that need it error rather than skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import prefetch
from tests.support.browser import apt_install
from tests.support.es_server import free_port

__all__ = ["PostgresServer", "ensure_postgres"]


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def ensure_postgres(timeout_s: float = 900) -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``, installed with apt if missing."""
    prefetch.wait()
    found = _bin_dir()
    if found is not None:
        return found
    apt_install("postgresql", timeout_s=timeout_s)
    found = _bin_dir()
    if found is None:
        raise RuntimeError("apt installed postgresql but pg_ctl is still missing")
    return found


class PostgresServer:
    """One PostgreSQL server on a free port, its data in a temporary directory."""

    def __init__(self) -> None:
        self.bin = ensure_postgres()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="metronome-pg-"))
        self.data = self.root / "data"
        self.user = None if os.geteuid() != 0 else "postgres"
        self.url = f"postgresql+psycopg://metronome@127.0.0.1:{self.port}/metronome"

    def _as_owner(self, *args: str, timeout_s: float = 120) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}")

    def start(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o755)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._as_owner(
            "initdb", "-D", str(self.data), "-U", "metronome", "--auth=trust", "-E", "UTF8"
        )
        self._as_owner(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )
        self._as_owner(
            "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "metronome", "metronome"
        )

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="metronome", dbname="metronome", autocommit=True
        ) as conn:
            conn.execute(statement)

    def stop(self) -> None:
        deadline = time.monotonic() + 60
        try:
            self._as_owner("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            while time.monotonic() < deadline and (self.data / "postmaster.pid").exists():
                time.sleep(0.1)
            shutil.rmtree(self.root, ignore_errors=True)
