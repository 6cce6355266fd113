"""How answers leave: JSON bytes, the one error shape, and the CORS headers.

Falcon's error handlers (:mod:`metronome.app`), the :class:`~metronome.api.guard.Cors`
middleware and the ``POST /tick`` fast path (:mod:`metronome.api.fastpath`) all render
through these functions, so an answer is the same bytes whichever of them sends it.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import orjson

from metronome.errors import MetronomeError

__all__ = ["INTERNAL_ERROR", "cors_headers", "dump_json", "error_answer", "internal_error"]

log = logging.getLogger("metronome")

dump_json = partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
"""JSON bytes of an answer's body (Falcon's JSON media handler uses it too)."""

INTERNAL_ERROR: dict[str, Any] = {
    "error": "internal_error",
    "message": "Metronome failed to answer; the server log has the details",
}


def error_answer(ex: MetronomeError, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An error's HTTP status, body ``{"error", "message", "details"}`` and headers
    (``Retry-After``, ``WWW-Authenticate``); server-side failures are logged."""
    if ex.http_status >= 500:
        log.warning("request_failed path=%s error=%s message=%s", path, ex.code, ex.message)
    return ex.http_status, ex.to_dict(), ex.headers()


def internal_error(method: str, path: str) -> tuple[int, dict[str, Any]]:
    """The answer to an unexpected exception (being handled): logged with its traceback,
    answered ``internal_error`` without it."""
    log.exception("unexpected_error method=%s path=%s", method, path)
    return 500, INTERNAL_ERROR


def cors_headers(origin: str | None) -> dict[str, str]:
    """The headers that let a page at ``origin`` read the answer (the origin the guard
    let in, ``*`` for public reports); none for ``None``."""
    if origin is None:
        return {}
    if origin == "*":
        return {"Access-Control-Allow-Origin": origin}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
