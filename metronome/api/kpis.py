"""``/kpis``: a site's KPI definitions (the worker evaluates them; insights are queried
with ``POST /query`` and ``"source": "insights"``)."""

from __future__ import annotations

import falcon
import falcon.asgi

from metronome.config import Settings
from metronome.kpis.model import parse_kpi
from metronome.kpis.registry import open_kpis

from .body import Deadlines, decode_json, read_body, require_content_type
from .guard import Guard

__all__ = ["KpisResource"]

MAX_KPI_BYTES = 65_536


class KpisResource:
    """A key with the ``query`` scope once sites exist (a KPI is a saved query of the
    key's site); each site sees and changes its own KPIs only."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        self._settings = settings
        self._guard = guard
        self._deadlines = Deadlines.of(settings.body_timeout_s)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self._guard.read(req)
        async with open_kpis(self._settings) as registry:
            kpis = await registry.list(access.site_id)
        resp.media = {"kpis": [k.to_json() for k in kpis]}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self._guard.read(req)
        require_content_type(req, ("application/json",))
        body = decode_json(await read_body(req, MAX_KPI_BYTES, self._deadlines), "the KPI")
        kpi = parse_kpi(body, access.site_id)
        async with open_kpis(self._settings) as registry:
            await registry.put(kpi)
        resp.status = falcon.HTTP_201
        resp.media = kpi.to_json()

    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, kpi_id: str
    ) -> None:
        access = await self._guard.read(req)
        async with open_kpis(self._settings) as registry:
            resp.media = (await registry.get(access.site_id, kpi_id)).to_json()

    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, kpi_id: str
    ) -> None:
        access = await self._guard.read(req)
        async with open_kpis(self._settings) as registry:
            await registry.delete(access.site_id, kpi_id)
        resp.status = falcon.HTTP_204
