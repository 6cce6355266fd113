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
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = ["Client", "ClientStats", "FluentClient", "TickHandler"]

log = logging.getLogger("metronome.client")


@dataclass
class ClientStats:
    queued: int = 0
    sent: int = 0
    rejected: int = 0
    dropped: int = 0
    retries: int = 0


def _tick(item_id: str, event: str, fields: dict[str, Any]) -> dict[str, Any]:
    tick = {"id": item_id, "event": event, **fields}
    tick.setdefault("ts", int(time.time() * 1000))  # when it happened, not when sent
    return tick


class Client:
    """Sends ticks over HTTP in the background. Thread-safe; one per process is enough."""

    def __init__(
        self,
        url: str,
        *,
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
        if key:
            headers = {**(headers or {}), "Authorization": f"Bearer {key}"}
        self._url = url.rstrip("/")
        self._batch_size = batch_size
        self._interval_s = flush_interval_s
        self._max_backoff_s = max_backoff_s
        self._close_timeout_s = close_timeout_s
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
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
        try:
            self._queue.put_nowait(_tick(item_id, event, fields))
        except queue.Full:
            self.stats.dropped += 1
            return False
        self.stats.queued += 1
        if self._queue.qsize() >= self._batch_size:
            self._wake.set()
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far was answered by the server (or timeout)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._idle:
            while self._queue.qsize() or self._in_flight:
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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        with self._idle:
            while len(batch) < self._batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
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
