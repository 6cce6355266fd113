"""What the run's test processes share when pytest-xdist runs the suite in several.

``scripts/test`` runs the suite in two processes (``-n 2``, whole modules to each). Each
process has its own session fixtures, which is right for what tests stop, kill or fill
(RabbitMQ, the stoppable Elasticsearch of tests/test_faults.py, Metronome servers), but
would start two of each heavy server every test only reads and writes under its own
prefix. Those (the suite's Elasticsearch and OpenSearch) start once for the run:

- the first process that needs one takes a lock in the run's shared directory, starts the
  server and writes its URL, process group and working directory to ``<name>.json``;
  the other finds the record (or the error it failed with) and uses the same server;
- no worker stops it, since the other may still be using it: the controlling process
  stops every recorded server when the run ends (:func:`stop_all`).

:func:`machine_lock` serialises what must not run twice at once on one machine (apt,
unpacking a server into the shared cache), whichever test run or process asks.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

__all__ = ["ENV", "machine_lock", "run_dir", "shared_server", "stop_all"]

# set by the controlling process for its workers: the run's shared directory
ENV = "METRONOME_TEST_SHARED_DIR"
_started: list[object] = []  # keeps the servers' Popen objects alive in their worker


class _Server(Protocol):
    url: str
    workdir: Path

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...
    def wait_ready(self) -> None: ...
    def cleanup(self) -> None: ...


def run_dir() -> Path | None:
    """The run's shared directory when this process is one of several workers, else None."""
    value = os.environ.get(ENV)
    return Path(value) if value and os.environ.get("PYTEST_XDIST_WORKER") else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (a file under the system's temp directory)."""
    with _locked(Path(os.environ.get("TMPDIR", "/tmp")) / f"metronome-test-{name}.lock"):
        yield


def shared_server(shared: Path, name: str, make: Callable[[], _Server]) -> str:
    """The URL of the run's server ``name``, started by whichever worker asks first."""
    record = shared / f"{name}.json"
    with _locked(shared / f"{name}.lock"):
        if record.exists():
            known = json.loads(record.read_text())
            if "error" in known:
                raise RuntimeError(
                    f"{name} did not start in another test process: {known['error']}"
                )
            return str(known["url"])
        server = make()
        try:
            server.start()
            server.wait_ready()
        except BaseException as exc:
            server.cleanup()
            record.write_text(json.dumps({"error": str(exc)}))
            raise
        _started.append(server)
        record.write_text(
            json.dumps({"url": server.url, "pid": server.pid, "workdir": str(server.workdir)})
        )
        return server.url


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies, which nobody may reap
    once their worker has exited, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _stop_group(pgid: int, grace_s: float = 60.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)
        if not _group_alive(pgid):
            return


def stop_all(shared: Path) -> None:
    """Stop every server the workers recorded in ``shared`` and remove its files."""
    for record in sorted(shared.glob("*.json")):
        known = json.loads(record.read_text())
        if known.get("pid"):
            _stop_group(int(known["pid"]))
        if known.get("workdir"):
            shutil.rmtree(known["workdir"], ignore_errors=True)
    shutil.rmtree(shared, ignore_errors=True)
