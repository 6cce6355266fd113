"""The live protocol: the messages a client sends and the ones it gets, as JSON objects
with a ``type``; the same on a WebSocket (``GET /live``, both ways) and on Server-Sent
Events (``GET /live/events``: server messages only, each an event named by its type).

A client subscribes with a ``/query`` body whose range rolls (a preset such as ``5min``,
``1h`` or ``today``, re-resolved at every evaluation) and a frequency; it gets a
``result`` at most that often, and only when the answer changed.

The JSON Schemas below are what ``/openapi.json`` publishes; :func:`parse_client_message`
checks a message against the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from metronome.errors import InvalidField, InvalidJSON

__all__ = [
    "CLIENT_MESSAGE_SCHEMA",
    "CLOSE_CODES",
    "FREQUENCIES",
    "SERVER_MESSAGE_SCHEMA",
    "Subscribe",
    "Unsubscribe",
    "parse_client_message",
    "parse_subscription",
]

FREQUENCIES = {"high": 1_000, "medium": 5_000, "low": 30_000}
"""Named frequencies: the shortest interval between two pushes, in milliseconds."""
MAX_FREQUENCY_MS = 3_600_000
MAX_ID_CHARS = 64

CLOSE_CODES: dict[int, str] = {
    1000: "normal closure (the client or the server ended the connection)",
    1009: "a message was over METRONOME_LIVE_MAX_MESSAGE_BYTES",
    1012: "the server is restarting: reconnect",
    4000: "two pings went unanswered (heartbeat)",
    4001: "the token expired or its key was revoked: mint a new token",
    4008: "the client reads too slowly: more than METRONOME_LIVE_BUFFER_BYTES waited",
    4029: "too many live connections (per site or per worker): retry later",
    4030: "too many subscriptions on this connection (METRONOME_LIVE_MAX_SUBSCRIPTIONS)",
}
"""Every close code the server sends, and what it means."""

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
_FREQUENCY = {
    "description": "high (1 s), medium (5 s), low (30 s), or milliseconds from"
    " METRONOME_LIVE_MIN_FREQUENCY_MS to 3600000; default medium",
    "oneOf": [
        {"enum": list(FREQUENCIES)},
        {"type": "integer", "minimum": 1, "maximum": MAX_FREQUENCY_MS},
    ],
}
CLIENT_MESSAGE_SCHEMA: dict[str, Any] = {
    "title": "LiveClientMessage",
    "description": "What a client sends on GET /live (WebSocket, text frames of JSON)",
    "oneOf": [
        {
            "type": "object",
            "title": "subscribe",
            "required": ["type", "id", "query"],
            "additionalProperties": False,
            "properties": {
                "type": {"const": "subscribe"},
                "id": _ID,
                "query": {"$ref": "#/components/schemas/Query"},
                "frequency": _FREQUENCY,
            },
        },
        {
            "type": "object",
            "title": "unsubscribe",
            "required": ["type", "id"],
            "additionalProperties": False,
            "properties": {"type": {"const": "unsubscribe"}, "id": _ID},
        },
        {
            "type": "object",
            "title": "pong",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {"type": {"const": "pong"}},
        },
    ],
}
SERVER_MESSAGE_SCHEMA: dict[str, Any] = {
    "title": "LiveServerMessage",
    "description": "What the server sends on GET /live and GET /live/events",
    "oneOf": [
        {
            "type": "object",
            "title": "welcome",
            "required": ["type", "site", "ping_s", "limits"],
            "properties": {
                "type": {"const": "welcome"},
                "site": {"type": "string"},
                "ping_s": {"type": "integer"},
                "limits": {"type": "object"},
            },
        },
        {
            "type": "object",
            "title": "subscribed",
            "required": ["type", "id", "interval_ms"],
            "properties": {
                "type": {"const": "subscribed"},
                "id": _ID,
                "interval_ms": {"type": "integer"},
            },
        },
        {
            "type": "object",
            "title": "result",
            "description": "the subscription's /query answer, sent when it changed",
            "required": ["type", "id", "at_ms", "data"],
            "properties": {
                "type": {"const": "result"},
                "id": _ID,
                "at_ms": {"type": "integer", "description": "when it was evaluated"},
                "data": {"$ref": "#/components/schemas/QueryAnswer"},
            },
        },
        {
            "type": "object",
            "title": "unsubscribed",
            "required": ["type", "id"],
            "properties": {"type": {"const": "unsubscribed"}, "id": _ID},
        },
        {
            "type": "object",
            "title": "error",
            "description": "a message or a subscription's query was refused (the"
            " connection stays open), or its evaluation failed",
            "required": ["type", "error", "message"],
            "properties": {
                "type": {"const": "error"},
                "id": {"type": ["string", "null"]},
                "error": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        },
        {
            "type": "object",
            "title": "ping",
            "description": "answer with a pong (any message counts); two unanswered close"
            " the connection (4000)",
            "required": ["type"],
            "properties": {"type": {"const": "ping"}},
        },
    ],
}


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: str
    query: dict[str, Any]
    interval_ms: int


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: str


def _sub_id(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise InvalidField(
            f"'id' names the subscription: 1 to {MAX_ID_CHARS} characters", field="id"
        )
    return value


def parse_subscription(raw: Any, min_frequency_ms: int) -> Subscribe:
    """A ``subscribe`` message's parts (the query itself is checked by the hub)."""
    if not isinstance(raw, dict):
        raise InvalidField("a subscription is a JSON object", field="subscribe")
    unknown = set(raw) - {"type", "id", "query", "frequency"}
    if unknown:
        raise InvalidField(
            f"unknown field {sorted(unknown)[0][:64]!r}; a subscription has id, query and"
            " frequency",
            field=sorted(unknown)[0][:64],
        )
    sub_id = _sub_id(raw.get("id"))
    query = raw.get("query")
    if not isinstance(query, dict):
        raise InvalidField("'query' is a /query request body (an object)", field="query")
    frequency = raw.get("frequency", "medium")
    if isinstance(frequency, str) and frequency in FREQUENCIES:
        interval = FREQUENCIES[frequency]
    elif (
        isinstance(frequency, int)
        and not isinstance(frequency, bool)
        and min_frequency_ms <= frequency <= MAX_FREQUENCY_MS
    ):
        interval = frequency
    else:
        raise InvalidField(
            "'frequency' is high (1 s), medium (5 s), low (30 s) or milliseconds from"
            f" {min_frequency_ms} to {MAX_FREQUENCY_MS}",
            field="frequency",
        )
    return Subscribe(sub_id, query, interval)


def parse_client_message(
    text: str | bytes, min_frequency_ms: int
) -> Subscribe | Unsubscribe | None:
    """A client's message: a subscription, an unsubscription, or ``None`` for a pong."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidJSON("a live message is a JSON object with a 'type'") from None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "subscribe":
        return parse_subscription(raw, min_frequency_ms)
    if kind == "unsubscribe":
        return Unsubscribe(_sub_id(raw.get("id")))
    if kind == "pong":
        return None
    raise InvalidField("a live message's 'type' is subscribe, unsubscribe or pong", field="type")
