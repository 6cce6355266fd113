"""The baseline server: a bare Falcon ASGI app that accepts ticks and does nothing with them.

``POST /tick`` and ``POST /ticks`` read the body (as any endpoint must receive it) and answer
``202 {}``; ``GET /healthz`` and ``GET /readyz`` answer 200. It is served exactly as
``metronome serve`` serves Metronome: gunicorn with ``uvicorn_worker.UvicornWorker`` workers
(uvloop and httptools when installed) and the same gunicorn options as
``metronome/server.py``.

    python -m benchmarks.bare_app --port 8081 --workers 2

Without options, the address, port and workers come from ``METRONOME_HOST``,
``METRONOME_PORT`` and ``METRONOME_WORKERS``, so the benchmarks start it with the test
suite's ``MetronomeServer``, exactly as they start Metronome.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import falcon
import falcon.asgi

__all__ = ["GUNICORN_OPTIONS", "app"]

# the options metronome/server.py passes to gunicorn (bind and workers come from the CLI);
# keep them in step with it so the baseline differs from Metronome only by the app
GUNICORN_OPTIONS: dict[str, Any] = {
    "worker_class": "uvicorn_worker.UvicornWorker",
    "graceful_timeout": 10,
    "timeout": 60,
    "keepalive": 5,
    "accesslog": None,
    "preload_app": False,
}


class _Accept:
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await req.stream.read()
        resp.status = falcon.HTTP_202
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b"{}"


class _Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b'{"status":"ok"}'


app = falcon.asgi.App()
app.add_route("/tick", _Accept())
app.add_route("/ticks", _Accept())
app.add_route("/healthz", _Health())
app.add_route("/readyz", _Health())


def main() -> None:
    from gunicorn.app.base import BaseApplication

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    env = os.environ
    parser.add_argument("--host", default=env.get("METRONOME_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("METRONOME_PORT", "8081")))
    parser.add_argument("--workers", type=int, default=int(env.get("METRONOME_WORKERS", "2")))
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()

    options = {
        **GUNICORN_OPTIONS,
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "loglevel": args.log_level,
    }

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Server().run()


if __name__ == "__main__":
    main()
