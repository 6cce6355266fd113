"""Routing Fluentd forward-protocol records into the spool (runs in ``metronome worker``).

Tags: ``*.tick`` records are ticks (as ``POST /tick`` takes them; the event time is the
default ``ts``; the input is trusted, so a record's ``site`` field picks its site, else
``METRONOME_LOG_SITE``); ``*.access`` records are access-log lines (``message`` or ``log`` holds
the raw line, parsed with ``METRONOME_LOG_FORMAT``). Other tags are counted and dropped.

A tick's site must exist (``metronome sites list``; with no sites at all, only
``default``), as for ``POST /tick``: a tick for another site would be stored where no
report reaches it, so it is refused (logged, and counted in
``metronome_events_rejected_total{reason="unknown_site"}``). The sites are read from the
process's cached copy (:mod:`metronome.sites.cache`); while they cannot be read at all,
frames are not acknowledged and Fluentd sends them again.

A frame is acknowledged only after its documents are durable in the spool, so Fluentd
resends it after any failure. Event ids come from the frame's ``chunk`` id (Fluentd's id
of the buffer chunk, the same each time the chunk is sent) and the entry's position in
the frame, with the event's time in front: a resent chunk is stored once, and identical
lines, in one chunk or in different chunks, are each stored. A frame without a chunk id
(fluent-logger, Fluentd without ``require_ack_response``) cannot be recognised when sent
again, and is not acknowledged either: its entries get fresh ids.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from typing import Any

from metronome.config import Settings
from metronome.errors import BadRequest
from metronome.events.document import Document
from metronome.events.fields import DEFAULT_SITE
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.events.typed import EventSchemas
from metronome.logs.ingest import LineConverter
from metronome.logs.parse import Reject
from metronome.pipeline import metrics
from metronome.pipeline.records import encode_many
from metronome.pipeline.spool import SpoolWriter
from metronome.sites.cache import RegistryCache
from metronome.sites.model import Snapshot
from metronome.sites.registry import open_registry

__all__ = ["ForwardRouter", "entry_event_id"]

log = logging.getLogger("metronome.forward")


def entry_event_id(timestamp_ms: int, frame: str, position: int) -> str:
    """The event id of the entry at ``position`` of a frame: 12 hex digits of its time in
    ms (ids sort by time) and 20 of SHA-256 of ``f"{frame}\\0{position}"``, as access-log
    lines' ids are made (:func:`metronome.logs.parse.build_log_document`)."""
    key = f"{frame}\0{position}".encode("utf-8", "surrogatepass")
    return f"{timestamp_ms & 0xFFFFFFFFFFFF:012x}" + hashlib.sha256(key).hexdigest()[:20]


def _site_exists(snapshot: Snapshot, site: str) -> bool:
    return site == DEFAULT_SITE if snapshot.open else site in snapshot.sites


class ForwardRouter:
    """The forward server's handler: records to documents to the spool. ``start`` loads
    the sites; ``close`` releases them."""

    def __init__(self, settings: Settings, writer: SpoolWriter) -> None:
        self._writer = writer
        self._limits = Limits(
            settings.max_params, settings.max_key_length, settings.max_value_length
        )
        self._converter = LineConverter(settings)
        self._schemas = EventSchemas.from_config(settings.event_schemas)
        self._site = settings.log_site
        self._sites = RegistryCache(
            open_registry(settings), settings.sites_cache_s, settings.data_dir
        )

    async def start(self) -> None:
        await self._sites.start()

    async def __call__(
        self, tag: str, entries: list[tuple[int, dict[str, Any]]], chunk: str | None
    ) -> None:
        received_ms = int(time.time() * 1000)
        documents: list[Document] = []
        kind = tag.rsplit(".", 1)[-1]
        # what the ids of this frame's entries are made of (with their position)
        frame = f"forward\0{tag}\0{chunk}" if chunk else f"forward\0{uuid.uuid4().hex}"
        snapshot = await self._sites.get() if kind == "tick" else None
        for position, (time_ms, record) in enumerate(entries):
            if snapshot is not None:
                tick = record if "ts" in record else {**record, "ts": time_ms}
                site = record.get("site") or self._site
                if not isinstance(site, str) or not _site_exists(snapshot, site):
                    metrics.REJECTED.labels("unknown_site").inc()
                    log.warning(
                        "forward_tick_rejected tag=%s error=no site %r", tag, str(site)[:64]
                    )
                    continue
                try:
                    document = build_tick(
                        tick,
                        RequestInfo(received_ms, None, None, site),
                        self._limits,
                        self._schemas,
                    )
                except BadRequest as exc:
                    metrics.REJECTED.labels(exc.code).inc()
                    log.warning("forward_tick_rejected tag=%s error=%s", tag, exc.message)
                    continue
                event_id = entry_event_id(document.timestamp_ms, frame, position)
                document.source["event"]["id"] = event_id  # built for this document alone
                documents.append(
                    Document(event_id, document.timestamp_ms, document.dataset, document.source)
                )
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
                documents.append(self._converter.document(parsed, frame, position, received_ms))
            else:
                metrics.REJECTED.labels("unknown_tag").inc()
        if documents:
            await self._writer.append(encode_many(documents))  # raises: no ack, resend
            metrics.ACCEPTED.labels("forward").inc(len(documents))

    async def close(self) -> None:
        self._converter.close()
        await self._sites.close()
