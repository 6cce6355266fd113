"""Routing Fluentd forward-protocol records into the spool (runs in ``metronome worker``).

Tags: ``*.tick`` records are ticks (as ``POST /tick`` takes them; the event time is the
default ``ts``; the input is trusted, so a record's ``site`` field picks its site, else
``METRONOME_LOG_SITE``); ``*.access`` records are access-log lines (``message`` or ``log`` holds
the raw line, parsed with ``METRONOME_LOG_FORMAT``). Other tags are counted and dropped.
A frame is acknowledged only after its documents are durable in the spool, so Fluentd
resends it after any failure; ids of access lines come from their content, time and
position in the frame, so a resent chunk is stored once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from metronome.config import Settings
from metronome.errors import BadRequest
from metronome.events.document import Document
from metronome.events.fields import SITE_ID_PATTERN
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.logs.ingest import LineConverter
from metronome.logs.parse import Reject
from metronome.pipeline import metrics
from metronome.pipeline.records import encode_many
from metronome.pipeline.spool import SpoolWriter

__all__ = ["ForwardRouter"]

log = logging.getLogger("metronome.forward")


class ForwardRouter:
    """The forward server's handler: records to documents to the spool."""

    def __init__(self, settings: Settings, writer: SpoolWriter) -> None:
        self._writer = writer
        self._limits = Limits(
            settings.max_params, settings.max_key_length, settings.max_value_length
        )
        self._converter = LineConverter(settings)
        self._site = settings.log_site

    async def __call__(self, tag: str, entries: list[tuple[int, dict[str, Any]]]) -> None:
        received_ms = int(time.time() * 1000)
        documents: list[Document] = []
        kind = tag.rsplit(".", 1)[-1]
        seen: dict[tuple[int, str], int] = {}
        for time_ms, record in entries:
            if kind == "tick":
                tick = record if "ts" in record else {**record, "ts": time_ms}
                site = record.get("site") or self._site
                if not isinstance(site, str) or not SITE_ID_PATTERN.match(site):
                    metrics.REJECTED.labels("unknown_site").inc()
                    log.warning(
                        "forward_tick_rejected tag=%s error=bad site id %r", tag, str(site)[:64]
                    )
                    continue
                try:
                    documents.append(
                        build_tick(tick, RequestInfo(received_ms, None, None, site), self._limits)
                    )
                except BadRequest as exc:
                    metrics.REJECTED.labels(exc.code).inc()
                    log.warning("forward_tick_rejected tag=%s error=%s", tag, exc.message)
            elif kind == "access":
                line = record.get("message") or record.get("log")
                if not isinstance(line, str):
                    metrics.REJECTED.labels("no_message").inc()
                    continue
                parsed = self._converter.parse(line)
                if isinstance(parsed, Reject):
                    self._converter.reject(parsed, line, f"forward:{tag}", None)
                    metrics.REJECTED.labels(parsed.reason).inc()
                    continue
                n = seen.get((parsed.timestamp_ms, line), 0)
                seen[(parsed.timestamp_ms, line)] = n + 1
                documents.append(self._converter.document(parsed, line, n, received_ms))
            else:
                metrics.REJECTED.labels("unknown_tag").inc()
        if documents:
            await self._writer.append(encode_many(documents))  # raises: no ack, resend
            metrics.ACCEPTED.labels("forward").inc(len(documents))

    def close(self) -> None:
        self._converter.close()
