"""``POST /tick`` answered straight from ASGI, in front of the Falcon app.

A page sends one tick per view, so this one request decides how many events a second a
server takes. Building Falcon's request and response objects and running its middleware
chain cost more than Metronome's own work for a tick, so :class:`FastIngest` answers
``POST /tick`` itself, with exactly the checks Falcon's route makes
(:meth:`metronome.api.ticks.Tick.accept`: content type, keys and sites, rate limits, body
limit and timeout, validation, spool) and the same answers, errors and CORS headers
included. Every other request, ``/tick/`` and ``OPTIONS /tick`` among them, and the
lifespan events go to Falcon unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from types import SimpleNamespace
from typing import Any

import orjson
from falcon.util.uri import parse_query_string

from metronome.api.body import unsupported_media_type
from metronome.api.ticks import JSON_TYPES, Tick
from metronome.errors import MetronomeError, PayloadTooLarge, RequestTimeout
from metronome.pipeline import metrics

__all__ = ["FastIngest", "error_answer"]

log = logging.getLogger("metronome")

_JSON = (b"content-type", b"application/json")
_INTERNAL = {
    "error": "internal_error",
    "message": "Metronome failed to answer; the server log has the details",
}


def error_answer(ex: MetronomeError, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An error's HTTP status, JSON body and headers (Falcon's handler uses it too);
    server-side failures are logged."""
    if ex.http_status >= 500:
        log.warning("request_failed path=%s error=%s message=%s", path, ex.code, ex.message)
    return ex.http_status, ex.to_dict(), ex.headers()


class _Request:
    """What :meth:`Tick.accept` and the guard read of a request, from the ASGI scope: the
    same names and meanings as on a Falcon request."""

    __slots__ = ("_headers", "_params", "_query", "context", "method", "path", "remote_addr")

    def __init__(self, scope: dict[str, Any], headers: dict[str, str]) -> None:
        self._headers = headers
        self._query: bytes = scope.get("query_string", b"")
        self._params: dict[str, Any] | None = None
        self.method = "POST"
        self.path: str = scope["path"]
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None
        self.context = SimpleNamespace()

    def get_header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    @property
    def params(self) -> dict[str, Any]:
        if self._params is None:
            self._params = (
                parse_query_string(self._query.decode("latin-1"), keep_blank=True, csv=False)
                if self._query
                else {}
            )
        return self._params

    @property
    def user_agent(self) -> str | None:
        return self._headers.get("user-agent")

    @property
    def referer(self) -> str | None:
        return self._headers.get("referer")


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """Header names (ASGI gives them lower-case) to values; repeated headers joined by
    commas, as Falcon joins them."""
    raw = scope["headers"]
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}
    if len(headers) != len(raw):  # a repeated header: join its values in order
        headers = {}
        for name, value in raw:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


class _Deadlines:
    """Body timeouts for many requests with one timer: a sweep every ``period`` seconds
    cancels the reads that are past their deadline (cheaper than a timer per request)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._due: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._period = min(1.0, max(0.05, timeout_s / 4))
        self._sweeping = False

    def watch(self, task: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        self._due[task] = loop.time() + self.timeout_s
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self._period, self._sweep)

    def done(self, task: asyncio.Task[Any]) -> None:
        self._due.pop(task, None)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """True (once) when ``task`` was cancelled by a sweep rather than by the server."""
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, due in list(self._due.items()):
            if due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
        if self._due:
            loop.call_later(self._period, self._sweep)
        else:
            self._sweeping = False


class FastIngest:
    """ASGI app: ``POST /tick`` here, everything else to ``app`` (the Falcon app)."""

    def __init__(
        self, app: Any, tick: Tick, *, max_body_bytes: int, body_timeout_s: float | None
    ) -> None:
        self.falcon_app = app
        self._tick = tick
        self._max_body = max_body_bytes
        self._deadlines = _Deadlines(body_timeout_s) if body_timeout_s else None
        self._tally = metrics.RouteTally("/tick", "POST")
        tick.on_accepted = self._tally.accepted

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/tick":
            await self.falcon_app(scope, receive, send)
            return
        started = time.perf_counter()
        req = _Request(scope, _headers(scope))
        try:
            media = (req.get_header("content-type") or "").split(";", 1)[0].strip().lower()
            if media not in JSON_TYPES:
                raise unsupported_media_type(media, JSON_TYPES)
            event_id = await self._tick.accept(req, partial(self._body, req, receive))
            await self._answer(send, 202, orjson.dumps({"id": event_id}), req, {})
        except _Disconnected:
            pass
        except MetronomeError as exc:
            status, body, headers = error_answer(exc, req.path)
            await self._answer(send, status, orjson.dumps(body), req, headers)
        except Exception:  # answered like Falcon's handler for the unexpected
            log.exception("unexpected_error method=POST path=/tick")
            await self._answer(send, 500, orjson.dumps(_INTERNAL), req, {})
        self._tally.observe(time.perf_counter() - started)

    async def _body(self, req: _Request, receive: Any) -> bytes:
        """The whole body: 413 over the limit (before reading, when Content-Length says
        so), 408 when it takes longer than ``METRONOME_BODY_TIMEOUT_S`` to arrive."""
        limit = self._max_body
        declared = req.get_header("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"the body is {declared} bytes; the limit is {limit}", limit=limit
            )
        deadlines = self._deadlines
        task = asyncio.current_task() if deadlines is not None else None
        if task is not None:
            deadlines.watch(task)  # type: ignore[union-attr]
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the body is over the limit of {limit} bytes", limit=limit
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if task is not None and deadlines.expired(task):  # type: ignore[union-attr]
                timeout = deadlines.timeout_s  # type: ignore[union-attr]
                raise RequestTimeout(
                    f"the body did not arrive within {timeout:g} s ({size} bytes came)",
                    limit_s=timeout,
                ) from None
            raise
        finally:
            if task is not None:
                deadlines.done(task)  # type: ignore[union-attr]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _answer(
        send: Any, status: int, body: bytes, req: _Request, extra: dict[str, str]
    ) -> None:
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        origin = getattr(req.context, "cors_origin", None)
        if origin is not None:  # as the Cors middleware adds it
            headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
            if origin != "*":
                headers.append((b"vary", b"Origin"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Disconnected(Exception):
    """The client went away before its body arrived: there is no one to answer."""
