"""``POST /query``: the request schema, its validation, and the backend-neutral query.

One JSON Schema (:data:`QUERY_SCHEMA`) validates the request's shape and is the schema
``/openapi.json`` publishes; :func:`parse_query` then checks what a schema cannot (field
names against the index templates, time zones, ranges) and returns a :class:`Query`: the
normalized request (aliases resolved, defaults filled, the range made absolute) and the
:class:`GroupQuery` every store compiles (Elasticsearch composite aggregations, or SQL).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance

from metronome.errors import InvalidParameter, InvalidQuery
from metronome.events import fields as F
from metronome.reports.catalog import ALIASES, UnknownField, resolve, typed_fields
from metronome.reports.journeys import page_filter, page_views
from metronome.reports.timebuckets import (
    EARLIEST_MS,
    LATEST_MS,
    MAX_BUCKETS,
    SUPPORTED_RANGE,
    bucket_count,
    bucket_starts,
    floor_to_bucket,
    parse_moment,
    parse_zone,
)
from metronome.store.query import (
    BoolNode,
    DimensionSpec,
    FieldRef,
    FilterNode,
    GroupQuery,
    Leaf,
    MetricSpec,
)

__all__ = [
    "DISTINCT_PRECISION",
    "INSTANCE_TAG",
    "LAST_PRECISION",
    "QUERY_SCHEMA",
    "ForecastSpec",
    "Query",
    "for_site",
    "iso_moment",
    "parse_query",
    "restrict",
]

SOURCES = {
    "ticks": ("ticks",),
    "logs": ("logs",),
    "all": ("ticks", "logs"),
    "metrics": (F.POINT_DATASET,),
}
SOURCES["insights"] = (F.INSIGHT_DATASET,)  # what the worker found in KPIs: trends, anomalies
SOURCES["visits"] = (F.VISITS_DATASET,)  # visit summaries (issue 25)
VISIT_METRICS = {  # on "source": "visits": a visit's summary field, and how it is summed up
    "visits": ("count", None),
    "bounce_rate": ("avg", F.VISIT_BOUNCE),
    "visit_duration": ("avg", F.VISIT_DURATION_MS),
    "views_per_visit": ("avg", F.VISIT_PAGEVIEWS),
    "time_on_page": ("avg", F.VISIT_PAGE_TIME_MS),
}
SIMPLE_METRICS = (
    "events",
    "visitors",
    "items",
    "bytes",
    "error_rate",
    "instances",
    "first_seen",
    "last_seen",
    *VISIT_METRICS,
)
TIME_METRICS = {"first_seen": "min", "last_seen": "max"}
"""The time of a group's earliest and latest event (ISO 8601 in the query's tz)."""
STAT_PATTERN = r"^(sum|avg|min|max|distinct|p(?:[1-9][0-9]?)(?:\.[0-9]{1,3})?)$"
LAST_STATS = ("last_sum", "last_avg")
INSTANCE_TAG = "tags.instance_uuid"
"""What tells a telemetry app's instances apart unless a query names another tag."""
DISTINCT_PRECISION = (
    "distinct counts (instances, distinct:<field>) are exact on the embedded store; on"
    " Elasticsearch a HyperLogLog++ estimate, exact below 3,000 distinct values per row"
    " and within a few percent above"
)
LAST_PRECISION = (
    "last_sum/last_avg are exact on the embedded store; on Elasticsearch exact while a row"
    " holds at most 10,000 instances (the instances past that are left out)"
)
HORIZON_PATTERN = r"^[1-9][0-9]{0,2}[hd]$"
MAX_FORECAST_BUCKETS = 2_000
RANGE_PRESET = r"^(today|yesterday|week|month|year|[1-9][0-9]{0,2}(?:[hd]|min))$"
MAX_LIMIT = 10_000
MAX_DIMENSIONS = 8
MAX_FILTER_VALUES = 100
MAX_FILTERS = 50  # per list: the top level, and each and/or
MAX_FILTER_DEPTH = 8  # filters inside and/or/not, counting the outermost as 1
MAX_FILTER_NODES = 200  # filters in the whole request, nested ones included
FILTER_OPS = ("is", "is_not", "contains", "matches", "gt", "lt", "and", "or", "not")
PRESETS = (
    "today, yesterday, week, month, year (calendar periods in tz), Nd (the last N days,"
    " today included), Nh (the last N hours, this one included) or Nmin (the last N"
    " minutes, up to now: what live subscriptions watch), N from 1 to 999"
)
VISITORS_PRECISION = (
    "exact on the embedded store; on Elasticsearch a HyperLogLog++ estimate, near exact"
    " below 3,000 distinct visitors per row and within a few percent above"
)

