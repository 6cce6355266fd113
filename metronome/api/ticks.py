"""``POST /tick`` (one tick), ``POST /ticks`` (a JSON array or NDJSON of ticks) and
``GET /tick.gif`` (one tick from query parameters, answered with a 1x1 image).

Who may send, and to which site, is :mod:`metronome.api.guard`'s call: the site comes
from the key, or from ``?site=`` / the ticks' ``site`` field for browser pages, and is
stamped on every document as ``site.id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi
import orjson

from metronome.config import Settings
from metronome.errors import (
    BadRequest,
    InvalidField,
    InvalidJSON,
    LimitExceeded,
    MetronomeError,
    StoreRefused,
    StoreUnavailable,
)
from metronome.events.document import (
    FORWARDED_HEADER,
    SENDER_ID,
    Document,
    forwarded_event_id,
    with_event_id,
)
from metronome.events.enrich import client_address, flag_referrer_spam, stored_address
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.events.typed import EventSchemas
from metronome.events.visitor import VisitorIds
from metronome.pipeline import Pipeline, metrics

from .body import Deadlines, decode_json, read_body, require_content_type, single_params
from .guard import Access, Guard, named_sites

__all__ = [
    "PIXEL_GIF",
    "BatchLines",
    "Pixel",
    "Tick",
    "Ticks",
    "count_refused",
]

_ACCEPTED_TICK = metrics.ACCEPTED.labels("/tick")
_ACCEPTED_TICKS = metrics.ACCEPTED.labels("/ticks")
_ACCEPTED_PIXEL = metrics.ACCEPTED.labels("/tick.gif")

# a 1x1 transparent GIF89a (one-colour table, graphic control extension marks it transparent)
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00"
    b"\x02\x02D\x01\x00;"
)

JSON_TYPES = ("application/json", "text/plain")  # text/plain: navigator.sendBeacon
BATCH_TYPES = (*JSON_TYPES, "application/x-ndjson", "application/jsonl")


class _TickResource:
    def __init__(self, settings: Settings, pipeline: Pipeline, guard: Guard) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._guard = guard
        self._limits = Limits(
            settings.max_params, settings.max_key_length, settings.max_value_length
        )
        self._deadlines = Deadlines.of(settings.body_timeout_s)
        self._visitors = VisitorIds(settings.data_dir)
        self._schemas = EventSchemas.from_config(settings.event_schemas)

    def _client_ip(self, req: falcon.asgi.Request) -> str | None:
        return client_address(
            req.remote_addr, req.get_header("X-Forwarded-For"), self._settings.trusted_proxies
        )

    async def _info(
        self, req: falcon.asgi.Request, client_ip: str | None, access: Access
    ) -> RequestInfo:
        """The request's facts for its ticks: the visitor id is per site and per day, and
        the address is kept only as the site and ``METRONOME_CLIENT_IP`` allow."""
        received_ms = int(time.time() * 1000)
        user_agent = req.user_agent
        site_id = access.site_id
        policy = (
            self._settings.client_ip
            if access.via == "open"
            else await self._address_policy(site_id)
        )
        return RequestInfo(
            received_ms=received_ms,
            client_ip=client_ip,
            user_agent=user_agent,
            site_id=site_id,
            visitor_id=self._visitors.visitor_id(received_ms, client_ip, user_agent, site_id),
            stored_ip=stored_address(client_ip, policy),
        )

    async def _address_policy(self, site_id: str) -> str:
        """``METRONOME_CLIENT_IP`` with no sites; with sites, ``drop`` unless the site opted
        in (``--store-ip``), and then that setting (``truncate`` if it says ``drop``)."""
        policy = self._settings.client_ip
        snapshot = await self._guard.snapshot()
        if snapshot.open:
            return policy
        site = snapshot.sites.get(site_id)
        if site is None or not site.store_ip:
            return "drop"
        return "truncate" if policy == "drop" else policy

    async def _spool_one(
        self, raw: Any, req: falcon.asgi.Request, client_ip: str | None, access: Access
    ) -> str:
        """Build one tick and spool it; its event id once it is safe on disk."""
        document = self._build(raw, await self._info(req, client_ip, access))
        (outcome,) = await self._pipeline.ingest([document])
        if not outcome.ok:
            if outcome.retriable:
                raise StoreUnavailable(f"the store could not take the tick: {outcome.reason}")
            raise StoreRefused(f"the store refused the tick: {outcome.reason}")
        return outcome.id

    def _build(self, raw: Any, info: RequestInfo) -> Document:
        """The tick's document, with referrer spam flagged."""
        document = build_tick(raw, info, self._limits, self._schemas)
        flag_referrer_spam(document.source, self._settings.referrer_blocklist)
        return document


