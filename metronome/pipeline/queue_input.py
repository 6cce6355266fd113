"""Consuming RabbitMQ (AMQP 0-9-1) queues into the spool (runs in ``metronome worker``).

Each ``[[queues]]`` table of the configuration file (:func:`parse_queues`) is one consumer
thread (:class:`QueueConsumer`) with its own connection (pika's ``BlockingConnection``)
and ``basic.qos`` prefetch. What a message holds is the queue's ``kind``:

- ``tick``: one tick, as ``POST /tick`` takes it;
- ``ticks``: a JSON array or NDJSON of ticks, as ``POST /ticks`` takes them (what the
  Python client publishes);
- ``events``: like ``ticks``, and each tick must be a typed event (its ``event`` declared
  for its site in ``[event_schemas]``);
- ``points``: telemetry points, ``{"metrics": [...]}`` or the bare array, as
  ``POST /v1/metrics`` takes them, for the queue's ``app``;
- ``lines``: access-log lines (``METRONOME_LOG_FORMAT``), one per line of the body.

The site of a message is the queue's ``site`` (checked against the sites), or, with
``site_header``, the site of the key that header of the message carries: a key with the
``ingest`` scope, checked against the sites and keys as ``POST /tick`` checks a bearer key.

A message is acknowledged only once its documents are durable in the spool. A message
that can never be accepted (not JSON, an unknown site or key, an invalid tick, more than
``METRONOME_MAX_BATCH_TICKS``) is dead-lettered: republished, with the reason in the
``x-metronome-reason`` header, to the queue's ``dead_letter_exchange`` (publisher
confirms; the original is acknowledged only after the broker confirmed the copy), or,
with no ``dead_letter_exchange`` configured, rejected (``requeue=False``) to whatever
dead-letter exchange the queue's own arguments name. Its valid events are stored all the
same (``x-metronome-stored`` says how many). Access-log lines that do not parse go to the
reject file, as with every other access-log input.

Event ids come from the message's ``message_id`` (or, without one, SHA-256 of its body)
and the event's position in it, with the event's time in front
(:func:`~metronome.pipeline.forward_input.entry_event_id`): a message delivered again
(after a crash of Metronome or RabbitMQ, before its acknowledgement arrived) stores
nothing twice. Events without a time of their own take the message's ``timestamp``
property, else the time they are received (then a redelivery is recognised only if it
keeps the same time: publishers should set ``timestamp``, as the Python client does).

While the spool is full the consumer cancels its subscription and returns the messages it
holds unacknowledged to the queue (``basic.nack`` with ``requeue``), and subscribes again
once there is room; when RabbitMQ is unreachable it reconnects with capped exponential
backoff and jitter. Figures per queue go to ``/metrics`` (``metronome_queue_*``) and to
``<data dir>/queues/<name>.json``, which ``metronome status`` shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from metronome.config import Settings, masked_url
from metronome.errors import BadRequest, MetronomeError, SpoolFull, StoreUnavailable
from metronome.events import fields as F
from metronome.events.document import Document
from metronome.events.point import PointLimits, parse_metric, point_document
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.events.typed import EventSchemas
from metronome.files import open_private, private_dir
from metronome.logs.ingest import LineConverter
from metronome.logs.parse import Reject
from metronome.pipeline import metrics
from metronome.pipeline.forward_input import entry_event_id
from metronome.pipeline.queue_spec import KINDS, QueueSpec, parse_queues
from metronome.pipeline.records import encode_many
from metronome.pipeline.spool import SpoolWriter, spool_bytes, spool_dir
from metronome.sites.cache import RegistryCache
from metronome.sites.model import Snapshot
from metronome.sites.registry import open_registry

__all__ = [
    "KINDS",
    "QueueConsumer",
    "QueueMessage",
    "QueueRouter",
    "QueueSpec",
    "Verdict",
    "parse_queues",
    "queue_status_lines",
    "REASON_HEADER",
    "STORED_HEADER",
]

log = logging.getLogger("metronome.queues")

REASON_HEADER = "x-metronome-reason"
"""The header a dead-lettered message carries: why it was not accepted."""
STORED_HEADER = "x-metronome-stored"
"""The header a dead-lettered message carries: how many of its events were stored."""
QUEUE_HEADER = "x-metronome-queue"
STATE_DIR = "queues"
_MAX_REASON_CHARS = 1000
_MAX_FUTURE_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """What the router needs of one delivery."""

    body: bytes
    message_id: str | None = None
    timestamp_s: int | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to answer RabbitMQ for one message: ``ack`` (stored), ``dead`` (dead-letter it
    with ``reason``; ``stored`` of its events are in the spool), ``retry`` (return it to
    the queue: a passing failure) or ``pause`` (the spool is full: return it and wait)."""

    action: str
    stored: int = 0
    reason: str | None = None


