"""Points: one measurement of one producer, the telemetry (and metrics) document shape.

A point is what InfluxDB calls a point: a metric ``name`` (the measurement), ``tags``
(short strings that say what it is about: an instance id, a version) and ``fields`` (the
numbers measured), at a moment, from a producer (``app``: a telemetry app, or a
collector's or monitor's name). It is stored in the ``metrics`` dataset, in the
producer's own daily index ``<prefix>-metrics-<app>-YYYY.MM.DD`` (so one producer cannot
explode another's mapping) or the embedded store's ``metrics`` rows, as::

    {"@timestamp": ..., "@version": "1",
     "event": {"id": ..., "dataset": "metronome.metrics", "ingested": ...},
     "app": "longhorn", "metric": {"name": "storage_capacity"},
     "tags": {"instance_uuid": "..."}, "fields": {"value": 1e12},
     "site": {"id": "default"}, "client": {"geo": {"country_iso_code": "DE"}}}

``tags.<k>`` are keywords and ``fields.<k>`` doubles (index template
``metronome-metrics-mappings``); ``POST /query`` with ``"source": "metrics"`` reads them.

**How another producer stores points** (collectors, monitors, anything in the worker)::

    from metronome.events.point import Point, point_document
    doc = point_document(Point(app="collector-db", name="rows", timestamp_ms=now_ms,
                               tags={"table": "orders"}, fields={"value": 1234.0}))
    await pipeline.ingest([doc])        # durable spool, then the shipper (or store.write)

``app`` must match :data:`~metronome.events.fields.APP_ID_PATTERN`; names, tags and
fields must pass :func:`check_point` (the telemetry API validates clients' points with
:func:`parse_metric`, which also turns booleans into 0/1 and refuses text in fields).
The id is deterministic (:func:`point_id`): the same point in the same minute is stored
once, so a retried request or a re-run collector never counts twice.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from metronome.events import fields as F
from metronome.events.document import Document, format_timestamp

__all__ = [
    "NAME_PATTERN",
    "Point",
    "PointLimits",
    "Refusal",
    "check_point",
    "parse_metric",
    "point_document",
    "point_id",
]

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-:]*$")
"""Metric, tag and field names: a letter or ``_`` first, then letters, digits, ``_-:``
(no dots: they would nest in the mapping)."""

_MINUTE_MS = 60_000
_MAX_ABS = 1e300  # fields beyond this are refused (Elasticsearch doubles, JSON numbers)


@dataclass(frozen=True, slots=True)
class PointLimits:
    """What one point (and one request of points) may hold; per app."""

    max_metrics: int = 100  # points in one request
    max_tags: int = 32
    max_fields: int = 64
    max_name_length: int = 64  # metric, tag and field names
    max_tag_length: int = 256  # a tag's value


@dataclass(frozen=True, slots=True)
class Point:
    """One measurement: ``fields`` measured for ``name``, described by ``tags``."""

    app: str
    name: str
    timestamp_ms: int
    tags: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, float] = field(default_factory=dict)
    site_id: str = F.DEFAULT_SITE
    country: str | None = None  # ISO 3166 code of the sender's address, never the address


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why one metric of a request was not stored (whole), or one of its fields was left
    out (``field`` set)."""

    index: int
    reason: str
    field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "reason": self.reason}
        if self.field is not None:
            out["field"] = self.field
        return out


class _Bad(ValueError):
    pass


def _name(text: Any, what: str, limits: PointLimits) -> str:
    if not isinstance(text, str) or not text:
        raise _Bad(f"{what} must be a non-empty string")
    if len(text) > limits.max_name_length:
        raise _Bad(f"{what} {text[:40]!r}... is longer than {limits.max_name_length} characters")
    if not NAME_PATTERN.match(text):
        raise _Bad(
            f"{what} {text[:64]!r} may hold letters, digits, '_', '-' and ':' only, starting"
            " with a letter or '_'"
        )
    return text


def check_point(point: Point, limits: PointLimits | None = None) -> None:
    """Raise ValueError naming the problem when ``point`` breaks the grammar or limits."""
    limits = limits or PointLimits()
    if not F.APP_ID_PATTERN.match(point.app):
        raise ValueError(f"app {point.app[:64]!r} is not a valid producer name")
    _name(point.name, "the metric name", limits)
    if len(point.tags) > limits.max_tags or len(point.fields) > limits.max_fields:
        raise ValueError("too many tags or fields")
    for key, value in point.tags.items():
        _name(key, "a tag name", limits)
        if not isinstance(value, str) or len(value) > limits.max_tag_length:
            raise ValueError(f"tag {key!r} must be a string of at most {limits.max_tag_length}")
    for key, number in point.fields.items():
        _name(key, "a field name", limits)
        if not isinstance(number, float) or not math.isfinite(number) or abs(number) > _MAX_ABS:
            raise ValueError(f"field {key!r} must be a finite float")


