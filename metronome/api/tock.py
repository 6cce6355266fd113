"""``GET /tock/{id}`` (and ``/tock/{id}.json``, ``/tock?id=...``): one item's report.

Needs a key with the ``query`` scope, except for a site with public item reports
(``?site=<site id>``); the report only ever counts the caller's site.
"""

from __future__ import annotations

import falcon.asgi

from metronome.api.guard import Guard
from metronome.errors import InvalidParameter
from metronome.reports.tock import parse_tock_query, shape_tock, tock_spec
from metronome.store.base import Store

from .body import single_params

__all__ = ["Tock"]


class Tock:
    def __init__(self, store: Store, guard: Guard) -> None:
        self._store = store
        self._guard = guard

    async def _answer(
        self, item_id: str, req: falcon.asgi.Request, resp: falcon.asgi.Response
    ) -> None:
        access = await self._guard.read(req, public_ok=True)
        params = {k: v for k, v in single_params(req).items() if k not in ("id", "site")}
        query = parse_tock_query(item_id, params)
        result = await self._store.report(tock_spec(query, access.site_filter))
        resp.media = shape_tock(query, result)

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        item_id = req.get_param("id")
        if not item_id or isinstance(item_id, list):
            raise InvalidParameter("give the item as /tock/{id} or /tock?id=...", parameter="id")
        await self._answer(item_id, req, resp)

    async def on_get_item(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, item_id: str
    ) -> None:
        if item_id.endswith(".json") and len(item_id) > len(".json"):
            item_id = item_id[: -len(".json")]
        await self._answer(item_id, req, resp)