MAX_FUNNEL_STEPS = 10
MAX_VALUE_CHARS = 4096  # a filter's text value: at most 16 KiB of UTF-8, under Lucene's 32 KiB term
_SCALAR = {"type": ["string", "number", "boolean"], "maxLength": MAX_VALUE_CHARS}
_FIELD = {"type": "string", "minLength": 1, "maxLength": 200}
_MOMENT = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": 64},
        {"type": "integer", "minimum": EARLIEST_MS, "maximum": LATEST_MS},
    ]
}


def _filter_shape(ops: list[str], then: dict[str, Any]) -> dict[str, Any]:
    """One kind of filter, chosen by its operator: only that kind's shape is checked, so
    validating nested filters takes time linear in their number."""
    return {"if": {"prefixItems": [{"enum": ops}]}, "then": then}


QUERY_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Query",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "source": {
            "enum": list(SOURCES),
            "default": "all",
            "description": "ticks, access logs, or both (all); or metrics (points:"
            " telemetry, collectors, monitors); or visits (one summary per visit)",
        },
        "range": {
            "description": f"a preset: {PRESETS}; or from/to: a date (the whole day),"
            " an ISO 8601 timestamp, or epoch ms (an integer, or text); supported: "
            + SUPPORTED_RANGE,
            "default": "30d",
            "oneOf": [
                {"type": "string", "pattern": RANGE_PRESET},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["from"],
                    "properties": {
                        "from": _MOMENT,
                        "to": _MOMENT,
                    },
                },
            ],
        },
        "tz": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "default": "UTC",
            "description": "IANA time zone for dates, presets and time buckets",
        },
        "metrics": {
            "type": "array",
            "minItems": 1,
            "maxItems": 20,
            "default": ["events"],
            "items": {
                "oneOf": [
                    {"enum": list(SIMPLE_METRICS)},
                    {
                        "type": "object",
                        "minProperties": 1,
                        "maxProperties": 1,
                        "propertyNames": {"pattern": STAT_PATTERN},
                        "additionalProperties": _FIELD,
                    },
                    {
                        "type": "object",
                        "description": "the last value of a field per instance, summed or"
                        f" averaged over instances (instance: a tag, default {INSTANCE_TAG})",
                        "minProperties": 1,
                        "maxProperties": 2,
                        "additionalProperties": False,
                        "properties": {
                            "last_sum": _FIELD,
                            "last_avg": _FIELD,
                            "instance": _FIELD,
                        },
                        "oneOf": [{"required": ["last_sum"]}, {"required": ["last_avg"]}],
                    },
                ]
            },
        },
        "dimensions": {
            "type": "array",
            "maxItems": MAX_DIMENSIONS,
            "default": [],
            "items": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "description": "time:hour|day|week|month, a field, or params.<name>",
            },
        },
        "filters": {
            "type": "array",
            "maxItems": MAX_FILTERS,
            "default": [],
            "items": {"$ref": "#/$defs/filter"},
        },
        "order_by": {
            "type": "array",
            "maxItems": 10,
            "items": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "prefixItems": [
                    {"type": "string", "minLength": 1, "maxLength": 200},
                    {"enum": ["asc", "desc"]},
                ],
            },
        },
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
        "after": {
            "type": ["string", "null"],
            "maxLength": 4096,
            "description": "meta.next of the previous page",
        },
        "compare": {"enum": [None, "previous_period"], "default": None},
        "rollups": {
            "enum": ["auto", "off"],
            "default": "auto",
            "description": "metrics: auto answers from an app's rollup when that gives the"
            " same answer as its raw points; off always reads raw points",
        },
        "bots": {
            "enum": ["exclude", "include"],
            "default": "exclude",
            "description": "known crawlers and referrer spam are left out unless included",
        },
        "funnel": {
            "type": ["object", "null"],
            "default": None,
            "description": "visits source: ordered steps (a page, an event, filters on"
            " events), counted within a visit or within a window for a visitor (journeys"
            " guide)",
            "additionalProperties": False,
            "required": ["steps"],
            "properties": {
                "steps": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": MAX_FUNNEL_STEPS,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "minProperties": 1,
                        "anyOf": [
                            {"required": ["page"]},
                            {"required": ["event"]},
                            {"required": ["filters"]},
                        ],
                        "properties": {
                            "page": {**_FIELD, "maxLength": MAX_VALUE_CHARS},
                            "event": {
                                **_FIELD,
                                "description": "an event kind (view, download, ...) or a"
                                " typed event's name",
                            },
                            "filters": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_FILTERS,
                                "items": {"$ref": "#/$defs/filter"},
                                "description": "filters on the visit's events (as in"
                                " /query on ticks and logs), all of which hold",
                            },
                            "name": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 200,
                                "description": "a label for the step",
                            },
                            "next": {
                                "type": "boolean",
                                "default": False,
                                "description": "the very next page or step event (else:"
                                " eventually)",
                            },
                        },
                    },
                },
                "within": {
                    "type": "string",
                    "pattern": r"^(visit|[1-9][0-9]{0,2}[hd])$",
                    "default": "visit",
                    "description": "visit, or a window from the first step: Nh or Nd",
                },
            },
        },
        "flow": {
            "type": ["object", "null"],
            "default": None,
            "description": "visits source: the paths of up to depth pages after a page, as"
            " a tree with counts",
            "additionalProperties": False,
            "required": ["page"],
            "properties": {
                "page": {**_FIELD, "maxLength": MAX_VALUE_CHARS},
                "depth": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
            },
        },
        "forecast": {
            "type": ["object", "null"],
            "default": None,
            "description": "predict the next buckets of a time series (one time dimension):"
            " values with an interval, from a seasonal model of the range's buckets",
            "additionalProperties": False,
            "required": ["horizon"],
            "properties": {
                "horizon": {
                    "type": "string",
                    "pattern": HORIZON_PATTERN,
                    "description": "how far ahead: Nh or Nd, N from 1 to 999",
                },
                "coverage": {
                    "type": "number",
                    "minimum": 0.5,
                    "maximum": 0.99,
                    "default": 0.8,
                    "description": "the share of outcomes the interval should hold",
                },
            },
        },
    },
    "$defs": {
        "filter": {
            "description": "[is|is_not|contains|matches, field, [values]]; [gt|lt, field,"
            f" number]; [and|or, [filters]]; [not, filter]; at most {MAX_FILTER_DEPTH} deep"
            f" and {MAX_FILTER_NODES} filters in a request",
            "type": "array",
            "minItems": 2,
            "maxItems": 3,
            "prefixItems": [{"enum": list(FILTER_OPS)}],
            "allOf": [
                _filter_shape(
                    ["is", "is_not", "contains", "matches"],
                    {
                        "minItems": 3,
                        "items": False,
                        "prefixItems": [
                            True,
                            _FIELD,
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_FILTER_VALUES,
                                "items": _SCALAR,
                            },
                        ],
                    },
                ),
                _filter_shape(
                    ["gt", "lt"],
                    {
                        "minItems": 3,
                        "items": False,
                        "prefixItems": [True, _FIELD, {"type": "number"}],
                    },
                ),
                _filter_shape(
                    ["and", "or"],
                    {
                        "maxItems": 2,
                        "items": False,
                        "prefixItems": [
                            True,
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_FILTERS,
                                "items": {"$ref": "#/$defs/filter"},
                            },
                        ],
                    },
                ),
                _filter_shape(
                    ["not"],
                    {
                        "maxItems": 2,
                        "items": False,
                        "prefixItems": [True, {"$ref": "#/$defs/filter"}],
                    },
                ),
            ],
        },
    },
}
_VALIDATOR = Draft202012Validator(QUERY_SCHEMA)


