"""``GET /tock/{id}`` (and ``/tock/{id}.json``, ``/tock?id=...``): one item's report.

The named report ``tock`` (:mod:`metronome.reports.named`), at its own address. Needs a
key with the ``query`` scope, except for a site with public item reports
(``?site=<site id>``); the report only ever counts the caller's site.
"""

from __future__ import annotations

import falcon.asgi

from metronome.api.guard import Guard
from metronome.config import Settings
from metronome.errors import InvalidParameter
from metronome.reports.named import REPORTS, run_report
from metronome.store.base import Store

from .body import single_params

__all__ = ["Tock"]

_TOCK = REPORTS["tock"]


class Tock:
    def __init__(self, settings: Settings, store: Store, guard: Guard) -> None:
        self._settings = settings
        self._store = store
        self._guard = guard

    async def _answer(
        self, item_id: str, req: falcon.asgi.Request, resp: falcon.asgi.Response
    ) -> None:
        access = await self._guard.read(req, public_ok=_TOCK.public)
        params = {k: v for k, v in single_params(req).items() if k not in ("id", "site")}
        resp.media = await run_report(
            self._store,
            _TOCK,
            {**params, "id": item_id},
            site_id=access.site_id,
            max_groups=self._settings.query_max_groups,
        )

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
