"""Runs the app under gunicorn with uvicorn workers."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from metronome.config import Settings

__all__ = ["run_server"]


class _Server(BaseApplication):  # type: ignore[misc]
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
    _Server({
        "bind": f"{host}:{settings.port}",
        "workers": settings.workers,
        "worker_class": "uvicorn_worker.UvicornWorker",
        "graceful_timeout": 10,
        "timeout": 60,
        "keepalive": 5,
        "accesslog": None,
        "loglevel": settings.log_level,
        "preload_app": False,
    }).run()