def parse_metric(
    raw: Any,
    index: int,
    *,
    app: str,
    timestamp_ms: int,
    limits: PointLimits,
    site_id: str = F.DEFAULT_SITE,
    country: str | None = None,
) -> tuple[Point | None, list[Refusal]]:
    """One binoculars metric (``{"name", "tags", "fields"}``) as a point, and what was
    refused: the whole metric (no point), or single fields (the point keeps the others).

    Tags are strings (numbers and booleans are written as text); fields are numbers
    (booleans 0/1); a string in a field is refused for that field with a reason."""
    try:
        if not isinstance(raw, dict):
            raise _Bad("a metric must be an object {name, tags, fields}")
        name = _name(raw.get("name"), "the metric name", limits)
        raw_tags = raw.get("tags") or {}
        raw_fields = raw.get("fields") or {}
        if not isinstance(raw_tags, dict):
            raise _Bad("'tags' must be an object of strings")
        if not isinstance(raw_fields, dict):
            raise _Bad("'fields' must be an object of numbers")
        if len(raw_tags) > limits.max_tags:
            raise _Bad(f"a metric has at most {limits.max_tags} tags; this one has {len(raw_tags)}")
        if len(raw_fields) > limits.max_fields:
            raise _Bad(
                f"a metric has at most {limits.max_fields} fields; this one has {len(raw_fields)}"
            )
        tags: dict[str, str] = {}
        for key, value in raw_tags.items():
            _name(key, "a tag name", limits)
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, int | float) and math.isfinite(value):
                value = str(value)
            if not isinstance(value, str):
                raise _Bad(f"tag {key!r} must be a string, not {type(value).__name__}")
            if len(value) > limits.max_tag_length:
                raise _Bad(f"tag {key!r} is longer than {limits.max_tag_length} characters")
            tags[key] = value
    except _Bad as exc:
        return None, [Refusal(index, str(exc))]
    fields: dict[str, float] = {}
    refused: list[Refusal] = []
    for key, value in raw_fields.items():
        try:
            _name(key, "a field name", limits)
        except _Bad as exc:
            refused.append(Refusal(index, str(exc), str(key)[:64]))
            continue
        if isinstance(value, bool):
            fields[key] = 1.0 if value else 0.0
        elif isinstance(value, int | float):
            number = float(value)
            if not math.isfinite(number) or abs(number) > _MAX_ABS:
                refused.append(Refusal(index, f"field {key!r} is out of range", key))
            else:
                fields[key] = number
        else:
            kind = "a string" if isinstance(value, str) else type(value).__name__
            refused.append(Refusal(index, f"field {key!r} must be a number, not {kind}", key))
    if not fields:
        refused.append(Refusal(index, "the metric has no numeric field to store"))
        return None, refused
    point = Point(app, name, timestamp_ms, tags, fields, site_id, country)
    return point, refused


def point_id(point: Point, sender: str | None = None) -> str:
    """32 hex digits from the point's producer, name, tags, fields and minute (and
    ``sender``, such as the client's address, which is hashed in and never stored): the
    same point sent again within the same minute (a client's retry) is stored once, while
    two instances that send the same numbers without an instance tag stay two."""
    key = orjson.dumps(
        [
            sender,
            point.app,
            point.site_id,
            point.name,
            point.timestamp_ms // _MINUTE_MS,
            sorted(point.tags.items()),
            sorted(point.fields.items()),
        ]
    )
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def point_document(
    point: Point, *, received_ms: int | None = None, sender: str | None = None
) -> Document:
    """The stored document of ``point`` (dataset ``metrics``, id :func:`point_id`)."""
    event_id = point_id(point, sender)
    source: dict[str, Any] = {
        F.TIMESTAMP: format_timestamp(point.timestamp_ms),
        F.VERSION: "1",
        "event": {
            "id": event_id,
            "dataset": "metronome." + F.POINT_DATASET,
            "ingested": format_timestamp(
                point.timestamp_ms if received_ms is None else received_ms
            ),
        },
        F.APP: point.app,
        "metric": {"name": point.name},
        F.TAGS: dict(point.tags),
        F.FIELDS: dict(point.fields),
        "site": {"id": point.site_id},
    }
    if point.country:
        source["client"] = {"geo": {"country_iso_code": point.country}}
    return Document(event_id, point.timestamp_ms, F.POINT_DATASET, source)
