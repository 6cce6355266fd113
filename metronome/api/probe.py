"""``POST /probe/results``: remote probes' monitor results, with a key of the ``probe`` scope.

Checked cheapest first, before the body is read: the key (:meth:`Guard.probe`: 401
without one, 403 for a key without the ``probe`` or ``admin`` scope), the media type and
the declared size (``METRONOME_MAX_BATCH_BYTES``, 413). Then the results are checked
whole (:func:`metronome.events.monitoring.parse_probe_results`: a 400 names the first
wrong field) and spooled like ticks; the answer is 200 once they are safe on disk. A
result sent again is stored once (its ids are deterministic), so a probe that did not
hear the answer simply sends it again.
"""

from __future__ import annotations

import time

import falcon
import falcon.asgi

from metronome.config import Settings
from metronome.events.monitoring import parse_probe_results
from metronome.pipeline import Pipeline

from .body import Deadlines, decode_json, read_body, require_content_type
from .guard import Guard

__all__ = ["ProbeResults"]


class ProbeResults:
    def __init__(self, settings: Settings, pipeline: Pipeline, guard: Guard) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._guard = guard
        self._deadlines = Deadlines.of(settings.body_timeout_s)

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """A probe's batch -> 200 ``{"stored": <results>, "documents": <points>}``."""
        access = await self._guard.probe(req)
        require_content_type(req, ("application/json",))
        body = decode_json(
            await read_body(req, self._settings.max_batch_bytes, self._deadlines),
            "the probe results",
        )
        documents = parse_probe_results(body, access.site_id, int(time.time() * 1000))
        await self._pipeline.ingest(documents)
        resp.status = falcon.HTTP_200
        resp.media = {
            "stored": len(body["results"]),
            "documents": len(documents),
        }
