"""``POST /tick`` answered straight from ASGI, in front of the Falcon app.

A page sends one tick per view, so this one request decides how many events a second a
server takes. Building Falcon's request and response objects and running its middleware
chain cost more than Metronome's own work for a tick, so :class:`FastIngest` answers
``POST /tick`` itself. It only adapts: the route is :meth:`metronome.api.ticks.Tick.accept`
(content type, body limit and timeout, keys and sites, rate limits, validation, spool),
the same method Falcon calls for ``/tick/``, and the answer is rendered by
:mod:`metronome.api.render`, as Falcon's error handlers and CORS middleware render theirs.
``tests/test_tick_paths.py`` sends the same requests both ways and compares the answers.
Every other request, ``/tick/`` and ``OPTIONS /tick`` among them, and the lifespan events
go to Falcon unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from falcon.util.uri import parse_query_string

from metronome.api.render import cors_headers, dump_json, error_answer, internal_error
from metronome.api.ticks import Tick
from metronome.errors import BadRequest, MetronomeError
from metronome.pipeline import metrics

__all__ = ["FastIngest"]

_JSON = (b"content-type", b"application/json")


class _Request:
    """What :meth:`Tick.accept` reads of a request, from the ASGI scope and ``receive``:
    the same names and meanings as on a Falcon request."""

    __slots__ = ("_headers", "_params", "_query", "_receive", "context", "path", "remote_addr")

    method = "POST"

    def __init__(self, scope: dict[str, Any], receive: Any) -> None:
        self._headers = _headers(scope)
        self._query: bytes = scope.get("query_string", b"")
        self._params: dict[str, Any] | None = None
        self._receive = receive
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

    @property
    def content_length(self) -> int | None:
        """``Content-Length`` as a number; a value that is not one is a 400 (HTTP servers
        refuse such requests before they get here), as Falcon answers it."""
        value = self._headers.get("content-length")
        if not value:
            return None
        try:
            length = int(value)
        except ValueError:
            length = -1
        if length < 0:
            raise BadRequest(
                'The value provided for the "Content-Length" header is invalid.'
                " The value of the header must be a number."
            )
        return length

    @property
    def stream(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; it ends early when the client goes away."""
        return _Chunks(self._receive)


class _Chunks:
    """Async iterator over an ASGI request's body chunks (as Falcon's stream iterates)."""

    __slots__ = ("_done", "_receive")

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self._done = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            message = await self._receive()
            self._done = not message.get("more_body", False)  # http.disconnect has none
            chunk: bytes = message.get("body", b"")
            if chunk:
                return chunk
        raise StopAsyncIteration


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


class FastIngest:
    """ASGI app: ``POST /tick`` here, everything else to ``app`` (the Falcon app)."""

    def __init__(self, app: Any, tick: Tick) -> None:
        self.falcon_app = app
        self._tick = tick
        self._tally = metrics.RouteTally("/tick", "POST")
        tick.on_accepted = self._tally.accepted

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/tick":
            await self.falcon_app(scope, receive, send)
            return
        started = time.perf_counter()
        req = _Request(scope, receive)
        headers: dict[str, str] = {}
        try:
            status = 202
            body: Any = {"id": await self._tick.accept(req)}
        except MetronomeError as exc:
            status, body, headers = error_answer(exc, req.path)
        except Exception:
            status, body = internal_error(req.method, req.path)
        await _answer(
            send, status, dump_json(body), headers, getattr(req.context, "cors_origin", None)
        )
        self._tally.observe(time.perf_counter() - started)


async def _answer(
    send: Any, status: int, body: bytes, headers: dict[str, str], origin: str | None
) -> None:
    """Send a JSON answer with ``headers`` and the CORS headers for ``origin``."""
    raw = [_JSON, (b"content-length", str(len(body)).encode())]
    for name, value in (headers | cors_headers(origin)).items():
        raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
