"""A real RabbitMQ broker for the queue tests: Debian's ``rabbitmq-server`` package.

:func:`ensure_rabbitmq` finds the broker's scripts (installing the package with apt when
they are missing, as :mod:`tests.support.postgres` does for PostgreSQL);
:class:`RabbitMQServer` runs one node on free loopback ports with a throwaway node name,
Erlang cookie and data directory, so it never meets a broker the machine already runs.
It can be killed (``SIGKILL``, as a crash would) and started again on the same ports and
data, which is how the tests restart RabbitMQ in the middle of a stream. Anything that
goes wrong raises, so the tests that need it error rather than skip.

    python -m tests.support.rabbitmq     # start one, print its AMQP URL (Ctrl-C stops)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support import prefetch
from tests.support.browser import apt_install
from tests.support.es_server import free_port

__all__ = ["RabbitMQServer", "ensure_rabbitmq"]

_SBIN = Path("/usr/lib/rabbitmq/bin")


def _scripts() -> Path | None:
    return _SBIN if (_SBIN / "rabbitmq-server").exists() else None


def ensure_rabbitmq(timeout_s: float = 900) -> Path:
    """The directory holding ``rabbitmq-server`` and ``rabbitmqctl``, installed if missing."""
    prefetch.wait()
    found = _scripts()
    if found is not None:
        return found
    apt_install("rabbitmq-server", timeout_s=timeout_s)
    found = _scripts()
    if found is None:
        raise RuntimeError("apt installed rabbitmq-server but its scripts are still missing")
    return found


class RabbitMQServer:
    """One RabbitMQ node on free ports; user ``metronome`` with a random password."""

    def __init__(self) -> None:
        self.bin = ensure_rabbitmq()
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="metronome-rabbitmq-"))
        self.node = f"metronome-test-{secrets.token_hex(4)}@localhost"
        self.password = secrets.token_hex(12)  # no leading "-" for rabbitmqctl to read as an option
        self.url = f"amqp://metronome:{self.password}@127.0.0.1:{self.port}/%2F"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.root / "home").mkdir()
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            # The tests fill disks and spools on purpose; keep the broker's own alarms away.
            "disk_free_limit.absolute = 1MB\n"
            "vm_memory_high_watermark.relative = 0.8\n"
        )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.root / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_LOGS=str(self.root / "log" / "node.log"),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_ENABLED_PLUGINS="",
            RABBITMQ_PID_FILE=str(self.root / "node.pid"),
        )
        return env

    def ctl(self, *args: str, timeout_s: float = 120) -> str:
        """Run ``rabbitmqctl`` against this node and return its output."""
        proc = subprocess.run(
            [str(self.bin / "rabbitmqctl"), "-n", self.node, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=self._env(),
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def start(self, timeout_s: float = 120) -> None:
        """Start the node (again, after :meth:`kill`, on the same ports and data)."""
        first = self.proc is None
        (self.root / "log").mkdir(exist_ok=True)
        with open(self.root / "stdout.log", "ab") as output:
            self.proc = subprocess.Popen(
                [str(self.bin / "rabbitmq-server")],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self.log_tail()}")
            try:
                self.ctl("await_startup", timeout_s=max(5.0, deadline - time.monotonic()))
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ did not start:\n{self.log_tail()}") from None
                time.sleep(0.5)
        if first:
            self.ctl("add_user", "metronome", self.password)
            self.ctl("set_user_tags", "metronome", "administrator")
            self.ctl("set_permissions", "-p", "/", "metronome", ".*", ".*", ".*")

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in (self.root / "stdout.log", self.root / "log" / "node.log"):
            if path.exists():
                out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    def kill(self) -> None:
        """SIGKILL the node and its Erlang VM, as a crash would; data stays for a restart.

        RabbitMQ writes queue declarations to disk a moment after confirming them: declare
        what must survive a crash a second or two before killing the node.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.ctl("stop", timeout_s=60)
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
                self.kill()
        finally:
            # The node started its own epmd daemon on our port; it outlives the node.
            epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
            deadline = time.monotonic() + 15  # it refuses while the node is still registered
            while time.monotonic() < deadline:
                done = subprocess.run(
                    [epmd, "-port", str(self.epmd_port), "-kill"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                if "Killed" in done.stdout or "Cannot connect" in done.stderr + done.stdout:
                    break
                time.sleep(0.3)
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    server = RabbitMQServer()
    server.start()
    print(server.url, flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


if __name__ == "__main__":
    main()
