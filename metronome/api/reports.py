"""``GET /reports`` (what there is) and ``GET /reports/{name}`` (one built-in report)."""

from __future__ import annotations

import falcon.asgi

from metronome.config import Settings
from metronome.events.typed import EventSchemas
from metronome.reports.named import REPORTS, find_report, run_report
from metronome.store.base import Store

from .body import single_params
from .guard import Guard

__all__ = ["Reports"]


class Reports:
    def __init__(self, settings: Settings, store: Store, guard: Guard) -> None:
        self._settings = settings
        self._store = store
        self._guard = guard
        self._typed = EventSchemas.from_config(settings.event_schemas).kinds

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {
            "reports": [
                {"name": r.name, "description": r.description, "parameters": r.all_parameters}
                for r in REPORTS.values()
            ]
        }

    async def on_get_named(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        known = REPORTS.get(name)
        access = await self._guard.read(req, public_ok=known is not None and known.public)
        report = find_report(name)
        params = single_params(req)
        params.pop("site", None)  # checked by the guard
        resp.media = await run_report(
            self._store,
            report,
            params,
            site_id=access.site_id,
            max_groups=self._settings.query_max_groups,
            typed=self._typed,
        )
