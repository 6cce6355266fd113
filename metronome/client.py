"""A small Python client for backend services: send ticks without ever blocking the caller.

::

    from metronome.client import Client

    metronome = Client("http://metronome.internal:8080", key="mk_...")  # an ingest key
    metronome.tick("parks-dataset", event="download", format="csv", plan="pro")
    ...
    metronome.close()          # sends what is still queued (at most `close_timeout_s`)

Ticks are queued in memory and sent by a background thread in batches (``POST /ticks``)
when ``batch_size`` are waiting or every ``flush_interval_s``. A batch the server could not
take (connection refused, ``429``/``503``) is retried with capped exponential backoff; a
tick the server rejects as invalid is counted in ``stats.rejected`` and logged, never
retried. When the queue is full (the server is gone for long), new ticks are dropped and
counted in ``stats.dropped`` rather than blocking the application.

:class:`FluentClient` sends the same ticks through Fluentd (``fluent-logger``) with the
tag ``metronome.tick``, and :class:`TickHandler` turns ``logging`` records into ticks.

:class:`TelemetryAgent` reports an installed application's own telemetry (the binoculars
contract, ``POST /v1/metrics``): it gathers metrics, sends them, and sends again when the
server's ``requestIntervalInMinutes`` says so, with a timeout, backoff with jitter after
errors and an optional app token::

    from metronome.client import TelemetryAgent

    def gather():
        return [{"name": "storage_capacity", "tags": {"instance_uuid": my_id},
                 "fields": {"value": used_bytes()}}]

    agent = TelemetryAgent("https://metronome.example.org/apps/storage/v1/metrics", gather)
    agent.start()              # idempotent, thread-safe
    ...
    agent.stop()               # idempotent; waits (at most ``timeout_s``) for the thread
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

__all__ = [
    "Client",
    "ClientStats",
    "FluentClient",
    "TelemetryAgent",
    "TelemetryAnswer",
    "TelemetryError",
    "TickHandler",
    "describe_error",
]

log = logging.getLogger("metronome.client")


@dataclass
class ClientStats:
    queued: int = 0
    sent: int = 0
    rejected: int = 0
    dropped: int = 0
    retries: int = 0


def describe_error(exc: BaseException | None) -> dict[str, Any]:
    """An error tick's fields for an exception: its type, message and stack, and the file
    and line it was raised at (the innermost frame). The server groups errors by type,
    message (numbers, ids and urls aside) and the innermost frame's file and function."""
    if exc is None:
        return {}
    fields: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc)[:1024],
        "stack": "".join(traceback.format_exception(exc))[-16_384:],
    }
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        fields["source"] = frames[-1].filename
        fields["line"] = frames[-1].lineno
        if frames[-1].colno is not None:
            fields["column"] = frames[-1].colno
    return fields


def _tick(item_id: str, event: str, fields: dict[str, Any]) -> dict[str, Any]:
    tick = {"id": item_id, "event": event, **fields}
    tick.setdefault("ts", int(time.time() * 1000))  # when it happened, not when sent
    return tick


