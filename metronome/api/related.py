"""``GET /items/{id}/related`` (and ``/items/related?id=...`` for ids with a '/'): the
items most associated with an item (:mod:`metronome.recommend.related`). Needs a key with
the ``query`` scope once sites exist; counts the caller's site only."""

from __future__ import annotations

import falcon.asgi

from metronome.errors import InvalidParameter
from metronome.recommend.related import parse_related, related_items
from metronome.store.base import Store

from .body import single_params
from .guard import Guard

__all__ = ["Related"]


class Related:
    def __init__(self, store: Store, guard: Guard) -> None:
        self._store = store
        self._guard = guard

    async def _answer(
        self, item_id: str, req: falcon.asgi.Request, resp: falcon.asgi.Response
    ) -> None:
        access = await self._guard.read(req)
        params = {k: v for k, v in single_params(req).items() if k not in ("id", "site")}
        request = parse_related(item_id, params)
        resp.media = await related_items(self._store, request, site_id=access.site_id)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        item_id = req.get_param("id")
        if not item_id or isinstance(item_id, list):
            raise InvalidParameter(
                "give the item as /items/{id}/related or /items/related?id=...", parameter="id"
            )
        await self._answer(item_id, req, resp)

    async def on_get_item(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, item_id: str
    ) -> None:
        await self._answer(item_id, req, resp)
