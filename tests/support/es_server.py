"""A real, throwaway Elasticsearch server for the test suite and the benchmarks.

Downloads the official no-JDK distribution (``integ-test-zip``) from Maven Central once,
checks its SHA-1, caches it outside the repository, and runs it single-node on free
loopback ports with security off and a small fixed heap, on the machine's JDK.
Elasticsearch refuses to run as root, so under root it runs as ``nobody``.

    python -m tests.support.es_server       # start one and print its URL (Ctrl-C stops)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import httpx

__all__ = ["ES_VERSION", "ElasticsearchServer", "cache_dir", "free_port"]

ES_VERSION = "8.19.21"  # newest on Maven Central that runs on JDK 17
_BASE = "https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/elasticsearch"


def cache_dir() -> Path:
    """Where the distribution is kept between runs (``METRONOME_TEST_CACHE`` overrides).

    Under root the cache must be readable by the unprivileged user that runs the server,
    so it lives in /var/tmp rather than root's home.
    """
    if os.environ.get("METRONOME_TEST_CACHE"):
        return Path(os.environ["METRONOME_TEST_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/tmp/metronome-cache")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metronome"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java_home() -> str:
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            return os.environ[var]
    java = shutil.which("java")
    if not java:
        raise RuntimeError("no JDK found: install JDK 17+ or set ES_JAVA_HOME")
    return str(Path(os.path.realpath(java)).parent.parent)


def install(version: str = ES_VERSION) -> Path:
    """Download (once) and unpack the distribution; return its home directory."""
    root = cache_dir()
    home = root / f"elasticsearch-{version}"
    if (home / "bin" / "elasticsearch").exists():
        return home
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    archive = root / f"elasticsearch-{version}.zip"
    url = f"{_BASE}/{version}/elasticsearch-{version}.zip"
    if not archive.exists():
        with urllib.request.urlopen(url + ".sha1", timeout=60) as resp:
            expected = resp.read().decode().split()[0]
        partial = archive.with_suffix(".part")
        digest = hashlib.sha1()
        with urllib.request.urlopen(url, timeout=300) as resp, open(partial, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            partial.unlink()
            raise RuntimeError(f"checksum mismatch for {url}")
        partial.rename(archive)
    staging = Path(tempfile.mkdtemp(dir=root))
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = zf.extract(info, staging)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode | 0o444)  # readable by the server's user
    for path in staging.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o755)
    os.chmod(staging, 0o755)
    (staging / f"elasticsearch-{version}").rename(home)
    shutil.rmtree(staging, ignore_errors=True)
    return home


class ElasticsearchServer:
    """One single-node server; ``start()``/``stop()`` may be called again (same data)."""

    def __init__(self, heap: str = "512m", version: str = ES_VERSION) -> None:
        self.home = install(version)
        self.workdir = Path(tempfile.mkdtemp(prefix="metronome-es-"))
        self.port = free_port()
        self.transport_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.heap = heap
        self._proc: subprocess.Popen[bytes] | None = None
        shutil.copytree(self.home / "config", self.workdir / "config")
        (self.workdir / "data").mkdir()
        (self.workdir / "logs").mkdir()
        self._as_nobody = os.geteuid() == 0
        if self._as_nobody:
            os.chmod(self.workdir, 0o755)
            for path in [self.workdir, *self.workdir.rglob("*")]:
                os.chown(path, 65534, 65534)

    @property
    def log_path(self) -> Path:
        return self.workdir / "stdout.log"

    def start(self) -> None:
        """Start the process (returns at once; call :meth:`wait_ready`)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        env = dict(os.environ)
        env["ES_JAVA_HOME"] = _java_home()
        env["ES_JAVA_OPTS"] = f"-Xms{self.heap} -Xmx{self.heap}"
        env["ES_PATH_CONF"] = str(self.workdir / "config")
        cmd = [
            str(self.home / "bin" / "elasticsearch"),
            "-E",
            "discovery.type=single-node",
            "-E",
            "xpack.security.enabled=false",
            "-E",
            "network.host=127.0.0.1",
            "-E",
            f"http.port={self.port}",
            "-E",
            f"transport.port={self.transport_port}",
            "-E",
            f"path.data={self.workdir / 'data'}",
            "-E",
            f"path.logs={self.workdir / 'logs'}",
            "-E",
            "cluster.routing.allocation.disk.threshold_enabled=false",
            "-E",
            "action.destructive_requires_name=false",
        ]
        if self._as_nobody:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the cluster is at least yellow; raise with the log tail if it dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"Elasticsearch exited ({self._proc.returncode}):\n" + self.log_tail()
                )
            try:
                resp = httpx.get(
                    f"{self.url}/_cluster/health",
                    params={"wait_for_status": "yellow", "timeout": "1s"},
                    timeout=5,
                )
                if resp.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Elasticsearch did not start in {timeout_s:.0f}s:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), or kill after 60 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


if __name__ == "__main__":
    server = ElasticsearchServer()
    server.start()
    server.wait_ready()
    print(server.url, flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.cleanup()
        sys.exit(0)
