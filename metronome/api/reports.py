"""``GET /reports`` (what there is) and ``GET /reports/{name}`` (one built-in report)."""

from __future__ import annotations

from typing import Any

import falcon.asgi

from metronome.config import Settings
from metronome.errors import InvalidParameter, NotFound
from metronome.reports.engine import run_query
from metronome.reports.named import COMMON_PARAMETERS, REPORTS, report_query
from metronome.reports.query import parse_query
from metronome.reports.tock import parse_tock_query, shape_tock, tock_spec
from metronome.store.base import Store

from .body import single_params
from .guard import Guard
from .query import for_site

__all__ = ["Reports"]

TOCK_PARAMETERS = {
    "id": "the item (required)",
    "from": "start: a date, ISO 8601 or epoch ms (default: 30 days ago)",
    "to": "end: a date (whole day included), ISO 8601 or epoch ms",
    "tz": "IANA time zone; default UTC",
    "interval": "hour, day (default), week or month",
    "top": "most downloads formats and referrers, 1 to 1000 (default 10)",
    "bots": "exclude (default) or include",
    "sources": "ticks, logs or both (default)",
}


class Reports:
    def __init__(self, settings: Settings, store: Store, guard: Guard) -> None:
        self._settings = settings
        self._store = store
        self._guard = guard

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        listing: list[dict[str, Any]] = [
            {
                "name": r.name,
                "description": r.description,
                "parameters": {**COMMON_PARAMETERS, **r.parameters},
            }
            for r in REPORTS.values()
        ]
        listing.append(
            {
                "name": "tock",
                "description": "One item's views per time bucket,"
                " downloads by format and referrers (the /tock report)",
                "parameters": TOCK_PARAMETERS,
            }
        )
        resp.media = {"reports": listing}

    async def on_get_named(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str
    ) -> None:
        access = await self._guard.read(req, public_ok=name == "tock")
        params = single_params(req)
        params.pop("site", None)  # checked by the guard
        if name == "tock":
            item_id = params.pop("id", None)
            if not item_id:
                raise InvalidParameter("give the item as ?id=...", parameter="id")
            query = parse_tock_query(item_id, params)
            result = await self._store.report(tock_spec(query, access.site_filter))
            resp.media = shape_tock(query, result)
            return
        report = REPORTS.get(name)
        if report is None:
            raise NotFound(
                f"no report {name!r}; GET /reports lists them: {', '.join([*REPORTS, 'tock'])}"
            )
        query = for_site(parse_query(report_query(report, params)), access.site_filter)
        answer = await run_query(self._store, query, max_groups=self._settings.query_max_groups)
        resp.media = {"report": name, **answer}
