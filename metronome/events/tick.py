"""Ticks: validate one flat JSON object and turn it into a Logstash-format document.

The contract (after esridc/metronome): known keys ``id``, ``event``, ``format``, ``url``,
``referrer`` (or ``referer``), ``ts`` and ``site``; every other key is a free parameter
stored under ``params.*``. ``site`` is checked by the API against the caller's site
(:mod:`metronome.api.guard`) and never stored from the tick: ``site.id`` comes from
:attr:`RequestInfo.site_id`. Free parameters are scalars; names are 1 to
``max_key_length`` characters of letters, digits, ``_``, ``-``, ``:``, ``@`` and ``$``
(no dots, so they can never become nested objects). A tick of the event ``api.call`` is
an API call (:mod:`metronome.events.api_call`), stored in the access logs' shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from metronome.errors import InvalidField, LimitExceeded
from metronome.events import fields as F
from metronome.events.api_call import ACTION as API_CALL
from metronome.events.api_call import build_api_call
from metronome.events.document import Document, format_timestamp, new_event_id, parse_iso_ms
from metronome.events.enrich import referrer_keys, url_parts, user_agent_fields
from metronome.events.errors import ERROR_KEYS, error_fields
from metronome.events.geo import country_iso_code
from metronome.events.typed import EventSchemas

__all__ = ["KNOWN_KEYS", "TICK_SCHEMA", "Limits", "RequestInfo", "build_tick", "parse_timestamp"]

KNOWN_KEYS = frozenset({"id", "event", "format", "url", "referrer", "referer", "ts", "site"})
DATASET = "ticks"
ERROR_ACTION = "error"  # an error tick: message, type, source, line, column, stack -> error.*
_KEY_PATTERN = re.compile(r"^[\w\-:@$]+$")
_MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift; a day ahead is a broken clock
_MIN_TS_MS = 0

_TEXT = {"type": "string", "maxLength": 2048}
TICK_SCHEMA: dict[str, Any] = {
    "title": "Tick",
    "description": "One flat JSON object. Known keys are below; any other key is a free"
    " parameter (a scalar, stored under params.*). Limits are the defaults"
    " (METRONOME_MAX_PARAMS, _MAX_KEY_LENGTH, _MAX_VALUE_LENGTH).",
    "type": "object",
    "required": ["id"],
    "properties": {
        "id": {
            **_TEXT,
            "minLength": 1,
            "pattern": "\\S",
            "description": "the item: a page, dataset, map or app",
        },
        "event": {
            "type": "string",
            "maxLength": 64,
            "description": "view (default), download, ...",
        },
        "format": {"type": "string", "maxLength": 64, "description": "file format, lowercased"},
        "url": _TEXT,
        "referrer": _TEXT,
        "referer": _TEXT,
        "ts": {
            "type": ["string", "number"],
            "description": "ISO 8601 or epoch ms; at most a day ahead (default: now)",
        },
    },
    "propertyNames": {"pattern": "^[\\w\\-:@$]{1,64}$"},
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
    "maxProperties": 107,
}
"""The JSON Schema of a tick, as published in ``/openapi.json``; :func:`build_tick` is
the validation (it also checks what a schema cannot, such as ``ts`` against the clock)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits a tick must respect (from settings)."""

    max_params: int = 100
    max_key_length: int = 64
    max_value_length: int = 2048


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the server knows about the request that carried a tick.

    ``site_id`` is the site the caller was authenticated for (the single-user default
    when no site exists); it is the document's ``site.id``.
    """

    received_ms: int
    client_ip: str | None
    user_agent: str | None
    site_id: str = F.DEFAULT_SITE
    visitor_id: str | None = None  # from events/visitor.py; None when unknown
    stored_ip: str | None = None  # what may be stored of client_ip (METRONOME_CLIENT_IP)


def _string(
    raw: dict[str, Any], key: str, limits: Limits, *, max_length: int | None = None
) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"'{key}' must be a string", field=key)
    value = value.strip()
    limit = max_length or limits.max_value_length
    if len(value) > limit:
        raise LimitExceeded(
            f"'{key}' is {len(value)} characters long; the limit is {limit}",
            field=key,
            limit=limit,
        )
    return value or None


# epoch milliseconds as text: ASCII digits and spaces only (re's \s and \d would also let
# through characters float() refuses, such as "\x1c")
_EPOCH_TEXT = re.compile(r"[ \t\r\n]*-?[0-9]+(?:\.[0-9]+)?[ \t\r\n]*")