class Client:
    """Sends ticks over HTTP in the background. Thread-safe; one per process is enough.

    With ``amqp_url`` and ``queue`` instead of ``url`` it publishes the same batches to a
    RabbitMQ queue that ``metronome worker`` consumes (a ``[[queues]]`` table with
    ``kind = "ticks"``): one persistent message per batch, with a ``message_id`` and a
    ``timestamp`` (so a message delivered twice is stored once) and publisher confirms (a
    batch counts as sent once RabbitMQ confirmed it); ``key`` travels in the
    ``x-metronome-key`` header, for a queue whose ``site_header`` reads it."""

    def __init__(
        self,
        url: str | None = None,
        *,
        amqp_url: str | None = None,
        queue: str | None = None,
        exchange: str = "",
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
        timeout_s: float = 10.0,
        max_backoff_s: float = 30.0,
        close_timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> None:
        """``key``: a key with the ``ingest`` scope (needed once the server has sites)."""
        if (url is None) == (amqp_url is None) or (amqp_url is not None and not queue):
            raise ValueError("give either url, or amqp_url and queue")
        self._amqp = (
            _AmqpPublisher(amqp_url, exchange, queue or "", key, timeout_s) if amqp_url else None
        )
        if key:
            headers = {**(headers or {}), "Authorization": f"Bearer {key}"}
        self._url = (url or "").rstrip("/")
        self._batch_size = batch_size
        self._interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._close_timeout_s = close_timeout_s
        # a deque, not a queue.Queue: appending and len() need no lock (atomic in CPython),
        # which keeps tick() to about a microsecond (the middleware calls it per request);
        # the sending thread takes from the other end under _idle, which flush() waits on
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queue = max_queue
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0
        self.stats = ClientStats()
        self._thread = threading.Thread(target=self._run, name="metronome-client", daemon=True)
        self._thread.start()

    def tick(self, item_id: str, event: str = "view", **fields: Any) -> bool:
        """Queue one tick; returns False (and counts it) if the queue is full."""
        return self.enqueue(_tick(item_id, event, fields))

    def enqueue(self, tick: dict[str, Any]) -> bool:
        """Queue one tick built already (what ``POST /ticks`` takes, with ``ts``); False
        (and counted) if the queue is full. The middleware's path: no keyword packing."""
        queued = self._queue
        if len(queued) >= self._max_queue:
            self.stats.dropped += 1
            return False
        queued.append(tick)
        self.stats.queued += 1
        if len(queued) >= self._batch_size:
            self._wake.set()
        return True

    def error(self, item_id: str, exc: BaseException | None = None, **fields: Any) -> bool:
        """Queue an ``error`` tick for ``item_id`` (the page, endpoint or job that failed)
        describing ``exc`` (:func:`describe_error`); ``fields`` add to it or replace its
        parts (``message=...`` alone reports an error without an exception)."""
        return self.tick(item_id, "error", **{**describe_error(exc), **fields})

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far was answered by the server (or timeout)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.05))
                self._wake.set()
        return True

    def close(self) -> None:
        """Send what is queued (within ``close_timeout_s``), then stop the thread."""
        self.flush(self._close_timeout_s)
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=self._close_timeout_s)
        self._http.close()
        if self._amqp is not None:
            self._amqp.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        with self._idle:
            while len(batch) < self._batch_size:
                try:
                    batch.append(self._queue.popleft())
                except IndexError:
                    break
            self._in_flight = len(batch)
        return batch

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            while batch := self._take_batch():
                self._send(batch)
                with self._idle:
                    self._in_flight = 0
                    self._idle.notify_all()
                if self._closing.is_set():
                    break

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if self._amqp is not None:
            self._publish(batch)
            return
        delay = 0.1
        while True:
            try:
                resp = self._http.post(self._url + "/ticks", json=batch)
            except httpx.TransportError as exc:
                reason = f"{exc.__class__.__name__}: {exc}"
            else:
                if resp.status_code == 202:
                    answer = resp.json()
                    self.stats.sent += answer["accepted"]
                    self.stats.rejected += len(answer["rejected"])
                    for rejected in answer["rejected"][:5]:
                        log.warning(
                            "tick_rejected error=%s message=%s",
                            rejected["error"],
                            rejected["message"],
                        )
                    return
                if resp.status_code not in (429, 502, 503, 504):
                    self.stats.rejected += len(batch)
                    log.warning(
                        "batch_rejected status=%d body=%s", resp.status_code, resp.text[:200]
                    )
                    return
                reason = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    delay = max(delay, float(retry_after))
            if self._closing.is_set():
                self.stats.dropped += len(batch)
                log.warning("batch_dropped_at_close ticks=%d reason=%s", len(batch), reason)
                return
            self.stats.retries += 1
            log.info("batch_retry ticks=%d delay_s=%.1f reason=%s", len(batch), delay, reason)
            self._closing.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._max_backoff_s)

    def _publish(self, batch: list[dict[str, Any]]) -> None:
        """Publish ``batch`` as one message, retrying (the same message id) until
        RabbitMQ confirms it or the client closes."""
        assert self._amqp is not None
        message_id, sent_s = uuid.uuid4().hex, int(time.time())  # the same on every attempt
        delay = 0.1
        while True:
            try:
                self._amqp.publish(batch, message_id, sent_s)
                self.stats.sent += len(batch)
                return
            except Exception as exc:  # noqa: BLE001 - pika raises many kinds: reconnect
                reason = f"{exc.__class__.__name__}: {exc}"
                self._amqp.reset()
            if self._closing.is_set():
                self.stats.dropped += len(batch)
                log.warning("batch_dropped_at_close ticks=%d reason=%s", len(batch), reason)
                return
            self.stats.retries += 1
            log.info("batch_retry ticks=%d delay_s=%.1f reason=%s", len(batch), delay, reason)
            self._closing.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._max_backoff_s)


