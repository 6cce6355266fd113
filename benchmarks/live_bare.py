"""The baseline of ``benchmarks/live.py``: a bare WebSocket broadcast server.

Every connection to ``GET /live`` is accepted and sent one message a second (``bytes``
long, default 1,200: about a live ``result`` of one number) holding the time it was sent,
until it closes: no authentication, no subscriptions, no store. Served exactly as
``metronome serve`` serves Metronome (gunicorn with uvicorn workers, the options of
``benchmarks/bare_app.py``), with the address, port and workers from ``METRONOME_HOST``,
``METRONOME_PORT`` and ``METRONOME_WORKERS`` and the message size from
``LIVE_BARE_BYTES``.

    python -m benchmarks.live_bare
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import falcon
import falcon.asgi

from benchmarks.bare_app import GUNICORN_OPTIONS

__all__ = ["app"]

_SIZE = int(os.environ.get("LIVE_BARE_BYTES", "1200"))


class _Broadcast:
    def __init__(self) -> None:
        self.sockets: set[falcon.asgi.WebSocket] = set()
        self.task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1 - time.time() % 1)  # on the second, like a 1 s subscription
            head = f'{{"type":"result","sent_ms":{int(time.time() * 1000)},"pad":"'
            message = head + "x" * max(0, _SIZE - len(head) - 2) + '"}'
            for ws in list(self.sockets):
                asyncio.create_task(self._send(ws, message))

    async def _send(self, ws: falcon.asgi.WebSocket, message: str) -> None:
        try:
            await ws.send_text(message)
        except falcon.WebSocketDisconnected:
            self.sockets.discard(ws)

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        await ws.accept()
        if self.task is None:
            self.task = asyncio.create_task(self._tick())
        self.sockets.add(ws)
        try:
            while True:
                await ws.receive_text()
        except falcon.WebSocketDisconnected:
            pass
        finally:
            self.sockets.discard(ws)


class _Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b'{"status":"ok"}'


app = falcon.asgi.App()
app.add_route("/live", _Broadcast())
app.add_route("/healthz", _Health())
app.add_route("/readyz", _Health())


def main() -> None:
    from gunicorn.app.base import BaseApplication

    env = os.environ
    options = {
        **GUNICORN_OPTIONS,
        "bind": f"{env.get('METRONOME_HOST', '127.0.0.1')}:{env.get('METRONOME_PORT', '8082')}",
        "workers": int(env.get("METRONOME_WORKERS", "2")),
        "loglevel": "warning",
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