class Tick(_TickResource):
    """``POST /tick``: :meth:`accept` is the whole route. Falcon calls it through
    :meth:`on_post` (for ``/tick/``), and :mod:`metronome.api.fastpath` directly for the
    busy ``/tick``; both render its answer and errors through :mod:`metronome.api.render`."""

    on_accepted: Callable[[], None] = _ACCEPTED_TICK.inc  # the fast path counts in batches

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        event_id = await self.accept(req)
        resp.status = falcon.HTTP_202
        resp.media = {"id": event_id}

    async def accept(self, req: Any) -> str:
        """Check, build and spool the request's tick; its event id once it is safe on
        disk. ``req`` is a Falcon request or the fast path's equivalent
        (:class:`~metronome.api.body.BodyRequest`, and what the guard reads)."""
        try:
            require_content_type(req, JSON_TYPES)
            client_ip = self._client_ip(req)
            await self._guard.precheck_ingest(req, client_ip)
            raw = decode_json(await read_body(req, self._settings.max_body_bytes, self._deadlines))
            access = await self._guard.ingest(req, named_sites(req, (raw,)), client_ip, 1)
            event_id = await self._spool_one(raw, req, client_ip, access)
        except Exception as exc:
            count_refused(exc, 1)
            raise
        self.on_accepted()
        return event_id


class Pixel(_TickResource):
    """``GET /tick.gif?id=...``: the tick's fields as query parameters, for e-mails and
    ``<noscript>``. ``url`` defaults to the ``Referer`` header (the page showing the image).
    Answers a never-cached transparent 1x1 GIF; bad input gets the usual 4xx JSON error.
    The site is ``?site=``; without a key the guard checks the ``Origin`` if one is sent,
    else the ``Referer``'s origin (browsers send no ``Origin`` for images); a refused page
    gets ``403 origin_forbidden`` as JSON, like ``POST /tick``, and nothing is stored.
    ``HEAD`` answers the image's headers and records nothing (link checkers and
    prefetchers send it)."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        client_ip = self._client_ip(req)
        try:
            raw = {k: v for k, v in single_params(req).items() if k not in ("site", "key")}
            if "url" not in raw and req.referer:
                raw["url"] = req.referer
            access = await self._guard.ingest(req, named_sites(req), client_ip, 1, image=True)
            await self._spool_one(raw, req, client_ip, access)
        except Exception as exc:
            count_refused(exc, 1)
            raise
        _ACCEPTED_PIXEL.inc()
        _image(resp)

    async def on_head(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """The image's headers (the server sends no body for ``HEAD``); no tick."""
        _image(resp)


def _image(resp: falcon.asgi.Response) -> None:
    """Answer the never-cached transparent pixel."""
    resp.content_type = "image/gif"
    resp.cache_control = ["no-store", "max-age=0"]
    resp.data = PIXEL_GIF


def _too_many(limit: int, seen: str) -> LimitExceeded:
    return LimitExceeded(
        f"a batch may hold at most {limit} ticks; this one has {seen}", limit=limit
    )


