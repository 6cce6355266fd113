"""API calls: a tick of the reserved event ``api.call`` stored in the access logs' shape.

:mod:`metronome.middleware` (part of the Python client) reports every request an app
answers as one tick through the batching client (``POST /ticks``)::

    {"id": "/users/{id}", "event": "api.call", "ts": 1764770000000, "method": "GET",
     "status": 200, "duration_ns": 1250000, "bytes": 512, "user": "u-42"}

``id`` is the route template that answered (or what the app chose when there was none);
``method`` and ``status`` are required; ``duration_ns``, ``bytes`` and ``user`` are
optional. No other key is taken, so a typo is refused rather than stored.

The document goes to the ``logs`` dataset with the ECS fields access logs use
(``http.request.method``, ``http.response.status_code``, ``http.response.body.bytes``,
``event.duration`` in ns), so a ``/query`` on ``source: logs`` reads logs and API calls
alike, plus ``http.route`` and ``user.id``; ``event.dataset`` is ``metronome.api_calls``
(access-log lines have ``metronome.logs``), which is how the ``api-calls`` report and any
query tell them apart. The request that carried the tick is the tracked app's server, not
its user, so no client address, user agent or visitor id is stored.
"""

from __future__ import annotations

import math
from typing import Any

from metronome.errors import InvalidField, LimitExceeded
from metronome.events import fields as F
from metronome.events.document import Document, format_timestamp, new_event_id

__all__ = ["ACTION", "DATASET", "EVENT_DATASET", "KEYS", "build_api_call"]

ACTION = "api.call"  # the tick's `event` that makes it an API call
DATASET = "logs"  # stored beside access logs, in their shape
EVENT_DATASET = "metronome.api_calls"
KEYS = frozenset({"id", "event", "ts", "site", "method", "status", "duration_ns", "bytes", "user"})
_MAX_METHOD = 32
_MAX_TEXT = 1024  # route and user: http.route and user.id keep 1024 characters
_MAX_DURATION_NS = 7 * 24 * 3600 * 10**9  # a week: longer is a broken clock


def _whole(raw: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidField(
            f"api.call: {key!r} must be a whole number from {low} to {high}, not {value!r}",
            field=key,
        )
    return value


def _text(raw: dict[str, Any], key: str, limit: int) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"api.call: {key!r} must be a string", field=key)
    value = value.strip()
    if len(value) > limit:
        raise LimitExceeded(
            f"api.call: {key!r} is {len(value)} characters long; the limit is {limit}",
            field=key,
            limit=limit,
        )
    return value or None


def build_api_call(
    raw: dict[str, Any], route: str, ts_ms: int, received_ms: int, site_id: str
) -> Document:
    """The ``logs`` document of one ``api.call`` tick (``id`` already read as ``route``,
    ``ts`` as ``ts_ms``). Raises a 4xx :mod:`metronome.errors` error naming the key."""
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise InvalidField(
            f"api.call: unknown key {unknown[0][:80]!r}; an API call takes"
            f" {', '.join(sorted(KEYS))}",
            field=unknown[0][:80],
        )
    if len(route) > _MAX_TEXT:
        raise LimitExceeded(
            f"api.call: 'id' (the route) is {len(route)} characters long; the limit is {_MAX_TEXT}",
            field="id",
            limit=_MAX_TEXT,
        )
    method = _text(raw, "method", _MAX_METHOD)
    if method is None:
        raise InvalidField("api.call: 'method' is required (GET, POST, ...)", field="method")
    status = _whole(raw, "status", 100, 599)
    if status is None:
        raise InvalidField("api.call: 'status' is required (the response's code)", field="status")
    duration_ns = _whole(raw, "duration_ns", 0, _MAX_DURATION_NS)
    body_bytes = _whole(raw, "bytes", 0, 2**53)
    user = _text(raw, "user", _MAX_TEXT)

    event_id = new_event_id(received_ms)
    event: dict[str, Any] = {
        "id": event_id,
        "action": ACTION,
        "dataset": EVENT_DATASET,
        "ingested": format_timestamp(received_ms),
    }
    if duration_ns is not None:
        event["duration"] = duration_ns
    response: dict[str, Any] = {"status_code": status}
    if body_bytes is not None:
        response["body"] = {"bytes": body_bytes}
    source: dict[str, Any] = {
        F.TIMESTAMP: format_timestamp(ts_ms),
        F.VERSION: "1",
        "event": event,
        "http": {"route": route, "request": {"method": method.upper()}, "response": response},
        F.BOT: False,
        "site": {"id": site_id},
    }
    if user is not None:
        source["user"] = {"id": user}
    return Document(id=event_id, timestamp_ms=ts_ms, dataset=DATASET, source=source)