class _AmqpPublisher:
    """The client's one RabbitMQ connection (used by its sending thread only: pika's
    connections are not thread-safe), opened on first use and again after a failure."""

    def __init__(
        self, url: str, exchange: str, routing_key: str, key: str | None, timeout_s: float
    ) -> None:
        self._url = url
        self._exchange = exchange
        self._routing_key = routing_key
        self._headers = {"x-metronome-key": key} if key else None
        self._timeout_s = timeout_s
        self._connection: Any = None
        self._channel: Any = None

    def publish(self, batch: list[dict[str, Any]], message_id: str, sent_s: int) -> None:
        import pika  # type: ignore[import-untyped]  # no stubs; needed with amqp_url only

        if self._channel is None:
            params = pika.URLParameters(self._url)
            params.socket_timeout = self._timeout_s
            params.blocked_connection_timeout = self._timeout_s
            params.connection_attempts = 1
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,  # persistent: it survives a restart of RabbitMQ
            message_id=message_id,
            timestamp=sent_s,
            headers=self._headers,
        )
        body = json.dumps(batch, separators=(",", ":")).encode()
        self._channel.basic_publish(
            self._exchange, self._routing_key, body, properties, mandatory=True
        )  # raises unless RabbitMQ confirms it was queued

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - it is going anyway
                pass


