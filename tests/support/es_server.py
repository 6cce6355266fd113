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

from tests.support.shared import machine_lock

__all__ = [
    "ES_VERSION",
    "OPENSEARCH_VERSION",
    "ElasticsearchServer",
    "OpenSearchServer",
    "cache_dir",
    "free_port",
]

ES_VERSION = "8.19.21"  # newest on Maven Central that runs on JDK 17
OPENSEARCH_VERSION = (
    "3.8.0"  # newest integ-test zip on Maven Central; needs JDK 21+ (see _java_home)
)
_OPENSEARCH_BASE = (
    "https://repo1.maven.org/maven2/org/opensearch/distribution/integ-test-zip/opensearch"
)
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


def _jdk_major(home: Path) -> int:
    """The major version a JDK's ``release`` file names (0 when it names none)."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("JAVA_VERSION="):
            version = line.split("=", 1)[1].strip().strip('"')
            head = version.split(".")[0]
            return int(head) if head.isdigit() else 0
    return 0


def _java_home(minimum: int = 17, env: str = "ES") -> str:
    """A JDK for the server: ``<env>_JAVA_HOME`` or ``JAVA_HOME`` when set, else the
    ``java`` on PATH when it is new enough, else the newest JDK in /usr/lib/jvm (the
    machines this runs on have OpenJDK 17 and a Temurin JDK 25 beside it)."""
    for var in (f"{env}_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var) and _jdk_major(Path(os.environ[var])) >= minimum:
            return os.environ[var]
    java = shutil.which("java")
    if java and _jdk_major(Path(os.path.realpath(java)).parent.parent) >= minimum:
        return str(Path(os.path.realpath(java)).parent.parent)
    jvms = Path("/usr/lib/jvm")
    found = sorted(
        (home for home in (jvms.iterdir() if jvms.is_dir() else []) if home.is_dir()),
        key=_jdk_major,
    )
    if found and _jdk_major(found[-1]) >= minimum:
        return str(found[-1])
    if minimum > 17:
        raise RuntimeError(f"no JDK {minimum}+ found: install one or set {env}_JAVA_HOME")
    for var in ("ES_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            return os.environ[var]
    java = shutil.which("java")
    if not java:
        raise RuntimeError("no JDK found: install JDK 17+ or set ES_JAVA_HOME")
    return str(Path(os.path.realpath(java)).parent.parent)


def install(version: str = ES_VERSION, product: str = "elasticsearch") -> Path:
    """Download (once) and unpack the distribution (``elasticsearch`` or ``opensearch``);
    return its home directory."""
    root = cache_dir()
    home = root / f"{product}-{version}"
    if (home / "bin" / product).exists():
        return home
    with machine_lock(f"install-{product}"):  # another test process may be unpacking it
        return _install(root, home, version, product)


def _install(root: Path, home: Path, version: str, product: str) -> Path:
    if (home / "bin" / product).exists():
        return home
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    archive = root / f"{product}-{version}.zip"
    base = _BASE if product == "elasticsearch" else _OPENSEARCH_BASE
    url = f"{base}/{version}/{product}-{version}.zip"
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
    (staging / f"{product}-{version}").rename(home)
    shutil.rmtree(staging, ignore_errors=True)
    return home


class ElasticsearchServer:
    """One single-node server; ``start()``/``stop()`` may be called again (same data)."""

    product = "elasticsearch"
    _env = "ES"  # ES_JAVA_HOME, ES_JAVA_OPTS, ES_PATH_CONF
    _settings: tuple[str, ...] = ("xpack.security.enabled=false",)
    _jdk = 17  # the oldest JDK it runs on

    def __init__(self, heap: str = "512m", version: str = ES_VERSION) -> None:
        self.home = install(version, self.product)
        self.workdir = Path(tempfile.mkdtemp(prefix="metronome-es-"))
        self.port = free_port()
        self.transport_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.heap = heap
        # how it finds its cluster: alone by default (tests/support/es_cluster.py: three)
        self.node_settings: tuple[str, ...] = ("discovery.type=single-node",)
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
    def pid(self) -> int | None:
        """The process id (and process group) of the running server, if any."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.workdir / "stdout.log"

    def start(self) -> None:
        """Start the process (returns at once; call :meth:`wait_ready`)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        env = dict(os.environ)
        env[f"{self._env}_JAVA_HOME"] = _java_home(self._jdk, self._env)
        env[f"{self._env}_JAVA_OPTS"] = f"-Xms{self.heap} -Xmx{self.heap}"
        env[f"{self._env}_PATH_CONF"] = str(self.workdir / "config")
        cmd = [
            str(self.home / "bin" / self.product),
            *(arg for setting in self.node_settings for arg in ("-E", setting)),
            *(arg for setting in self._settings for arg in ("-E", setting)),
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

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until the cluster is at least yellow; raise with the log tail if it dies.
        The limit is generous: on two busy cores a JVM start takes minutes, not seconds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.product} exited ({self._proc.returncode}):\n" + self.log_tail()
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
        raise RuntimeError(f"{self.product} did not start in {timeout_s:.0f}s:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the node, as a crash or a power cut would."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

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


class OpenSearchServer(ElasticsearchServer):
    """The same for OpenSearch's integ-test distribution (no security plugin in it)."""

    product = "opensearch"
    _env = "OPENSEARCH"
    _settings = ()
    _jdk = 21  # OpenSearch 3

    def __init__(self, heap: str = "512m", version: str = OPENSEARCH_VERSION) -> None:
        super().__init__(heap, version)
        # its jvm.options name logs/ and data/ relative to the (read-only) home directory
        options = self.workdir / "config" / "jvm.options"
        text = options.read_text()
        for relative in ("logs/", "=data"):
            absolute = relative.replace("logs/", f"{self.workdir}/logs/").replace(
                "=data", f"={self.workdir}/data"
            )
            text = text.replace(relative, absolute)
        options.write_text(text)


if __name__ == "__main__":
    server = OpenSearchServer() if sys.argv[1:] == ["opensearch"] else ElasticsearchServer()
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
