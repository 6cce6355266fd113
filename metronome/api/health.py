"""``/healthz`` (the process answers), ``/readyz`` (ready, degraded or not) and ``/metrics``."""

from __future__ import annotations

from pathlib import Path

import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from metronome.errors import MetronomeError
from metronome.pipeline import Pipeline
from metronome.pipeline.metrics import registry_for_scrape
from metronome.store.base import Store

__all__ = ["Health", "Metrics", "Ready"]


class Health:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """200 ``ready``; 200 ``degraded`` while the store is down but the spool has room
    (ingestion works, reports do not); 503 when the spool is full."""

    def __init__(self, store: Store, pipeline: Pipeline) -> None:
        self._store = store
        self._pipeline = pipeline

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        reason = await self._store.check_ready()
        if reason is not None:
            # the schema may have failed to install while the store was down: try again
            try:
                await self._store.ensure_schema()
                reason = await self._store.check_ready()
            except MetronomeError as exc:
                reason = f"{reason}; installing the schema failed: {exc.message}"
        if not self._pipeline.spool_has_room():
            resp.status = falcon.HTTP_503
            resp.media = {
                "error": "spool_full",
                "store": self._store.backend,
                "message": "the spool is full: ingestion answers 503 until the"
                f" store catches up ({reason or 'store reachable'})",
            }
            return
        if reason is None:
            resp.media = {"status": "ready", "store": self._store.backend}
            return
        resp.media = {
            "status": "degraded",
            "store": self._store.backend,
            "reason": reason,
            "message": "ticks are accepted into the spool; reports wait for the store",
        }


class Metrics:
    """Prometheus text format, for all worker processes and the shipper."""

    def __init__(self, spool: Path) -> None:
        self._spool = spool

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry_for_scrape(self._spool))