@dataclass(frozen=True, slots=True)
class ForecastSpec:
    """What to forecast: the buckets after ``history_end_ms`` (the start of the bucket
    holding now, or the range's end if earlier), with an interval holding ``coverage``."""

    horizon: str
    coverage: float
    history_end_ms: int
    starts: tuple[int, ...]  # the forecast buckets' starts


@dataclass(frozen=True, slots=True)
class Query:
    """A validated request: the normalized JSON and what to run."""

    normalized: dict[str, Any]
    group: GroupQuery
    order_by: tuple[tuple[str, bool], ...]  # (name, descending)
    limit: int
    after: str | None
    previous: GroupQuery | None
    fingerprint: str = field(default="")
    forecast: ForecastSpec | None = None
    steps: tuple[FilterNode | None, ...] = ()
    """A funnel's steps on events (``None``: a step on a page, read from the visits)."""


# --- parsing ---------------------------------------------------------------------------


def _path(error_path: Any) -> str:
    text = "query"
    for part in error_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _schema_error(body: Any) -> InvalidQuery | None:
    errors = list(_VALIDATOR.iter_errors(body))
    if not errors:
        return None
    error = max(errors, key=relevance)  # the error itself, not one inside a oneOf
    where = _path(error.absolute_path)
    if error.validator == "additionalProperties" and error.absolute_path == error.path:
        allowed = ", ".join(error.schema.get("properties", {}))
        return InvalidQuery(f"{where}: {error.message}; allowed: {allowed}", field=where)
    path = list(error.absolute_path)
    if len(path) >= 2 and path[0] == "filters":
        top = f"query.filters[{path[1]}]"
        return InvalidQuery(
            f"{where}: {_short(error.message)}; a filter is [op, field, [values]] with op is,"
            " is_not, contains or matches; [gt|lt, field, number]; [and|or, [filters]]; or"
            " [not, filter]",
            field=top,
        )
    if error.validator == "oneOf" and where.startswith("query.metrics"):
        return InvalidQuery(
            f"{where}: a metric is one of {', '.join(SIMPLE_METRICS)}, or"
            ' {"sum"|"avg"|"min"|"max"|"distinct"|"p95"...: field}, or'
            ' {"last_sum"|"last_avg": field, "instance": tag}',
            field=where,
        )
    if error.validator == "oneOf" and where == "query.range":
        return InvalidQuery(
            f"{where}: give a preset ({PRESETS}) or"
            ' {"from": ..., "to": ...} with dates, ISO 8601 timestamps or epoch ms (integers'
            f" or text); supported: {SUPPORTED_RANGE}",
            field=where,
        )
    return InvalidQuery(f"{where}: {_short(error.message)}", field=where)