def parse_timestamp(value: Any, field: str = "ts") -> int:
    """ISO 8601 text or epoch milliseconds (a number or digits) to epoch milliseconds.

    Text without an offset is UTC. Raises :class:`InvalidField` naming ``field``.
    """
    if isinstance(value, bool):
        raise InvalidField(f"'{field}' must be ISO 8601 text or epoch milliseconds", field=field)
    if isinstance(value, str) and _EPOCH_TEXT.fullmatch(value):
        value = float(value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidField(f"'{field}' must be a finite number", field=field)
        return int(value)
    if isinstance(value, str):
        ms = parse_iso_ms(value)
        if ms is None:
            raise InvalidField(
                f"'{field}' is not an ISO 8601 timestamp or epoch milliseconds: {value!r}",
                field=field,
            )
        return ms
    raise InvalidField(f"'{field}' must be ISO 8601 text or epoch milliseconds", field=field)


def _params(
    raw: dict[str, Any], limits: Limits, typed: Any = ()
) -> dict[str, str | int | float | bool | None]:
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in KNOWN_KEYS or key in typed:
            continue
        if len(key) > limits.max_key_length:
            raise LimitExceeded(
                f"parameter name {key[:80]!r} is {len(key)} characters long;"
                f" the limit is {limits.max_key_length}",
                field=key[:80],
                limit=limits.max_key_length,
            )
        if not _KEY_PATTERN.match(key):
            raise InvalidField(
                f"parameter name {key!r} may only contain letters, digits, '_', '-', ':',"
                " '@' and '$'",
                field=key,
            )
        if isinstance(value, dict | list):
            raise InvalidField(
                f"parameter {key!r} must be a string, number, boolean or null, not"
                f" {'an object' if isinstance(value, dict) else 'an array'}",
                field=key,
            )
        if isinstance(value, str) and len(value) > limits.max_value_length:
            raise LimitExceeded(
                f"parameter {key!r} is {len(value)} characters long;"
                f" the limit is {limits.max_value_length}",
                field=key,
                limit=limits.max_value_length,
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidField(f"parameter {key!r} must be a finite number", field=key)
        params[key] = value
    if len(params) > limits.max_params:
        raise LimitExceeded(
            f"a tick may have at most {limits.max_params} free parameters; this one has"
            f" {len(params)}",
            field="params",
            limit=limits.max_params,
        )
    return params


def build_tick(
    raw: Any, request: RequestInfo, limits: Limits, schemas: EventSchemas | None = None
) -> Document:
    """Validate one tick and build its document. Raises a 4xx :mod:`metronome.errors` error.

    A tick of an event type ``schemas`` declares for its site must follow that type's
    schema; its typed fields go to ``typed.*`` instead of ``params.*``."""
    if not isinstance(raw, dict):
        raise InvalidField("a tick must be a JSON object", field="(tick)")
    item_id = _string(raw, "id", limits)
    if item_id is None:
        raise InvalidField(
            "'id' is required: the item (page, dataset, map, app) ticked", field="id"
        )
    action = _string(raw, "event", limits, max_length=64) or "view"
    fmt = _string(raw, "format", limits, max_length=64)
    if fmt:
        fmt = fmt.lower().lstrip(".") or None
    url = _string(raw, "url", limits)
    referrer = _string(raw, "referrer", limits)
    if referrer is None:
        referrer = _string(raw, "referer", limits)

    if raw.get("ts") is None:
        ts_ms = request.received_ms
    else:
        ts_ms = parse_timestamp(raw["ts"])
        if ts_ms < _MIN_TS_MS or ts_ms > request.received_ms + _MAX_FUTURE_MS:
            raise InvalidField(
                "'ts' must be after 1970 and at most a day ahead of the server's clock",
                field="ts",
            )
    if action == API_CALL:  # metronome.middleware's report of one request: a log's shape
        return build_api_call(raw, item_id, ts_ms, request.received_ms, request.site_id)
    event_type = schemas.find(request.site_id, action) if schemas is not None else None
    typed = event_type.typed_fields(raw) if event_type is not None else None
    for key, value in (typed or {}).items():
        if isinstance(value, str) and len(value) > limits.max_value_length:
            raise LimitExceeded(
                f"{key!r} is {len(value)} characters long; the limit is {limits.max_value_length}",
                field=key,
                limit=limits.max_value_length,
            )
    reserved: frozenset[str] = frozenset(event_type.typed if event_type is not None else ())
    error = None
    if action == ERROR_ACTION:  # issue 25: what broke, grouped at ingestion (events/errors.py)
        error = error_fields(raw, limits.max_value_length)
        reserved = ERROR_KEYS | reserved
    params = _params(raw, limits, reserved)

    event_id = new_event_id(request.received_ms)
    source: dict[str, Any] = {
        F.TIMESTAMP: format_timestamp(ts_ms),
        F.VERSION: "1",
        "event": {
            "id": event_id,
            "action": action,
            "dataset": "metronome." + DATASET,
            "ingested": format_timestamp(request.received_ms),
        },
        "item": {"id": item_id},
        F.BOT: False,
        F.PARAMS: params,
        "site": {"id": request.site_id},
    }
    if typed:
        source[F.TYPED] = typed
    if error:
        source["error"] = error
    if fmt:
        source["item"]["format"] = fmt
    if url:
        domain, path = url_parts(url)
        source["url"] = {"original": url}
        if domain:
            source["url"]["domain"] = domain
        if path:
            source["url"]["path"] = path
    if referrer:
        source["http"] = {"request": {"referrer": referrer}}
        ref_domain, ref_page = referrer_keys(referrer)
        if ref_domain:
            source["referrer"] = {"domain": ref_domain, "page": ref_page}
    if request.client_ip:
        client: dict[str, Any] = {}
        if request.stored_ip:
            client["ip"] = request.stored_ip
        country = country_iso_code(request.client_ip)
        if country:
            client["geo"] = {"country_iso_code": country}
        if client:
            source["client"] = client
    if request.user_agent:
        agent, is_bot = user_agent_fields(
            request.user_agent[:1024], request.user_agent[: limits.max_value_length]
        )
        source["user_agent"] = agent
        source[F.BOT] = is_bot
    if request.visitor_id:
        source["visitor"] = {"id": request.visitor_id}
    return Document(id=event_id, timestamp_ms=ts_ms, dataset=DATASET, source=source)
