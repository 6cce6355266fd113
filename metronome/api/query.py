"""``POST /query``: any question as one JSON request (see :mod:`metronome.reports.query`)."""

from __future__ import annotations

import falcon.asgi

from metronome.config import Settings
from metronome.events.typed import EventSchemas
from metronome.reports.engine import run_query
from metronome.reports.query import for_site, parse_query
from metronome.store.base import Store

from .body import Deadlines, decode_json, read_body, require_content_type
from .guard import Guard

__all__ = ["QueryResource"]

MAX_QUERY_BYTES = 65_536


class QueryResource:
    """Needs a key with the ``query`` scope once sites exist; answers for its site only."""

    def __init__(self, settings: Settings, store: Store, guard: Guard) -> None:
        self._settings = settings
        self._store = store
        self._guard = guard
        self._deadlines = Deadlines.of(settings.body_timeout_s)
        self._typed = EventSchemas.from_config(settings.event_schemas).kinds

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self._guard.read(req)
        require_content_type(req, ("application/json",))
        body = decode_json(await read_body(req, MAX_QUERY_BYTES, self._deadlines), "the query")
        query = for_site(parse_query(body, typed=self._typed), access.site_id)
        resp.media = await run_query(self._store, query, max_groups=self._settings.query_max_groups)