def _short(message: str) -> str:
    return message if len(message) < 300 else message[:300] + "..."


def _nesting_error(body: Any) -> InvalidQuery | None:
    """Filters nested too deep or too many, found before the schema is checked (and in
    time bounded by the limits, whatever the request's size)."""
    if not isinstance(body, dict):
        return None
    lists: list[tuple[str, list[Any]]] = []
    if isinstance(body.get("filters"), list):
        lists.append(("query.filters", body["filters"]))
    funnel = body.get("funnel")
    steps = funnel.get("steps") if isinstance(funnel, dict) else None
    if isinstance(steps, list):  # a funnel step's filters count too
        for n, step in enumerate(steps[: MAX_FUNNEL_STEPS + 1]):
            if isinstance(step, dict) and isinstance(step.get("filters"), list):
                lists.append((f"query.funnel.steps[{n}].filters", step["filters"]))
    nodes = 0
    for prefix, index, top in (
        (prefix, index, top) for prefix, found in lists for index, top in enumerate(found)
    ):
        todo = [(top, 1, f"{prefix}[{index}]")]
        while todo:
            raw, depth, where = todo.pop()
            nodes += 1
            if nodes > MAX_FILTER_NODES:
                return InvalidQuery(
                    f"{where}: a request has at most {MAX_FILTER_NODES} filters, nested ones"
                    " included",
                    field=f"{prefix}[{index}]",
                    limit=MAX_FILTER_NODES,
                )
            if depth > MAX_FILTER_DEPTH:
                return InvalidQuery(
                    f"{where}: filters nest at most {MAX_FILTER_DEPTH} deep (and, or, not)",
                    field=f"{prefix}[{index}]",
                    limit=MAX_FILTER_DEPTH,
                )
            if not isinstance(raw, list) or len(raw) != 2:
                continue
            if raw[0] == "not":
                todo.append((raw[1], depth + 1, f"{where}[1]"))
            elif raw[0] in ("and", "or") and isinstance(raw[1], list):
                todo.extend(
                    (item, depth + 1, f"{where}[1][{i}]")
                    for i, item in enumerate(raw[1][: MAX_FILTER_NODES + 1])
                )
    return None


def _field(name: str, datasets: tuple[str, ...], purpose: Any, where: str) -> FieldRef:
    try:
        return resolve(name, datasets, purpose)
    except UnknownField as exc:
        raise InvalidQuery(f"{where}: {exc}", field=where) from None


