"""A running Metronome (``metronome serve``: gunicorn + uvicorn workers) on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.es_server import free_port

__all__ = ["MetronomeServer", "metric_value"]


def metric_value(text: str, name: str, missing: float | None = None) -> float:
    """The value of the first sample called ``name`` (a counter's ``..._total``) in a
    ``/metrics`` page; ``missing`` when there is none (by default, that fails)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    assert missing is not None, f"{name} not in /metrics"
    return missing


class MetronomeServer:
    """``metronome serve`` as a subprocess; ``env`` adds ``METRONOME_*`` settings.

    ``command``: the module (and its arguments) run with ``python -m`` instead, for a
    server that takes its settings the same way (the benchmarks' baseline apps).
    """

    def __init__(
        self,
        env: dict[str, str],
        data_dir: Path | None = None,
        workers: int = 2,
        args: tuple[str, ...] = (),
        command: tuple[str, ...] = ("metronome", "serve"),
    ) -> None:
        self.args = args
        self.command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="metronome-data-"))
        self.env = {
            **os.environ,
            "METRONOME_HOST": "127.0.0.1",
            "METRONOME_PORT": str(self.port),
            "METRONOME_WORKERS": str(workers),
            "METRONOME_DATA_DIR": str(self.data_dir),
            "METRONOME_LOG_LEVEL": "warning",
            **env,
        }
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout_s: float = 60.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.command, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        path = "/readyz" if wait_ready else "/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"metronome serve exited ({self.proc.returncode}):\n" + self.log_tail()
                )
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # a test waits on every start: a few hundred in a run
        raise RuntimeError(f"metronome serve not ready in {timeout_s:.0f}s:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server and everything it started, as a power cut would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def run_cli(
        self,
        *args: str,
        timeout_s: float = 300,
        env: dict[str, str] | None = None,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run another ``metronome`` command with this server's settings (plus ``env``)."""
        return subprocess.run(
            [sys.executable, "-m", "metronome", *args],
            env={**self.env, **(env or {})},
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def cli_json(self, *args: str) -> Any:
        """Run a ``metronome`` command with ``--json``; what it printed, decoded (it must
        succeed)."""
        made = self.run_cli(*args, "--json")
        assert made.returncode == 0, made.stderr
        return json.loads(made.stdout)

    def metrics(self) -> str:
        """``GET /metrics``: every worker's and the shipper's metrics, as Prometheus text."""
        return httpx.get(self.url + "/metrics", timeout=30).text

    def metric(self, name: str, missing: float | None = None) -> float:
        """One metric's value from ``/metrics`` (:func:`metric_value`)."""
        return metric_value(self.metrics(), name, missing)

    def popen_cli(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a long-running ``metronome`` command (``ship``) with this server's settings."""
        return subprocess.Popen(
            [sys.executable, "-m", "metronome", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code (0 for a clean shutdown)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode
