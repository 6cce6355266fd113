"""How a spooled event becomes each destination's event: declared once, in :data:`FIELDS`.

Each row names a field of the document (:mod:`metronome.events.fields`), the tick key it
comes from, and where it goes in each destination type's event model; the functions below
apply the rows, then the few rules a destination adds (GA4's name and length limits,
Amplitude's id lengths). :func:`mapping_table` renders the rows for the destinations guide
(a test checks the guide shows exactly this table).

The ``event`` model, what webhooks and RabbitMQ receive, is one flat JSON object per event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metronome.events import fields as F
from metronome.events.document import Document, format_timestamp

__all__ = [
    "FIELDS",
    "FieldMap",
    "amplitude_event",
    "flat_event",
    "ga4_client_id",
    "ga4_event",
    "mapping_table",
    "tick",
]


@dataclass(frozen=True, slots=True)
class FieldMap:
    """One document field and where each destination type puts it (None: left out)."""

    document: str  # dotted path in the document
    tick: str  # the tick key (or what fills the field)
    event: str | None  # webhook and rabbitmq: key of the flat event
    amplitude: str | None  # dotted path in an Amplitude HTTP V2 event
    ga4: str | None  # dotted path in a GA4 Measurement Protocol request or event
    metronome: str | None  # key of the tick sent to another Metronome


FIELDS: tuple[FieldMap, ...] = (
    FieldMap(F.EVENT_ID, "(assigned)", "id", "insert_id", None, "event_id"),
    FieldMap(F.TIMESTAMP, "ts", "time", "time", "timestamp_micros", "ts"),
    FieldMap(F.SITE_ID, "(the key's site)", "site", "event_properties.site", "params.site", None),
    FieldMap(F.EVENT_ACTION, "event", "event", "event_type", "name", "event"),
    FieldMap(F.ITEM_ID, "id", "item", "event_properties.item", "params.item", "id"),
    FieldMap(
        F.ITEM_FORMAT, "format", "format", "event_properties.format", "params.format", "format"
    ),
    FieldMap(F.URL_ORIGINAL, "url", "url", "event_properties.url", "params.page_location", "url"),
    FieldMap(
        F.HTTP_REQUEST_REFERRER,
        "referrer",
        "referrer",
        "event_properties.referrer",
        "params.page_referrer",
        "referrer",
    ),
    FieldMap(F.VISITOR_ID, "(derived)", "visitor", "device_id", "client_id", "visitor"),
    FieldMap(F.PARAMS, "(any other key)", "params", "event_properties.*", "params.*", "*"),
)
"""The mapping, one row per field. ``*``: each parameter under its own name (GA4: cleaned
to its rules); ``timestamp_micros`` and Amplitude's ``time`` are numbers (µs, ms), the flat
event's ``time`` is ms too, a tick's ``ts`` is ISO 8601."""

_DATASET_EVENT = {"logs": "access", "metrics": "point", "insights": "insight"}


_PATHS = tuple((row, tuple(row.document.split("."))) for row in FIELDS)


def _get(source: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> Any:
    """The value at a dotted path of a document (``@timestamp`` is one key)."""
    value: Any = source.get(path)
    if value is not None:
        return value
    value = source
    for part in parts:
        if not isinstance(value, dict):  # documents hold plain dicts (FrozenDict is one)
            return None
        value = value.get(part)
    return value


def _values(document: Document) -> dict[str, Any]:
    """The mapped fields of one document, by document path (missing ones left out)."""
    found: dict[str, Any] = {}
    for row, parts in _PATHS:
        value = _get(document.source, row.document, parts)
        if value is not None and value != "" and value != {}:
            found[row.document] = value
    if F.EVENT_ACTION not in found:  # access logs and points have no event name
        found[F.EVENT_ACTION] = _DATASET_EVENT.get(document.dataset, document.dataset)
    found[F.EVENT_ID] = document.id
    found[F.TIMESTAMP] = document.timestamp_ms
    return found


def _put(target: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def _apply(document: Document, column: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document's fields placed as ``column`` of :data:`FIELDS` says; and its params."""
    values = _values(document)
    params = values.pop(F.PARAMS, None)
    out: dict[str, Any] = {}
    for row in FIELDS:
        where = getattr(row, column)
        if where is None or row.document not in values or where.endswith("*"):
            continue
        _put(out, where, values[row.document])
    return out, dict(params) if isinstance(params, dict) else {}


def flat_event(document: Document) -> dict[str, Any]:
    """The ``event`` model (webhooks, RabbitMQ): ``{id, time, site, dataset, event, item,
    format, url, referrer, visitor, params}``, ``time`` in epoch ms."""
    out, params = _apply(document, "event")
    out["dataset"] = document.dataset
    out["params"] = params
    return out


def tick(document: Document) -> dict[str, Any]:
    """A tick for another Metronome's ``POST /ticks``: the known keys, ``ts`` as ISO 8601,
    the parameters as free keys, and the visitor as the ``visitor`` parameter (the
    receiver derives its own visitor from the sender's address otherwise)."""
    out, params = _apply(document, "metronome")
    out["ts"] = format_timestamp(document.timestamp_ms)
    for key, value in params.items():
        out.setdefault(key, value)
    return out


_AMPLITUDE_ID_MIN = 5  # Amplitude drops user and device ids shorter than 5 characters


def amplitude_event(document: Document) -> dict[str, Any]:
    """An Amplitude HTTP V2 event: ``insert_id`` (dedup for 7 days), ``event_type``,
    ``time`` (ms), ``device_id`` (the visitor), ``user_id`` (a ``user_id`` parameter of 5+
    characters), ``event_properties`` (the fixed fields, then the parameters)."""
    out, params = _apply(document, "amplitude")
    properties = out.setdefault("event_properties", {})
    for key, value in params.items():
        properties.setdefault(key, value)
    user = params.get("user_id")
    if isinstance(user, str | int) and len(str(user)) >= _AMPLITUDE_ID_MIN:
        out["user_id"] = str(user)
    device = out.get("device_id")
    if not isinstance(device, str) or len(device) < _AMPLITUDE_ID_MIN:
        out.pop("device_id", None)
        if "user_id" not in out:  # each such event stands for a device of its own
            out["device_id"] = "metronome-" + document.id
    return out


# GA4 Measurement Protocol rules: names of letters, digits and underscores starting with a
# letter, at most 40 characters, no reserved prefix or name; at most 25 parameters an event;
# values at most 100 characters (page_location 1000, page_referrer 420, page_title 300).
GA4_EVENTS_MAX = 25
GA4_NAME_MAX = 40
GA4_PARAMS_MAX = 25
GA4_VALUE_MAX = 100
GA4_VALUE_MAX_BY_NAME = {"page_location": 1000, "page_referrer": 420, "page_title": 300}
GA4_RESERVED_PREFIXES = ("_", "ad_", "firebase_", "ga_", "google_", "gtag.")
GA4_RESERVED_NAMES = frozenset(
    {
        "ad_activeview",
        "ad_click",
        "ad_exposure",
        "ad_impression",
        "ad_query",
        "adunit_exposure",
        "app_clear_data",
        "app_install",
        "app_update",
        "app_remove",
        "error",
        "first_open",
        "first_visit",
        "in_app_purchase",
        "notification_dismiss",
        "notification_foreground",
        "notification_open",
        "notification_receive",
        "os_update",
        "screen_view",
        "session_start",
        "user_engagement",
    }
)
GA4_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]+")


def ga4_name(text: str, *, event: bool) -> str:
    """``text`` as a GA4 event or parameter name: other characters become ``_``, leading
    and trailing ``_`` go, a name not starting with a letter gets ``e_`` (``p_`` for a
    parameter), a reserved one ``mt_``, and it is cut at 40 characters."""
    name = _NOT_NAME.sub("_", text).strip("_") or "event"
    if not name[0].isalpha():
        name = ("e_" if event else "p_") + name
    if name.lower().startswith(GA4_RESERVED_PREFIXES) or (
        event and name.lower() in GA4_RESERVED_NAMES
    ):
        name = "mt_" + name
    return name[:GA4_NAME_MAX]


def _ga4_value(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return value
    return str(value)[: GA4_VALUE_MAX_BY_NAME.get(name, GA4_VALUE_MAX)]


def ga4_client_id(document: Document) -> str:
    """The request's ``client_id``: the visitor, or the event id when there is none."""
    visitor = _get(document.source, F.VISITOR_ID, ("visitor", "id"))
    return visitor if isinstance(visitor, str) and visitor else document.id


def ga4_event(document: Document) -> dict[str, Any]:
    """A GA4 event ``{name, params, timestamp_micros}``: the fixed fields first, then the
    parameters in name order, cleaned to GA4's rules and cut at 25."""
    out, params = _apply(document, "ga4")
    out.pop("client_id", None)  # a request's, not an event's (ga4_client_id)
    fixed = out.get("params", {})
    clean: dict[str, Any] = {}
    for key, value in [*fixed.items(), *sorted(params.items())]:
        name = ga4_name(key, event=False)
        if name in clean or len(clean) >= GA4_PARAMS_MAX or value is None:
            continue
        clean[name] = _ga4_value(name, value)
    return {
        "name": ga4_name(str(out.get("name", "event")), event=True),
        "params": clean,
        "timestamp_micros": document.timestamp_ms * 1000,
    }


def mapping_table() -> str:
    """:data:`FIELDS` as the Markdown table of the destinations guide."""
    lines = [
        "| document field | tick key | webhook, rabbitmq | amplitude | ga4 | metronome |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in FIELDS:
        cells = [row.event, row.amplitude, row.ga4, row.metronome]
        shown = " | ".join(f"`{c}`" if c else "-" for c in cells)
        lines.append(f"| `{row.document}` | {row.tick} | {shown} |")
    return "\n".join(lines)
