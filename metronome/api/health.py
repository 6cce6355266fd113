"""``/healthz`` (the process answers) and ``/readyz`` (the store is usable)."""

from __future__ import annotations

import falcon
import falcon.asgi

from metronome.store.base import Store

__all__ = ["Health", "Ready"]


class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        reason = await self._store.check_ready()
        if reason is not None and "template" in reason:
            # templates may have failed to install while the store was down: try again
            try:
                await self._store.ensure_schema()
                reason = await self._store.check_ready()
            except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
                reason = f"{reason}; installing failed: {exc}"
        if reason is None:
            resp.media = {"status": "ready", "store": self._store.backend}
            return
        resp.status = falcon.HTTP_503
        resp.media = {
            "error": "store_unavailable",
            "message": reason,
            "store": self._store.backend,
        }