class _DeadLetter(Exception):
    pass


def _decoded(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _DeadLetter(f"the body is not valid JSON: {exc}") from None


def _tick_list(body: bytes, limit: int) -> list[Any]:
    """A JSON array or NDJSON of ticks (as ``POST /ticks``); at most ``limit``."""
    stripped = body.strip()
    if not stripped:
        raise _DeadLetter("the body is empty; send a JSON array or NDJSON of ticks")
    if stripped.startswith(b"["):
        items = _decoded(stripped)
    else:
        items = []
        for number, line in enumerate(stripped.split(b"\n"), start=1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise _DeadLetter(f"line {number} is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise _DeadLetter("the body must be a JSON array or NDJSON of ticks")
    if len(items) > limit:
        raise _DeadLetter(
            f"a message may hold at most {limit} ticks (METRONOME_MAX_BATCH_TICKS); this one"
            f" has {len(items)}"
        )
    return items


def _header_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip() if isinstance(value, str) else None


class QueueRouter:
    """Messages to documents to the spool, for every queue of this worker. ``start`` loads
    the sites; ``close`` releases them."""

    def __init__(self, settings: Settings, writer: SpoolWriter) -> None:
        self._writer = writer
        self._limits = Limits(
            settings.max_params, settings.max_key_length, settings.max_value_length
        )
        self._max_ticks = settings.max_batch_ticks
        self._max_line = settings.max_line_bytes
        self._max_body = settings.max_batch_bytes
        self._schemas = EventSchemas.from_config(settings.event_schemas)
        # access-log lines: the format is compiled (and checked) before anything is consumed
        needs_lines = any(s.kind == "lines" for s in parse_queues(settings.queues, settings))
        self._converter = LineConverter(settings) if needs_lines else None
        self._sites = RegistryCache(
            open_registry(settings), settings.sites_cache_s, settings.data_dir
        )

    async def start(self) -> None:
        await self._sites.start()

    async def close(self) -> None:
        if self._converter is not None:
            self._converter.close()
        await self._sites.close()

    def _site(self, spec: QueueSpec, message: QueueMessage, snapshot: Snapshot) -> str:
        if spec.site_header is None:
            if snapshot.open and spec.site != F.DEFAULT_SITE:
                raise _DeadLetter(f"there is no site {spec.site!r} (no site exists yet)")
            if not snapshot.open and spec.site not in snapshot.sites:
                raise _DeadLetter(f"there is no site {spec.site!r}")
            return spec.site
        if snapshot.open:
            return F.DEFAULT_SITE  # no site yet: nothing needs a key, as over HTTP
        headers = {str(k).lower(): v for k, v in message.headers.items()}
        secret = _header_text(headers.get(spec.site_header))
        if not secret:
            raise _DeadLetter(f"the message has no {spec.site_header} header (a site's key)")
        key = snapshot.key_for(secret)
        if key is None:
            raise _DeadLetter(f"the key in {spec.site_header} is unknown or revoked")
        if not key.allows("ingest"):
            raise _DeadLetter(f"the key in {spec.site_header} lacks the ingest scope")
        if key.site_id is None:
            raise _DeadLetter(f"the key in {spec.site_header} covers every site: use a site's key")
        if key.site_id not in snapshot.sites:
            raise _DeadLetter(f"there is no site {key.site_id!r}")
        return key.site_id

    def _ticks(
        self, spec: QueueSpec, items: list[Any], site: str, received_ms: int, frame: str
    ) -> tuple[list[Document], list[str]]:
        documents: list[Document] = []
        refused: list[str] = []
        info = RequestInfo(received_ms, None, None, site)
        for position, raw in enumerate(items):
            try:
                if isinstance(raw, dict) and raw.get("site") not in (None, site):
                    raise BadRequest(
                        f"it names site {str(raw['site'])[:64]!r}; this message's site is {site!r}"
                    )
                if isinstance(raw, dict) and "ts" not in raw:
                    raw = {**raw, "ts": received_ms}  # the message's time: ids stay the same
                document = build_tick(raw, info, self._limits, self._schemas)
                if spec.kind == "events":
                    action = document.source["event"]["action"]
                    if self._schemas.find(site, action) is None:
                        raise BadRequest(
                            f"event {action!r} is not a typed event of site {site!r}"
                            " ([event_schemas])"
                        )
            except BadRequest as exc:
                refused.append(f"tick {position}: {exc.message}")
                metrics.REJECTED.labels(exc.code).inc()
                continue
            event_id = entry_event_id(document.timestamp_ms, frame, position)
            document.source["event"]["id"] = event_id  # built for this document alone
            documents.append(
                Document(event_id, document.timestamp_ms, document.dataset, document.source)
            )
        return documents, refused

    def _points(
        self, spec: QueueSpec, body: Any, site: str, received_ms: int, frame: str
    ) -> tuple[list[Document], list[str]]:
        # the shapes POST /v1/metrics takes (telemetry.wire.metric_points)
        items = body.get("metrics") if isinstance(body, dict) and set(body) <= {"metrics"} else body
        if not isinstance(items, list):
            raise _DeadLetter('send {"metrics": [{"name", "tags", "fields"}, ...]} or the array')
        limits = PointLimits()
        if len(items) > limits.max_metrics:
            raise _DeadLetter(
                f"a message may hold at most {limits.max_metrics} metrics; this one has"
                f" {len(items)}"
            )
        documents: list[Document] = []
        refused: list[str] = []
        for index, raw in enumerate(items):
            point, why = parse_metric(
                raw, index, app=spec.app, timestamp_ms=received_ms, limits=limits, site_id=site
            )
            refused.extend(f"metric {r.index}: {r.reason}" for r in why)
            if point is not None:
                documents.append(
                    point_document(point, received_ms=received_ms, sender=f"{frame}\0{index}")
                )
        return documents, refused

    def _lines(
        self, spec: QueueSpec, body: bytes, site: str, received_ms: int, frame: str
    ) -> list[Document]:
        converter = self._converter
        assert converter is not None  # made at start for a worker with a lines queue
        documents: list[Document] = []
        text = body.decode("utf-8", "replace")
        for position, line in enumerate(text.split("\n")):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            if len(line.encode()) > self._max_line:
                converter.too_long(f"amqp:{spec.queue}", position, f"{frame}\0{position}")
                metrics.REJECTED.labels("line_too_long").inc()
                continue
            parsed = converter.parse(line)
            if isinstance(parsed, Reject):
                converter.reject(
                    parsed, line, f"amqp:{spec.queue}", position, identity=f"{frame}\0{position}"
                )
                metrics.REJECTED.labels(parsed.reason).inc()
                continue
            documents.append(converter.document(parsed, frame, position, received_ms, site_id=site))
        return documents

    def _documents(
        self, spec: QueueSpec, message: QueueMessage, snapshot: Snapshot, now_ms: int
    ) -> tuple[list[Document], list[str]]:
        """The message's documents and why some of its events were refused; raises
        :class:`_DeadLetter` for a message refused whole."""
        if len(message.body) > self._max_body:
            raise _DeadLetter(
                f"the message has {len(message.body)} bytes; the limit is {self._max_body}"
                " (METRONOME_MAX_BATCH_BYTES)"
            )
        site = self._site(spec, message, snapshot)
        received_ms = now_ms
        if message.timestamp_s is not None and 0 < message.timestamp_s * 1000 <= now_ms + (
            _MAX_FUTURE_MS
        ):
            received_ms = message.timestamp_s * 1000
        identity = message.message_id or hashlib.sha256(message.body).hexdigest()
        frame = f"amqp\0{identity}"
        if spec.kind == "tick":
            return self._ticks(spec, [_decoded(message.body)], site, received_ms, frame)
        if spec.kind in ("ticks", "events"):
            items = _tick_list(message.body, self._max_ticks)
            return self._ticks(spec, items, site, received_ms, frame)
        if spec.kind == "points":
            return self._points(spec, _decoded(message.body), site, received_ms, frame)
        return self._lines(spec, message.body, site, received_ms, frame), []

    async def accept(self, spec: QueueSpec, messages: Sequence[QueueMessage]) -> list[Verdict]:
        """Spool the documents of ``messages`` together; one verdict each."""
        if not self._writer.has_room():  # cost before work: nothing decoded
            return [Verdict("pause", reason="the spool is full")] * len(messages)
        try:
            snapshot = await self._sites.get()
        except StoreUnavailable as exc:
            return [Verdict("retry", reason=exc.message)] * len(messages)
        now_ms = int(time.time() * 1000)
        verdicts: list[Verdict] = []
        documents: list[Document] = []
        for message in messages:
            try:
                found, refused = self._documents(spec, message, snapshot, now_ms)
            except _DeadLetter as exc:
                metrics.REJECTED.labels("queue_message").inc()
                verdicts.append(Verdict("dead", 0, str(exc)))
                continue
            except Exception as exc:  # a message that breaks the code must not loop forever
                log.error("queue_message_failed queue=%s", spec.name, exc_info=True)
                metrics.REJECTED.labels("internal_error").inc()
                verdicts.append(Verdict("dead", 0, f"internal error: {type(exc).__name__}"))
                continue
            documents.extend(found)
            if refused:
                reason = "; ".join(refused)
                if len(reason) > _MAX_REASON_CHARS:
                    reason = reason[: _MAX_REASON_CHARS - 3] + "..."
                verdicts.append(Verdict("dead", len(found), reason))
            else:
                verdicts.append(Verdict("ack", len(found)))
        if documents:
            try:
                await self._writer.append(encode_many(documents))
            except SpoolFull as exc:
                return [Verdict("pause", reason=exc.message)] * len(messages)
            except MetronomeError as exc:
                return [Verdict("retry", reason=exc.message)] * len(messages)
            metrics.ACCEPTED.labels(f"amqp:{spec.name}").inc(len(documents))
        return verdicts


# -- the consumer thread ------------------------------------------------------------------


@dataclass
class QueueFigures:
    """One queue's figures since this worker started (``metronome status``)."""

    consumed: int = 0
    acked: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    requeued: int = 0
    connected: bool = False
    paused: bool = False
    ready: int | None = None  # messages waiting in the queue, at the last look
    last_error: str | None = None


_LAG_EVERY_S = 5.0
_GATHER_S = 0.002  # how long a group waits for one more message
_STATE_EVERY_S = 2.0


class QueueConsumer:
    """One queue's consumer thread. ``start`` it from the event loop that ``router`` (and
    its spool writer) runs on; ``stop`` waits for it (run it in a thread, as it joins)."""

    def __init__(
        self,
        spec: QueueSpec,
        router: QueueRouter,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
    ) -> None:
        self.spec = spec
        self._router = router
        self._loop = loop
        self._spool = spool_dir(settings.data_dir)
        self._max_spool = settings.spool_max_bytes
        self._max_backoff_s = float(settings.ship_backoff_max_s)
        self._state_file = Path(settings.data_dir) / STATE_DIR / f"{spec.name}.json"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"queue-{spec.name}", daemon=True)
        self.figures = QueueFigures()
        self._held: list[tuple[Any, Any, bytes]] = []
        self._counter = {
            outcome: metrics.QUEUE_MESSAGES.labels(spec.name, outcome)
            for outcome in ("consumed", "acked", "dead_lettered", "redelivered", "requeued")
        }
        self._connected = metrics.QUEUE_CONNECTED.labels(spec.name)
        self._paused = metrics.QUEUE_PAUSED.labels(spec.name)
        self._ready = metrics.QUEUE_READY.labels(spec.name)
        self._state_at = 0.0
        # pika logs each failed connection attempt with a traceback; the consumer logs
        # one line per disconnection itself (queue_disconnected), with the reason
        logging.getLogger("pika").setLevel(logging.CRITICAL)

    def start(self) -> None:
        self._write_state()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- figures ------------------------------------------------------------------------------
    def _count(self, outcome: str, n: int = 1) -> None:
        setattr(self.figures, outcome, getattr(self.figures, outcome) + n)
        self._counter[outcome].inc(n)

    def _set(self, *, connected: bool | None = None, paused: bool | None = None) -> None:
        if connected is not None:
            self.figures.connected = connected
            self._connected.set(1 if connected else 0)
        if paused is not None:
            self.figures.paused = paused
            self._paused.set(1 if paused else 0)
        self._write_state()

    def _write_state(self) -> None:
        self._state_at = time.monotonic()
        state = {
            "name": self.spec.name,
            "queue": self.spec.queue,
            "describe": self.spec.describe(),
            "pid": os.getpid(),
            "updated_ms": int(time.time() * 1000),
            **self.figures.__dict__,
        }
        temporary = self._state_file.with_suffix(".tmp")
        try:
            private_dir(self._state_file.parent)
            with open_private(temporary, "wb") as handle:
                handle.write(orjson.dumps(state))
            os.replace(temporary, self._state_file)
        except OSError as exc:
            log.warning("queue_state_unwritten queue=%s error=%s", self.spec.name, exc)

    # -- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
            except Exception as exc:  # noqa: BLE001 - every failure means: reconnect
                self.figures.last_error = masked_url(f"{type(exc).__name__}: {exc}")[:300]
                log.warning(
                    "queue_disconnected queue=%s retry_in_s=%.1f error=%s",
                    self.spec.name,
                    delay,
                    self.figures.last_error,
                )
            self._held.clear()  # whatever was not acknowledged goes back to the queue
            self._set(connected=False, paused=False)
            if time.monotonic() - started > 30:
                delay = 0.5  # it ran a while: a new outage starts the backoff anew
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._max_backoff_s)

    def _has_room(self) -> bool:
        return spool_bytes(self._spool) < self._max_spool

    def _session(self) -> None:
        import pika  # type: ignore[import-untyped]  # no stubs; only the worker with queues needs it

        params = pika.URLParameters(self.spec.url)
        params.connection_attempts = 1
        params.socket_timeout = 10
        params.blocked_connection_timeout = 60
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.spec.prefetch)
            publisher = self._publisher(connection)
            self.figures.last_error = None
            self._set(connected=True)
            log.info("queue_connected queue=%s %s", self.spec.name, self.spec.describe())
            tag: str | None = None
            looked = 0.0
            while not self._stop.is_set():
                if tag is None:
                    if self._has_room():
                        tag = channel.basic_consume(self.spec.queue, self._on_message)
                        self._set(paused=False)
                    elif not self.figures.paused:
                        log.warning(
                            "queue_paused queue=%s reason=the spool is full", self.spec.name
                        )
                        self._set(paused=True)
                connection.process_data_events(time_limit=0 if self._held else 0.25)
                self._gather(connection)
                if self._held and tag is not None:
                    held, self._held = self._held, []
                    if not self._answer(channel, publisher, held):
                        channel.basic_cancel(tag)  # undelivered ones are returned by pika
                        tag = None
                        self._set(paused=True)
                        log.warning(
                            "queue_paused queue=%s reason=the spool is full", self.spec.name
                        )
                now = time.monotonic()
                if now - looked > _LAG_EVERY_S:
                    looked = now
                    declared = channel.queue_declare(self.spec.queue, passive=True)
                    self.figures.ready = declared.method.message_count
                    self._ready.set(self.figures.ready)
                if now - self._state_at > _STATE_EVERY_S:
                    self._write_state()
        finally:
            if connection.is_open:
                try:
                    connection.close()  # unacknowledged messages go back to the queue
                except Exception:  # noqa: BLE001 - it is going anyway
                    pass

    def _publisher(self, connection: Any) -> Any:
        """A channel with publisher confirms for dead letters; None without a
        ``dead_letter_exchange``, or when it does not exist (then reject instead)."""
        import pika  # noqa: PLC0415 - see _session

        exchange = self.spec.dead_letter_exchange
        if exchange is None:
            return None
        publisher = connection.channel()
        try:
            publisher.exchange_declare(exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.error(
                "queue_dead_letter_exchange_missing queue=%s exchange=%s error=%s: messages"
                " that cannot be accepted are rejected to the queue's own dead-letter exchange",
                self.spec.name,
                exchange,
                exc,
            )
            return None
        publisher.confirm_delivery()
        return publisher

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._count("consumed")
        if method.redelivered:
            self._count("redelivered")
        self._held.append((method, properties, body))

    def _gather(self, connection: Any) -> None:
        """Once messages arrive, take those that follow close behind too (up to the
        prefetch): one spool write and one acknowledgement for the group, not one each."""
        while self._held and len(self._held) < self.spec.prefetch:
            before = len(self._held)
            connection.process_data_events(time_limit=_GATHER_S)
            if len(self._held) == before:
                return

    def _answer(self, channel: Any, publisher: Any, held: list[tuple[Any, Any, bytes]]) -> bool:
        """Spool ``held`` and answer RabbitMQ for each; False when the spool is full (then
        every one of them went back to the queue)."""
        messages = [
            QueueMessage(
                body,
                properties.message_id,
                properties.timestamp,
                dict(properties.headers or {}),
            )
            for _, properties, body in held
        ]
        future = asyncio.run_coroutine_threadsafe(
            self._router.accept(self.spec, messages), self._loop
        )
        verdicts = future.result()
        paused = False
        retry_reason = None
        if all(v.action == "ack" for v in verdicts):  # the usual case: one frame for all
            channel.basic_ack(held[-1][0].delivery_tag, multiple=True)
            self._count("acked", len(held))
            return True
        for (method, properties, body), verdict in zip(held, verdicts, strict=True):
            if verdict.action == "ack":
                channel.basic_ack(method.delivery_tag)
                self._count("acked")
            elif verdict.action == "dead":
                self._dead_letter(channel, publisher, method, properties, body, verdict)
            else:
                paused = paused or verdict.action == "pause"
                retry_reason = verdict.reason
                channel.basic_nack(method.delivery_tag, requeue=True)
                self._count("requeued")
        if retry_reason is not None and not paused:
            log.warning("queue_retry queue=%s reason=%s", self.spec.name, retry_reason)
            self._stop.wait(1.0)
        return not paused

    def _dead_letter(
        self,
        channel: Any,
        publisher: Any,
        method: Any,
        properties: Any,
        body: bytes,
        verdict: Verdict,
    ) -> None:
        import pika  # noqa: PLC0415 - see _session

        reason = verdict.reason or "refused"
        log.warning(
            "queue_dead_letter queue=%s stored=%d reason=%s", self.spec.name, verdict.stored, reason
        )
        if publisher is not None:
            headers = dict(properties.headers or {})
            headers.update(
                {
                    REASON_HEADER: reason,
                    STORED_HEADER: verdict.stored,
                    QUEUE_HEADER: self.spec.queue,
                }
            )
            copy = pika.BasicProperties(
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
                headers=headers,
                delivery_mode=2,
                priority=properties.priority,
                correlation_id=properties.correlation_id,
                message_id=properties.message_id,
                timestamp=properties.timestamp,
                type=properties.type,
                app_id=properties.app_id,
            )
            routing_key = self.spec.dead_letter_routing_key or method.routing_key
            try:
                publisher.basic_publish(
                    self.spec.dead_letter_exchange, routing_key, body, copy, mandatory=True
                )
            except pika.exceptions.UnroutableError:
                log.error(
                    "queue_dead_letter_unroutable queue=%s exchange=%s routing_key=%s: rejected"
                    " to the queue's own dead-letter exchange instead",
                    self.spec.name,
                    self.spec.dead_letter_exchange,
                    routing_key,
                )
            else:
                channel.basic_ack(method.delivery_tag)  # the copy is confirmed: now let go
                self._count("dead_lettered")
                return
        channel.basic_reject(method.delivery_tag, requeue=False)
        self._count("dead_lettered")


# -- metronome status ------------------------------------------------------------------------


def queue_status_lines(settings: Settings) -> list[str]:
    """One line per ``[[queues]]`` table, from the state its consumer last wrote."""
    lines = []
    for spec in parse_queues(settings.queues, settings):
        path = Path(settings.data_dir) / STATE_DIR / f"{spec.name}.json"
        try:
            state = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            lines.append(f"queue {spec.name}: {spec.describe()}: no worker has consumed it yet")
            continue
        age_s = max(0.0, time.time() - state.get("updated_ms", 0) / 1000)
        if age_s > 2 * settings.ship_backoff_max_s + 10:  # a consumer writes at least this often
            link = f"worker not running (last seen {age_s:.0f}s ago)"
        elif state.get("paused"):
            link = "connected, PAUSED (the spool is full)"
        elif state.get("connected"):
            link = "connected"
        else:
            link = f"DISCONNECTED ({state.get('last_error') or 'connecting'})"
        ready = state.get("ready")
        lines.append(
            f"queue {spec.name}: {spec.describe()}: {link}; {state.get('consumed', 0)} consumed,"
            f" {state.get('acked', 0)} acked, {state.get('dead_lettered', 0)} dead-lettered,"
            f" {state.get('redelivered', 0)} redelivered, {state.get('requeued', 0)} requeued"
            f" since the worker started; {'?' if ready is None else ready} waiting in the queue"
        )
    return lines
