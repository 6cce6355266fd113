"""Reading request bodies within limits, decoding JSON, and query-string parameters.

Every route that reads a body goes through :func:`require_content_type` and
:func:`read_body`, whichever entry answers it: a Falcon request, or the ``POST /tick``
fast path's request (:mod:`metronome.api.fastpath`), which has the same ``get_header``,
``content_length`` and ``stream`` (:class:`BodyRequest`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from typing import Any, Protocol

import falcon.asgi
import orjson

from metronome.errors import (
    InvalidJSON,
    InvalidParameter,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

__all__ = [
    "BodyRequest",
    "Deadlines",
    "decode_json",
    "read_body",
    "require_content_type",
    "single_params",
]


class BodyRequest(Protocol):
    """What :func:`require_content_type` and :func:`read_body` read of a request."""

    @property
    def content_length(self) -> int | None: ...

    @property
    def stream(self) -> AsyncIterable[bytes]: ...

    def get_header(self, name: str) -> str | None: ...


def require_content_type(req: BodyRequest, allowed: tuple[str, ...]) -> str:
    """The request's media type, if it is one of ``allowed``; else 415 naming them."""
    media = (req.get_header("Content-Type") or "").split(";", 1)[0].strip().lower()
    if media not in allowed:
        raise UnsupportedMediaType(
            f"send the body as {' or '.join(allowed)}"
            f" (got {media or 'no Content-Type'}); with curl add"
            " -H 'Content-Type: application/json'",
            allowed=list(allowed),
        )
    return media


class Deadlines:
    """Body timeouts for many requests with one timer: a sweep every ``period`` seconds
    cancels the reads that are past their deadline (rather than a timer per request, which
    costs more than the rest of reading a small body)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._due: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._period = min(1.0, max(0.05, timeout_s / 4))
        self._sweeping: asyncio.AbstractEventLoop | None = None

    @classmethod
    def of(cls, timeout_s: float | None) -> Deadlines | None:
        """Deadlines for ``timeout_s`` (``METRONOME_BODY_TIMEOUT_S``); None for no limit."""
        return cls(timeout_s) if timeout_s else None

    def watch(self, task: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        self._due[task] = loop.time() + self.timeout_s
        if self._sweeping is not loop:
            self._sweeping = loop
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
        if self._sweeping is not loop:  # a sweep of a loop that is no longer used
            return
        now = loop.time()
        for task, due in list(self._due.items()):
            if due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
        if self._due:
            loop.call_later(self._period, self._sweep)
        else:
            self._sweeping = None


async def read_body(
    req: BodyRequest,
    max_bytes: int,
    deadlines: Deadlines | None,
    *,
    on_chunk: Callable[[bytes], None] | None = None,
) -> bytes:
    """The whole body, refusing (413) anything over ``max_bytes`` before reading it all,
    and (408) a body that takes longer than ``deadlines.timeout_s`` to arrive.
    ``on_chunk`` sees each chunk as it arrives, and may refuse the body by raising.

    ``deadlines`` has no default, so no route can forget it: pass
    ``Deadlines.of(settings.body_timeout_s)`` (None only where the server has no limit)."""
    declared = req.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {max_bytes}", limit=max_bytes
        )
    task = asyncio.current_task() if deadlines is not None else None
    if task is not None:
        deadlines.watch(task)  # type: ignore[union-attr]
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in req.stream:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(
                    f"the body is over the limit of {max_bytes} bytes", limit=max_bytes
                )
            if on_chunk is not None:
                on_chunk(chunk)
            chunks.append(chunk)
    except asyncio.CancelledError:
        if task is not None and deadlines.expired(task):  # type: ignore[union-attr]
            timeout_s = deadlines.timeout_s  # type: ignore[union-attr]
            raise RequestTimeout(
                f"the body did not arrive within {timeout_s:g} s ({size} bytes came)",
                limit_s=timeout_s,
            ) from None
        raise
    finally:
        if task is not None:
            deadlines.done(task)  # type: ignore[union-attr]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_json(data: bytes, what: str = "the body") -> Any:
    """Parse JSON, with a 400 that says where it broke."""
    if not data.strip():
        raise InvalidJSON(f"{what} is empty; send a JSON object")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {exc}") from None


def single_params(req: falcon.asgi.Request) -> dict[str, str]:
    """The query string as one value per name; a repeated name is a 400."""
    params: dict[str, str] = {}
    for key, value in req.params.items():
        if isinstance(value, list):
            raise InvalidParameter(f"'{key}' is given more than once", parameter=key)
        params[key] = value
    return params
