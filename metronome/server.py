"""Runs the app under gunicorn with uvicorn workers."""

from __future__ import annotations

import os
import socket
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from metronome.config import Settings

__all__ = ["MetronomeWorker", "PortInUse", "ensure_port_free", "run_server"]


class MetronomeWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker is untyped
    """uvicorn's gunicorn worker with Metronome's connection limit, each listening on a
    socket of its own (gunicorn's ``reuse_port``: the kernel spreads new connections).

    Slow clients: an idle keep-alive connection is closed after ``METRONOME_KEEPALIVE_S``
    (gunicorn ``keepalive``, passed on as uvicorn's ``timeout_keep_alive``); a request
    body must arrive within ``METRONOME_BODY_TIMEOUT_S`` (the app answers 408); past
    ``METRONOME_MAX_CONNECTIONS`` connections or requests in progress a worker answers
    503 (uvicorn's ``limit_concurrency``). uvicorn has no timeout for a request's
    headers: in front of the internet, run a reverse proxy that has one (NGINX
    ``client_header_timeout``), as docs/guides/sites-and-keys.md says.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env(os.environ)
        self.CONFIG_KWARGS = {
            **UvicornWorker.CONFIG_KWARGS,
            "limit_concurrency": settings.max_connections or None,
        }
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        # with a socket per worker the arbiter holds none, and logs "Listening at: " empty
        self.log.info(
            "Listening at: %s (worker %s)",
            ",".join(str(listener) for listener in self.sockets),
            self.pid,
        )
        super().run()


class PortInUse(RuntimeError):
    """Another process listens on the address ``serve`` was asked to bind."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` when something already listens on ``host:port``.

    The workers' sockets share the port (``SO_REUSEPORT``), and the kernel would let a
    second server of the same user share it too, silently splitting the traffic between
    them (two data directories, each with part of the events). A plain bind tells.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET  # as gunicorn picks it
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        probe.bind((bare, port))
    except OSError as exc:
        raise PortInUse(
            f"cannot listen on {host}:{port}: {exc.strerror} (is another"
            " Metronome running? METRONOME_PORT or --port picks another)"
        ) from None
    finally:
        probe.close()


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # runs in each worker after the fork: every worker builds its own app and store
        from metronome.app import app_from_env

        return app_from_env()


def run_server(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; workers that die are replaced."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    _Server(
        {
            "bind": f"{host}:{settings.port}",
            "workers": settings.workers,
            "worker_class": "metronome.server.MetronomeWorker",
            "graceful_timeout": 10,
            "timeout": 60,  # a worker that stops answering its arbiter is restarted
            "keepalive": settings.keepalive_s,
            # a listening socket per worker (gunicorn 24+ makes them in each worker): the
            # kernel spreads new connections over them. With one socket shared by all, the
            # worker that woke first accepted every connection waiting, and keep-alive
            # connections stayed there (31 of 32 on one of two workers in one benchmark run,
            # all 8 in another, at half the throughput)
            "reuse_port": True,
            "accesslog": None,
            "loglevel": settings.log_level,
            "preload_app": False,
        }
    ).run()