class BatchLines:
    """Counts an NDJSON body's ticks (its non-blank lines) while it arrives, and refuses
    it (``LimitExceeded``) with the first chunk that takes it past ``limit``: the rest of
    the body is never read. A JSON array (``[`` first) is counted once decoded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0  # the non-blank lines that ended so far
        self._ndjson: bool | None = None
        self._open_line = False  # the last chunk ended inside a non-blank line

    def feed(self, chunk: bytes) -> None:
        if self._ndjson is None:
            head = chunk.lstrip()
            if not head:
                return
            self._ndjson = not head.startswith(b"[")
        if not self._ndjson:
            return
        *ended, tail = chunk.split(b"\n")
        for line in ended:
            if self._open_line or line.strip():
                self.count += 1
            self._open_line = False
        self._open_line = self._open_line or bool(tail.strip())
        if self.seen > self.limit:
            raise _too_many(self.limit, f"at least {self.seen}")

    @property
    def seen(self) -> int:
        """The ticks seen so far (a line still arriving counts)."""
        return self.count + self._open_line


def _split_batch(data: bytes, limit: int) -> list[Any]:
    """A JSON array, or NDJSON (one tick per line); bad NDJSON lines become errors in
    place. Past ``limit`` ticks: ``LimitExceeded`` at once, before the rest is decoded."""
    stripped = data.strip()
    if not stripped:
        raise InvalidJSON("the body is empty; send a JSON array or NDJSON of ticks")
    if stripped.startswith(b"["):
        items = decode_json(stripped)
        if not isinstance(items, list):
            raise InvalidJSON("the body must be a JSON array of ticks")
        if len(items) > limit:
            raise _too_many(limit, str(len(items)))
        return items
    items = []
    for number, line in enumerate(stripped.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(items) == limit:
            raise _too_many(limit, f"more than {limit}")
        try:
            items.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            items.append(InvalidJSON(f"line {number} is not valid JSON: {exc}"))
    return items


class Ticks(_TickResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        carried = 1  # events the request holds, once its body is read (1 until then)
        try:
            require_content_type(req, BATCH_TYPES)
            client_ip = self._client_ip(req)
            await self._guard.precheck_ingest(req, client_ip)
            lines = BatchLines(self._settings.max_batch_ticks)
            try:
                body = await read_body(
                    req, self._settings.max_batch_bytes, self._deadlines, on_chunk=lines.feed
                )
                items = _split_batch(body, self._settings.max_batch_ticks)
            except LimitExceeded:
                carried = max(lines.seen, self._settings.max_batch_ticks + 1)
                await self._guard.charge_refused(req, client_ip, carried)
                raise
            carried = max(len(items), 1)
            if not items:
                raise BadRequest("the batch holds no ticks")
            access = await self._guard.ingest(req, named_sites(req, items), client_ip, len(items))
            info = await self._info(req, client_ip, access)
        except Exception as exc:
            count_refused(exc, carried)
            raise
        ids: list[str | None] = [None] * len(items)
        rejected: list[dict[str, Any]] = []
        documents: list[Document] = []
        positions: list[int] = []
        forwarded = req.get_header(FORWARDED_HEADER) == "1"
        for index, item in enumerate(items):
            try:
                if isinstance(item, MetronomeError):
                    raise item
                if forwarded:
                    documents.append(self._build_forwarded(item, info))
                else:
                    documents.append(self._build(item, info))
                positions.append(index)
            except BadRequest as exc:
                rejected.append({"index": index, **exc.to_dict()})
                metrics.REJECTED.labels(exc.code).inc()
        try:
            outcomes = await self._pipeline.ingest(documents)
        except MetronomeError as exc:
            metrics.REJECTED.labels(exc.code).inc(len(documents))
            raise
        accepted = 0
        for index, outcome in zip(positions, outcomes, strict=True):
            if outcome.ok:
                ids[index] = outcome.id
                accepted += 1
            else:
                code = "store_unavailable" if outcome.retriable else "store_refused"
                rejected.append({"index": index, "error": code, "message": outcome.reason})
                metrics.REJECTED.labels(code).inc()
        rejected.sort(key=lambda r: r["index"])
        _ACCEPTED_TICKS.inc(accepted)
        resp.status = falcon.HTTP_202
        resp.media = {"accepted": accepted, "rejected": rejected, "ids": ids}

    def _build_forwarded(self, raw: Any, info: RequestInfo) -> Document:
        """A tick another Metronome forwarded: stored under an id made from its sender's
        ``event_id`` (:func:`~metronome.events.document.forwarded_event_id`)."""
        if not isinstance(raw, dict):
            raise InvalidField("a tick must be a JSON object", field="(tick)")
        sender_id = raw.get("event_id")
        if not isinstance(sender_id, str) or not SENDER_ID.match(sender_id):
            raise InvalidField(
                f"with {FORWARDED_HEADER}: 1, each tick's 'event_id' must be the sender's"
                " event id (32 lowercase hex digits)",
                field="event_id",
            )
        document = self._build({k: v for k, v in raw.items() if k != "event_id"}, info)
        return with_event_id(document, forwarded_event_id(info.site_id, sender_id))


def count_refused(exc: Exception, events: int) -> None:
    """Count a refused request's ``events`` in ``metronome_events_rejected_total`` under
    the error's code (Falcon's own refusals, such as a malformed ``Content-Length``, under
    ``bad_request``; an unexpected failure under ``internal_error``). A request refused
    before its body is read counts as one event."""
    if isinstance(exc, MetronomeError):
        reason = exc.code
    elif isinstance(exc, falcon.HTTPError) and exc.status_code < 500:
        reason = "bad_request"
    else:
        reason = "internal_error"
    metrics.REJECTED.labels(reason).inc(events)
