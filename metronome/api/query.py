"""``POST /query``: any question as one JSON request (see :mod:`metronome.reports.query`)."""

from __future__ import annotations

import falcon.asgi

from metronome.config import Settings
from metronome.reports.engine import run_query
from metronome.reports.query import parse_query
from metronome.store.base import Store

from .body import decode_json, read_body, require_content_type

__all__ = ["QueryResource"]

MAX_QUERY_BYTES = 65_536


class QueryResource:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        require_content_type(req, ("application/json",))
        body = decode_json(await read_body(req, MAX_QUERY_BYTES), "the query")
        query = parse_query(body)
        resp.media = await run_query(self._store, query,
                                     max_groups=self._settings.query_max_groups)
