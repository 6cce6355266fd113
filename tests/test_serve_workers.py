"""``metronome serve`` spreads connections over its workers, and refuses a busy port.

Connections are counted from ``/proc`` (Linux, as the server's own sockets are): which
process holds each established socket of the server's port.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.metronome_server import MetronomeServer


def _sockets(port: int, state: str) -> set[int]:
    """Inodes of TCP sockets on local ``port`` in ``state`` (``0A`` listen, ``01``
    established), from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                found.add(int(fields[9]))
    return found


def _holders(root: int, inodes: set[int]) -> Counter[int]:
    """How many of ``inodes`` each process under ``root`` holds open."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    counts: Counter[int] = Counter()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != root:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    counts[pid] += 1
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return counts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    srv = MetronomeServer({}, data_dir=tmp_path_factory.mktemp("workers"), workers=2)
    srv.start()
    deadline = time.monotonic() + 60  # ready once one worker answers: wait for both
    while len(_sockets(srv.port, "0A")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail()


def test_each_worker_listens_on_a_socket_of_its_own(server: MetronomeServer) -> None:
    assert server.proc is not None
    listeners = _sockets(server.port, "0A")
    assert len(listeners) == 2, listeners  # no socket shared between the workers
    holders = _holders(server.proc.pid, listeners)
    assert sorted(holders.values()) == [1, 1], holders


def test_keep_alive_connections_are_spread_over_the_workers(server: MetronomeServer) -> None:
    """64 connections opened at once, as a load generator or a proxy opens them, land on
    both workers (each through its own socket), and each is served."""
    assert server.proc is not None
    burst = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(64)]
    try:
        deadline = time.monotonic() + 10
        while True:  # accepted by a worker: held by one of the server's processes
            holders = _holders(server.proc.pid, _sockets(server.port, "01"))
            if sum(holders.values()) == 64 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sum(holders.values()) == 64, holders
        assert len(holders) == 2 and min(holders.values()) >= 8, holders
        for connection in burst:  # and each is served
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for connection in burst:
            assert connection.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for connection in burst:
            connection.close()


def test_every_new_connection_is_answered(server: MetronomeServer) -> None:
    """Every socket bound to the port belongs to a worker that accepts on it: the master
    holds none that would take connections and never answer them."""
    for _ in range(200):
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_second_server_on_the_same_port_refuses_to_start(
    server: MetronomeServer, tmp_path: Path, host: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metronome", "serve", "--host", host, "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "METRONOME_DATA_DIR": str(tmp_path / "other")},
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on {host}:{server.port}" in result.stderr
    assert "Address already in use" in result.stderr
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass  # the first server still answers


def test_serve_stops_cleanly_and_keeps_its_control_socket_in_its_data_dir(tmp_path: Path) -> None:
    """Two servers on one machine, each with its own gunicorn control socket (gunicorn's
    default is one per user, which the second server would take from the first); SIGTERM
    stops each without an error line."""
    home = tmp_path / "home"
    env = {"METRONOME_LOG_LEVEL": "info", "HOME": str(home)}
    servers = [
        MetronomeServer(env, data_dir=tmp_path / "a", workers=2),
        MetronomeServer(env, data_dir=tmp_path / "b", workers=1),
    ]
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            assert (srv.data_dir / "gunicorn.ctl").is_socket()
            assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
    finally:
        codes = [srv.stop() for srv in servers]
    assert codes == [0, 0]
    assert not (home / ".gunicorn").exists()
    for srv in servers:
        log = srv.log_path.read_text()
        assert not (srv.data_dir / "gunicorn.ctl").exists()  # removed at exit
        assert f"Control socket listening at {srv.data_dir / 'gunicorn.ctl'}" in log
        assert f"Listening at: http://127.0.0.1:{srv.port} (" in log
        assert re.search(r"Listening at: *\(", log) is None, log  # no empty address
        assert "Bad file descriptor" not in log, log
        assert "Traceback" not in log and "[ERROR]" not in log, log


def test_serve_runs_without_a_control_socket_when_the_data_dirs_path_is_too_long(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / ("d" * 60) / ("d" * 60)
    data_dir.parent.mkdir()
    srv = MetronomeServer({"METRONOME_LOG_LEVEL": "info"}, data_dir=data_dir, workers=1)
    try:
        srv.start()
        assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
    finally:
        assert srv.stop() == 0
    log = srv.log_path.read_text()
    assert "Control socket" not in log and "control_socket_disabled" in log, log
    assert not (data_dir / "gunicorn.ctl").exists()