def _local_midnight(day: Any, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def _resolve_range(spec: Any, tz: ZoneInfo, now_ms: int) -> tuple[int, int, tuple[int, int]]:
    """``(start, end, previous period)`` in epoch ms for a preset or from/to."""
    now = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(tz)
    today = now.date()
    if isinstance(spec, dict):
        try:
            start = parse_moment("from", spec["from"], tz, end=False)
            end = parse_moment("to", spec["to"], tz, end=True) if spec.get("to") else now_ms + 1
        except InvalidParameter as exc:  # from the parser /tock and /reports share
            raise InvalidQuery(f"query.range: {exc.message}", field="query.range") from None
        if start >= end:
            raise InvalidQuery("query.range: 'from' must be before 'to'", field="query.range")
        return start, end, (start - (end - start), start)
    unit = spec[-1]
    if spec in ("today", "yesterday"):
        day = today if spec == "today" else today - timedelta(days=1)
        return (
            _local_midnight(day, tz),
            _local_midnight(day + timedelta(days=1), tz),
            (_local_midnight(day - timedelta(days=1), tz), _local_midnight(day, tz)),
        )
    if spec == "week":
        monday = today - timedelta(days=today.weekday())
        return (
            _local_midnight(monday, tz),
            _local_midnight(monday + timedelta(days=7), tz),
            (_local_midnight(monday - timedelta(days=7), tz), _local_midnight(monday, tz)),
        )
    if spec == "month":
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        before = (first - timedelta(days=1)).replace(day=1)
        return (
            _local_midnight(first, tz),
            _local_midnight(following, tz),
            (_local_midnight(before, tz), _local_midnight(first, tz)),
        )
    if spec == "year":
        first = today.replace(month=1, day=1)
        return (
            _local_midnight(first, tz),
            _local_midnight(first.replace(year=first.year + 1), tz),
            (_local_midnight(first.replace(year=first.year - 1), tz), _local_midnight(first, tz)),
        )
    if spec.endswith("min"):  # the last N minutes, up to this millisecond
        span = int(spec[:-3]) * 60_000
        return now_ms + 1 - span, now_ms + 1, (now_ms + 1 - 2 * span, now_ms + 1 - span)
    count = int(spec[:-1])
    if unit == "d":  # the last N days, today included
        end = _local_midnight(today + timedelta(days=1), tz)
        start = _local_midnight(today - timedelta(days=count - 1), tz)
        previous = (_local_midnight(today - timedelta(days=2 * count - 1), tz), start)
        return start, end, previous
    hour_ms = 3_600_000
    end = (now_ms // hour_ms + 1) * hour_ms  # the last N hours, this one included
    start = end - count * hour_ms
    return start, end, (start - count * hour_ms, start)


def iso_moment(ms: int, tz: ZoneInfo) -> str:
    """Epoch ms as ISO 8601 in ``tz`` (millisecond precision, with the offset)."""
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(tz).isoformat(timespec="milliseconds")
    )


def _visit_metric(raw: str, datasets: tuple[str, ...], where: str) -> MetricSpec:
    if datasets != SOURCES["visits"]:
        raise InvalidQuery(
            f'{where}: {raw} is a metric of visits: ask it with "source": "visits"', field=where
        )
    kind, name = VISIT_METRICS[raw]
    if name is None:
        return MetricSpec(raw, "count")
    return MetricSpec(raw, kind, _field(name, datasets, "number", where))  # type: ignore[arg-type]


def _metric(raw: Any, datasets: tuple[str, ...], where: str) -> tuple[MetricSpec, Any]:
    if isinstance(raw, str) and raw in VISIT_METRICS:
        return _visit_metric(raw, datasets, where), raw
    if isinstance(raw, str):
        if raw == "events":
            return MetricSpec("events", "count"), raw
        if raw == "instances":
            ref = _field(INSTANCE_TAG, datasets, "dimension", where)
            return MetricSpec(raw, "distinct", ref), raw
        if raw in ("visitors", "items"):
            name = "visitor.id" if raw == "visitors" else "item.id"
            return MetricSpec(raw, "distinct", _field(name, datasets, "dimension", where)), raw
        if raw in TIME_METRICS:  # issue 25: when an error group was first and last seen
            return MetricSpec(raw, TIME_METRICS[raw], FieldRef(F.TIMESTAMP, "date")), raw  # type: ignore[arg-type]
        if raw == "bytes":
            ref = _field("bytes", datasets, "number", where)
            return MetricSpec("bytes", "sum", ref), raw
        ref = _field("status", datasets, "number", where)
        return MetricSpec("error_rate", "error_rate", ref), raw
    last = next((s for s in LAST_STATS if s in raw), None)
    if last is not None:
        ref = _field(raw[last], datasets, "number", where)
        instance = _field(raw.get("instance", INSTANCE_TAG), datasets, "dimension", where)
        name = f"{last}:{ref.name}"
        if instance.name != INSTANCE_TAG:
            name += f"@{instance.name}"
        spec = MetricSpec(name, last, ref, instance=instance)  # type: ignore[arg-type]
        return spec, {last: ref.name, "instance": instance.name}
    ((stat, name),) = raw.items()
    if stat == "distinct":
        ref = _field(name, datasets, "dimension", where)
        return MetricSpec(f"distinct:{ref.name}", "distinct", ref), {stat: ref.name}
    ref = _field(name, datasets, "number", where)
    canonical = f"{stat}:{ref.name}"
    if stat.startswith("p"):
        return MetricSpec(canonical, "percentile", ref, float(stat[1:])), {stat: ref.name}
    return MetricSpec(canonical, stat, ref), {stat: ref.name}


def _dimension(raw: str, datasets: tuple[str, ...], where: str) -> DimensionSpec:
    if raw.startswith("time:"):
        interval = raw[5:]
        if interval not in ("minute", "hour", "day", "week", "month"):
            raise InvalidQuery(
                f"{where}: time dimensions are time:minute, time:hour, time:day, time:week"
                f" and time:month, not {raw!r}",
                field=where,
            )
        return DimensionSpec(raw, interval=interval)  # type: ignore[arg-type]
    if resolve_alias(raw) in ("@timestamp", "event.ingested"):
        raise InvalidQuery(
            f"{where}: group by time with time:minute, time:hour, time:day, time:week or"
            " time:month",
            field=where,
        )
    ref = _field(raw, datasets, "dimension", where)
    return DimensionSpec(ref.name, field=ref)


def _values(ref: FieldRef, values: list[Any], where: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for value in values:
        if ref.kind == "boolean":
            if not isinstance(value, bool):
                raise InvalidQuery(
                    f"{where}: {ref.name} is true or false, not {value!r}", field=where
                )
        elif ref.kind in ("integer", "number"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidQuery(f"{where}: {ref.name} takes numbers, not {value!r}", field=where)
            if abs(value) > 2**53:
                raise InvalidQuery(f"{where}: {value!r} is out of range", field=where)
        elif ref.param:  # parameters are stored as text: compare as text
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, int | float):
                value = str(value)
        elif not isinstance(value, str):
            raise InvalidQuery(f"{where}: {ref.name} takes text values, not {value!r}", field=where)
        out.append(value)
    return tuple(out)


def _filter(raw: list[Any], datasets: tuple[str, ...], where: str) -> tuple[FilterNode, list[Any]]:
    op = raw[0]
    if op in ("and", "or"):
        nodes, normalized = [], []
        for index, item in enumerate(raw[1]):
            node, norm = _filter(item, datasets, f"{where}[1][{index}]")
            nodes.append(node)
            normalized.append(norm)
        return BoolNode(op, tuple(nodes)), [op, normalized]
    if op == "not":
        node, norm = _filter(raw[1], datasets, f"{where}[1]")
        return BoolNode("not", (node,)), ["not", norm]
    purpose = {"contains": "text", "matches": "text", "gt": "number", "lt": "number"}.get(
        op, "filter"
    )
    ref = _field(raw[1], datasets, purpose, f"{where}[1]")
    if op in ("gt", "lt"):
        if abs(raw[2]) > 1e300:
            raise InvalidQuery(f"{where}[2]: {raw[2]!r} is out of range", field=where)
        return Leaf(op, ref, (raw[2],)), [op, ref.name, raw[2]]
    values = _values(ref, raw[2], f"{where}[2]")
    if op in ("contains", "matches") and any(not isinstance(v, str) or not v for v in values):
        raise InvalidQuery(f"{where}[2]: {op} takes non-empty text", field=where)
    return Leaf(op, ref, values), [op, ref.name, list(values)]


def parse_query(
    body: Any, now_ms: int | None = None, typed: Mapping[str, str] | None = None
) -> Query:
    """Validate a ``/query`` request and resolve it. Raises :class:`InvalidQuery`.

    ``typed``: the typed events' fields and their kinds (``typed.<name>`` may be used)."""
    with typed_fields(typed or {}):
        return _parse_query(body, now_ms)


def _parse_query(body: Any, now_ms: int | None) -> Query:
    error = _nesting_error(body) or _schema_error(body)
    if error is not None:
        raise error
    now = int(time.time() * 1000) if now_ms is None else now_ms
    source = body.get("source", "all")
    datasets = SOURCES[source]
    if datasets == SOURCES["insights"]:  # insights are no visits: no crawlers, no spam
        body = {**body, "bots": "include"}
    if datasets == SOURCES["visits"]:  # crawlers and referrer spam get no visits at all
        body = {**body, "bots": "include"}
    tz_name = body.get("tz", "UTC")
    try:
        tz = parse_zone("tz", tz_name)
    except InvalidParameter:
        raise InvalidQuery(
            f"query.tz: {tz_name!r} is not an IANA time zone such as Europe/Berlin",
            field="query.tz",
        ) from None
    range_spec = body.get("range", "30d")
    start, end, previous = _resolve_range(range_spec, tz, now)
    if body.get("compare") and previous[0] < EARLIEST_MS:
        raise InvalidQuery(
            "query.compare: the previous period would start before 0001-12-31T00:00Z, the"
            f" earliest supported moment ({SUPPORTED_RANGE})",
            field="query.compare",
        )

    metrics: list[MetricSpec] = []
    metric_json: list[Any] = []
    for index, raw in enumerate(body.get("metrics", ["events"])):
        spec, norm = _metric(raw, datasets, f"query.metrics[{index}]")
        if spec.name in {m.name for m in metrics}:
            raise InvalidQuery(
                f"query.metrics[{index}]: {spec.name} is asked twice",
                field=f"query.metrics[{index}]",
            )
        metrics.append(spec)
        metric_json.append(norm)
    dimensions: list[DimensionSpec] = []
    for index, raw in enumerate(body.get("dimensions", [])):
        dim = _dimension(raw, datasets, f"query.dimensions[{index}]")
        if dim.name in {d.name for d in dimensions} or (
            dim.interval and any(d.interval for d in dimensions)
        ):
            raise InvalidQuery(
                f"query.dimensions[{index}]: {raw!r} repeats a dimension",
                field=f"query.dimensions[{index}]",
            )
        dimensions.append(dim)

    nodes, filter_json = [], []
    for index, raw in enumerate(body.get("filters", [])):
        node, norm = _filter(raw, datasets, f"query.filters[{index}]")
        nodes.append(node)
        filter_json.append(norm)
    bots = body.get("bots", "exclude")
    if bots == "exclude" and F.POINT_DATASET not in datasets:  # crawlers and referrer spam
        nodes.append(Leaf("is_not", resolve("bot", datasets, "filter"), (True,)))
        nodes.append(Leaf("is_not", resolve("referrer.spam", datasets, "filter"), (True,)))
    root: FilterNode | None = (
        None if not nodes else nodes[0] if len(nodes) == 1 else BoolNode("and", tuple(nodes))
    )

    names = [d.name for d in dimensions] + [m.name for m in metrics]
    order: list[tuple[str, bool]] = []
    for index, (name, direction) in enumerate(body.get("order_by") or []):
        canonical = _order_name(name, dimensions, metrics)
        if canonical is None:
            raise InvalidQuery(
                f"query.order_by[{index}]: {name!r} is not a dimension or metric of this"
                f" query ({', '.join(names)})",
                field=f"query.order_by[{index}]",
            )
        order.append((canonical, direction == "desc"))
    if not body.get("order_by"):
        if any(d.interval for d in dimensions) or not dimensions:
            order = [(d.name, False) for d in dimensions]
        else:
            order = [(metrics[0].name, True)]
    for d in dimensions:  # ties: by dimension values, so every answer has one order
        if d.name not in {n for n, _ in order}:
            order.append((d.name, False))

    interval = next((d.interval for d in dimensions if d.interval), None)
    starts: tuple[int, ...] = ()
    prev_starts: tuple[int, ...] = ()
    if interval:
        try:
            starts = tuple(bucket_starts(start, end, interval, tz))
            if body.get("compare"):
                prev_starts = tuple(bucket_starts(*previous, interval, tz))
        except ValueError:
            raise InvalidQuery(
                f"query.dimensions: the range holds more than {MAX_BUCKETS} {interval}"
                " buckets; choose a shorter range or a longer interval",
                field="query.dimensions",
            ) from None
    group = GroupQuery(
        datasets, start, end, tz.key, starts, tuple(dimensions), tuple(metrics), root
    )
    compare = body.get("compare")
    previous_group = None
    if compare:
        previous_group = GroupQuery(
            datasets,
            previous[0],
            previous[1],
            tz.key,
            prev_starts,
            tuple(dimensions),
            tuple(metrics),
            root,
        )
    forecast = _forecast(body.get("forecast"), dimensions, end, now, tz, bool(body.get("compare")))
    normalized = {
        "source": source,
        "range": {"from": iso_moment(start, tz), "to": iso_moment(end, tz)},
        "tz": tz.key,
        "metrics": metric_json,
        "dimensions": [d.name for d in dimensions],
        "filters": filter_json,
        "order_by": [[n, "desc" if desc else "asc"] for n, desc in order],
        "limit": int(body.get("limit", 100)),  # 569.0 is a whole number too
        "after": body.get("after"),
        "compare": compare,
        "bots": bots,
    }
    if forecast is not None:
        normalized["forecast"] = {"horizon": forecast.horizon, "coverage": forecast.coverage}
    journey, steps = _journey(body, datasets)
    normalized.update(journey)
    if "rollups" in body:
        normalized["rollups"] = body["rollups"]
    fingerprint_source = {k: v for k, v in normalized.items() if k not in ("after", "limit")}
    fingerprint = hashlib.sha256(
        orjson.dumps(fingerprint_source, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:16]
    return Query(
        normalized,
        group,
        tuple(order),
        normalized["limit"],
        body.get("after"),
        previous_group,
        fingerprint,
        forecast,
        steps,
    )


def _step(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], FilterNode | None]:
    """A funnel step, normalized, and its filter on events (None for a page alone, which
    the visit summaries answer)."""
    step: dict[str, Any] = {}
    if "name" in raw:
        step["name"] = raw["name"]
    if "page" in raw:
        step["page"] = raw["page"]
    if "event" not in raw and "filters" not in raw:
        return {**step, "next": bool(raw.get("next", False))}, None
    events = SOURCES["all"]
    nodes: list[FilterNode] = []
    if "page" in raw:
        # a view of the page, as the visits name pages (journeys.page_filter)
        view = ["and", [page_filter(F.ITEM_ID, F.URL_PATH, raw["page"]), page_views()]]
        nodes.append(_filter(view, events, f"{where}.page")[0])
    if "event" in raw:
        step["event"] = raw["event"]
        nodes.append(_filter(["is", "event", [raw["event"]]], events, f"{where}.event")[0])
    if "filters" in raw:
        step["filters"] = []
        for index, item in enumerate(raw["filters"]):
            node, norm = _filter(item, events, f"{where}.filters[{index}]")
            nodes.append(node)
            step["filters"].append(norm)
    step["next"] = bool(raw.get("next", False))
    return step, nodes[0] if len(nodes) == 1 else BoolNode("and", tuple(nodes))


def _journey(
    body: dict[str, Any], datasets: tuple[str, ...]
) -> tuple[dict[str, Any], tuple[FilterNode | None, ...]]:
    """A funnel or a flow (on visits), normalized, and a funnel's step filters on events;
    answered by reports/journeys.py."""
    journey: dict[str, Any] = {}
    nodes: tuple[FilterNode | None, ...] = ()
    if body.get("funnel"):
        parsed = [
            _step(s, f"query.funnel.steps[{n}]") for n, s in enumerate(body["funnel"]["steps"])
        ]
        nodes = tuple(node for _, node in parsed)
        journey["funnel"] = {
            "steps": [step for step, _ in parsed],
            "within": body["funnel"].get("within", "visit"),
        }
    if body.get("flow"):
        journey["flow"] = {"page": body["flow"]["page"], "depth": body["flow"].get("depth", 3)}
    if not journey:
        return journey, nodes
    where = f"query.{next(iter(journey))}"
    if len(journey) > 1:
        raise InvalidQuery(f"{where}: ask a funnel or a flow, not both", field=where)
    if datasets != SOURCES["visits"]:
        raise InvalidQuery(
            f'{where}: funnels and flows read visits: "source": "visits"', field=where
        )
    if body.get("compare") or body.get("forecast") or body.get("dimensions"):
        raise InvalidQuery(
            f"{where}: a funnel or flow takes a range, tz and filters only", field=where
        )
    return journey, nodes


def _forecast(
    spec: dict[str, Any] | None,
    dimensions: list[DimensionSpec],
    end: int,
    now: int,
    tz: ZoneInfo,
    compare: bool,
) -> ForecastSpec | None:
    """The forecast's buckets: a time series (one time dimension of hours, days or
    weeks, nothing else to group by, no comparison) continued for the horizon."""
    if not spec:
        return None
    where = "query.forecast"
    if len(dimensions) != 1 or dimensions[0].interval not in ("hour", "day", "week"):
        raise InvalidQuery(
            f"{where}: a forecast continues one time series: give exactly one dimension,"
            " time:hour, time:day or time:week",
            field=where,
        )
    if compare:
        raise InvalidQuery(f"{where}: a forecast and compare do not go together", field=where)
    interval = dimensions[0].interval
    horizon = str(spec["horizon"])
    horizon_ms = int(horizon[:-1]) * (3_600_000 if horizon[-1] == "h" else 86_400_000)
    now_bucket = floor_to_bucket(datetime.fromtimestamp(now / 1000, tz=UTC), interval, tz)
    history_end = min(end, int(now_bucket.timestamp() * 1000))
    if bucket_count(history_end, history_end + horizon_ms, interval, tz) > MAX_FORECAST_BUCKETS:
        raise InvalidQuery(
            f"{where}: the horizon holds more than {MAX_FORECAST_BUCKETS} {interval} buckets",
            field=where,
            limit=MAX_FORECAST_BUCKETS,
        )
    starts = bucket_starts(history_end, history_end + horizon_ms, interval, tz)
    return ForecastSpec(horizon, float(spec.get("coverage", 0.8)), history_end, tuple(starts))


def for_site(query: Query, site_id: str) -> Query:
    """``query`` limited to the documents of site ``site_id``: how every report is kept to
    its caller's site. The default site's also counts events stored before sites existed
    (no ``site.id``)."""
    return restrict(query, F.SITE_ID, site_id, or_missing=site_id == F.DEFAULT_SITE)


def restrict(query: Query, field_name: str, value: str, *, or_missing: bool = False) -> Query:
    """``query`` limited to documents whose ``field_name`` is ``value`` (and, with
    ``or_missing``, those without the field): how a caller is kept to its own site."""
    ref = resolve(field_name, query.group.datasets, "filter")
    node: FilterNode = Leaf("is", ref, (value,))
    if or_missing:
        node = BoolNode("or", (node, BoolNode("not", (Leaf("matches", ref, ("*",)),))))

    def narrowed(group: GroupQuery) -> GroupQuery:
        both = node if group.filter is None else BoolNode("and", (node, group.filter))
        return dataclasses.replace(group, filter=both)

    return dataclasses.replace(
        query,
        group=narrowed(query.group),
        previous=None if query.previous is None else narrowed(query.previous),
    )


def _order_name(
    name: str, dimensions: list[DimensionSpec], metrics: list[MetricSpec]
) -> str | None:
    for d in dimensions:
        if name == d.name or (d.field is not None and resolve_alias(name) == d.name):
            return d.name
    for m in metrics:
        if name == m.name:
            return m.name
        if ":" in name:
            stat, _, field_name = name.partition(":")
            if m.name == f"{stat}:{resolve_alias(field_name)}":
                return m.name
    return None


def resolve_alias(name: str) -> str:
    return ALIASES.get(name, name)