class FluentClient:
    """Sends ticks through a Fluentd (or Metronome) forward input with fluent-logger."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 24224,
        *,
        tag_prefix: str = "metronome",
        **sender_options: Any,
    ) -> None:
        from fluent import sender

        self._sender = sender.FluentSender(tag_prefix, host=host, port=port, **sender_options)

    def tick(self, item_id: str, event: str = "view", **fields: Any) -> bool:
        """Emit one tick with the tag ``<tag_prefix>.tick``; False if fluent-logger failed."""
        ok = self._sender.emit("tick", _tick(item_id, event, fields))
        return bool(ok)

    def close(self) -> None:
        self._sender.close()


class TickHandler(logging.Handler):
    """A ``logging`` handler that records log records as ticks of one item.

    Each record becomes ``{"id": item_id, "event": "log" (or "error" from ERROR up),
    "level": ..., "logger": ..., "message": ...}`` plus the scalar values of
    ``extra={"metronome": {...}}``.
    """

    def __init__(
        self, client: Client | FluentClient, item_id: str, level: int = logging.NOTSET
    ) -> None:
        super().__init__(level)
        self._client = client
        self._item_id = item_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage()[:2048],
                "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            }
            extra = getattr(record, "metronome", None)
            if isinstance(extra, dict):
                fields.update(
                    {
                        k: v
                        for k, v in extra.items()
                        if isinstance(v, str | int | float | bool) or v is None
                    }
                )
            event = "error" if record.levelno >= logging.ERROR else "log"
            self._client.tick(self._item_id, event, **fields)
        except Exception:  # noqa: BLE001 - a logging handler must never raise
            self.handleError(record)


# --- telemetry: the binoculars contract -------------------------------------------------

Metric = Mapping[str, Any]  # {"name": str, "tags": {str: str}, "fields": {str: number|bool}}


@dataclass(frozen=True, slots=True)
class TelemetryAnswer:
    """The server's answer to one report: when to send next, and the metrics it refused
    (Metronome lists them; other servers of the contract do not)."""

    request_interval_minutes: int
    refused: list[dict[str, Any]]


class TelemetryError(Exception):
    """A report that did not get a 200: ``status`` (None when no answer came), and for
    Metronome's JSON errors its stable ``code`` and ``message``."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TelemetryAgent:
    """Sends an application's telemetry to ``url`` (``.../v1/metrics`` or
    ``.../apps/{app}/v1/metrics``) from a background thread, like the Go client in
    ``clients/go`` and the binoculars client it replaces.

    ``gather()`` returns the metrics to send now; ``on_response(answer, error)`` (optional)
    hears how each report went: a :class:`TelemetryAnswer`, or a :class:`TelemetryError`.
    Both are called from the agent's thread, one at a time.

    The first report goes out on :meth:`start`; each next one after the server's
    ``requestIntervalInMinutes`` (``default_interval_s`` until it has said). After an
    error, the n-th in a row waits a random time between half and all of
    ``min(initial_backoff_s * 2 ** (n - 1), max_backoff_s)``, so instances that failed
    together do not return together. Each request has a ``timeout_s``; ``token`` is sent as
    the ``token`` query parameter for apps that require one. No other header than
    ``Content-Type: application/json`` is needed.
    """

    #: Seconds in the server's minute (tests shorten it to watch intervals in seconds).
    seconds_per_minute: float = 60.0

    def __init__(
        self,
        url: str,
        gather: Callable[[], Sequence[Metric]],
        on_response: Callable[[TelemetryAnswer | None, TelemetryError | None], None] | None = None,
        *,
        token: str | None = None,
        timeout_s: float = 30.0,
        default_interval_s: float = 3600.0,
        initial_backoff_s: float = 60.0,
        max_backoff_s: float = 3600.0,
    ) -> None:
        self._url = _with_token(url, token)
        self._gather = gather
        self._on_response = on_response
        self._timeout_s = timeout_s
        self._default_interval_s = default_interval_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=timeout_s)
        self._random = random.Random()

    def send(self, metrics: Sequence[Metric]) -> TelemetryAnswer:
        """Send ``metrics`` once, now; the answer, or a :class:`TelemetryError`."""
        try:
            resp = self._http.post(self._url, json={"metrics": list(metrics)})
        except httpx.HTTPError as exc:
            raise TelemetryError(f"{exc.__class__.__name__}: {exc}") from exc
        if resp.status_code != 200:
            code = message = None
            try:
                body = resp.json()
                code, message = str(body["error"]), str(body["message"])
            except (ValueError, KeyError, TypeError):
                pass
            text = f"{code}: {message}" if code else resp.text[:200]
            raise TelemetryError(
                f"server answered {resp.status_code} {text}", resp.status_code, code
            )
        try:
            body = resp.json()
            interval = int(body.get("requestIntervalInMinutes") or 0)
            refused = body.get("refused") or []
        except (ValueError, TypeError, AttributeError) as exc:
            raise TelemetryError(f"the answer is not the expected JSON: {exc}", 200) from exc
        return TelemetryAnswer(interval, list(refused))

    def backoff_s(self, failures: int) -> float:
        """How long to wait after the ``failures``-th error in a row (jittered)."""
        ceiling = min(self._initial_backoff_s * 2 ** (failures - 1), self._max_backoff_s)
        return self._random.uniform(ceiling / 2, ceiling)

    def start(self) -> None:
        """Start reporting in the background; does nothing while it already runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and not self._stopping.is_set():
                return
            # a thread still ending after stop() has its own event and goes on ending
            self._stopping = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stopping,), name="metronome-telemetry", daemon=True
            )
            self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop reporting; does nothing when stopped. With ``wait`` (and not called from
        the agent's own thread, e.g. from ``on_response``), waits for the thread to end
        (at most ``timeout_s``: an in-flight request is not interrupted)."""
        with self._lock:
            thread = self._thread
            self._stopping.set()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout_s + 1)

    @property
    def running(self) -> bool:
        with self._lock:
            return (
                self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()
            )

    def close(self) -> None:
        """Stop, and close the HTTP connections."""
        self.stop()
        self._http.close()

    def __enter__(self) -> TelemetryAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, stopping: threading.Event) -> None:
        interval_s = self._default_interval_s
        failures = 0
        while not stopping.is_set():
            answer: TelemetryAnswer | None = None
            error: TelemetryError | None = None
            try:
                answer = self.send(self._gather())
            except TelemetryError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - a failing gather must not end the agent
                log.warning("telemetry_gather_failed error=%r", exc)
                error = TelemetryError(f"gather failed: {exc!r}")
            if stopping.is_set():
                return
            if self._on_response is not None:
                try:
                    self._on_response(answer, error)
                except Exception:  # noqa: BLE001
                    log.exception("telemetry_on_response_failed")
            if answer is not None:
                failures = 0
                if answer.request_interval_minutes > 0:
                    interval_s = answer.request_interval_minutes * self.seconds_per_minute
                wait_s = interval_s
            else:
                failures += 1
                wait_s = self.backoff_s(failures)
                log.info(
                    "telemetry_retry failures=%d delay_s=%.1f error=%s", failures, wait_s, error
                )
            stopping.wait(wait_s)


def _with_token(url: str, token: str | None) -> str:
    if not token:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("token", token)])))
