"""``/funnels``: a site's saved funnels, and ``/funnels/{id}/report``: one counted for a
range (the same answer as the ad hoc ``/query`` funnel)."""

from __future__ import annotations

import re

import falcon
import falcon.asgi

from metronome.config import Settings
from metronome.errors import InvalidFunnel
from metronome.events.typed import EventSchemas
from metronome.reports.funnels import (
    FUNNEL_ID,
    MAX_FUNNELS,
    funnel_report,
    open_funnels,
    parse_funnel,
    unknown_funnel,
)
from metronome.reports.named import run_report
from metronome.store.base import Store

from .body import Deadlines, decode_json, read_body, require_content_type, single_params
from .guard import Guard

__all__ = ["FunnelsResource"]

MAX_FUNNEL_BYTES = 65_536
_ID = re.compile(FUNNEL_ID)


class FunnelsResource:
    """A key with the ``query`` scope once sites exist (a funnel is a saved query of the
    key's site); each site sees and changes its own funnels only, and an all-sites admin
    key any site's, naming it with ``?site=``."""

    def __init__(self, settings: Settings, store: Store, guard: Guard) -> None:
        self._settings = settings
        self._store = store
        self._guard = guard
        self._deadlines = Deadlines.of(settings.body_timeout_s)
        self._typed = EventSchemas.from_config(settings.event_schemas).kinds

    async def _definition(self, req: falcon.asgi.Request) -> object:
        require_content_type(req, ("application/json",))
        raw = await read_body(req, MAX_FUNNEL_BYTES, self._deadlines)
        return decode_json(raw, "the funnel")

    @staticmethod
    def _check_id(funnel_id: str) -> None:
        """An id no funnel can have is unknown, before any store is asked."""
        if not _ID.match(funnel_id):
            raise unknown_funnel(funnel_id)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self._guard.read(req)
        async with open_funnels(self._settings) as registry:
            funnels = await registry.list(access.site_id)
        resp.media = {"funnels": [f.to_json() for f in funnels]}

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self._guard.read(req)
        funnel = parse_funnel(await self._definition(req), access.site_id, typed=self._typed)
        async with open_funnels(self._settings) as registry:
            existing = await registry.list(access.site_id)
            if any(f.id == funnel.id for f in existing):
                raise InvalidFunnel(
                    f"funnel.id: {funnel.id!r} is taken; PUT /funnels/{funnel.id} replaces it",
                    field="funnel.id",
                )
            if len(existing) >= MAX_FUNNELS:
                raise InvalidFunnel(
                    f"a site keeps at most {MAX_FUNNELS} funnels; delete one first",
                    field="funnel",
                    limit=MAX_FUNNELS,
                )
            await registry.put(funnel)
        resp.status = falcon.HTTP_201
        resp.media = funnel.to_json()

    async def on_get_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, funnel_id: str
    ) -> None:
        access = await self._guard.read(req)
        self._check_id(funnel_id)
        async with open_funnels(self._settings) as registry:
            resp.media = (await registry.get(access.site_id, funnel_id)).to_json()

    async def on_put_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, funnel_id: str
    ) -> None:
        access = await self._guard.read(req)
        self._check_id(funnel_id)
        body = await self._definition(req)
        async with open_funnels(self._settings) as registry:
            old = await registry.get(access.site_id, funnel_id)
            new = parse_funnel(body, access.site_id, typed=self._typed, funnel_id=funnel_id)
            new = type(new)(new.id, new.site_id, new.definition, old.created_ms, new.updated_ms)
            await registry.put(new)
        resp.media = new.to_json()

    async def on_delete_one(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, funnel_id: str
    ) -> None:
        access = await self._guard.read(req)
        self._check_id(funnel_id)
        async with open_funnels(self._settings) as registry:
            await registry.delete(access.site_id, funnel_id)
        resp.status = falcon.HTTP_204

    async def on_get_report(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, funnel_id: str
    ) -> None:
        access = await self._guard.read(req)
        self._check_id(funnel_id)
        params = single_params(req)
        params.pop("site", None)  # checked by the guard
        async with open_funnels(self._settings) as registry:
            funnel = await registry.get(access.site_id, funnel_id)
        resp.media = await run_report(
            self._store,
            funnel_report(funnel),
            params,
            site_id=access.site_id,
            max_groups=self._settings.query_max_groups,
            typed=self._typed,
        )
