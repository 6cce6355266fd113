"""Runs a :class:`~metronome.reports.query.Query` on a store and shapes the answer.

Two ways to read groups:

* **paged** -- when the order is the dimensions' own (ascending, in the order given, no
  time dimension): each page is read straight from the store after the last key of the
  previous one (composite aggregation ``after``), so any number of groups can be walked;
* **whole** -- otherwise (ordering by a metric, a time dimension to gap-fill, a
  comparison): every group is read (up to ``max_groups``), gaps are filled, rows sorted,
  and pages are slices of that order.

The cursor (``meta.next``) is opaque, tied to the query it came from.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from metronome.errors import InvalidCursor, InvalidQuery
from metronome.reports.forecast import forecast
from metronome.reports.journeys import run_journey
from metronome.reports.query import (
    DISTINCT_PRECISION,
    LAST_PRECISION,
    VISITORS_PRECISION,
    ForecastSpec,
    Query,
    iso_moment,
)
from metronome.reports.timebuckets import bucket_label
from metronome.store.base import GroupRow, Store
from metronome.store.query import GroupQuery, MetricSpec

__all__ = ["DEFAULT_MAX_GROUPS", "run_query"]

DEFAULT_MAX_GROUPS = 10_000
_DIGITS = 6


def _encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def _bad_cursor() -> InvalidCursor:
    return InvalidCursor(
        "query.after: not a cursor of this query; pass meta.next from the previous page"
        " with the same query (its normalized form has an absolute range)",
        field="query.after",
    )


def _decode_cursor(text: str, fingerprint: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        payload = None
    if not isinstance(payload, dict) or payload.get("q") != fingerprint:
        raise _bad_cursor()
    return payload


def _offset(cursor: dict[str, Any], max_offset: int) -> int:
    """The cursor's row offset (0 without a cursor): a whole number no larger than any
    answer can be."""
    if not cursor:
        return 0
    offset = cursor.get("o")
    if type(offset) is not int or not 0 < offset <= max_offset:
        raise _bad_cursor()
    return offset


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _after_keys(cursor: dict[str, Any], group: GroupQuery) -> tuple[Any, ...] | None:
    """The cursor's last keys, each of its dimension's type, or None on the first page."""
    if not cursor:
        return None
    keys = cursor.get("a")
    if not isinstance(keys, list) or len(keys) != len(group.dimensions):
        raise _bad_cursor()
    for dim, key in zip(group.dimensions, keys, strict=True):
        kind = dim.field.kind if dim.field is not None else None
        if key is None:
            continue
        if kind == "boolean":
            good = isinstance(key, bool)
        elif kind == "integer":
            good = type(key) is int and -(2**63) <= key < 2**63  # a long's range
        elif kind == "number":
            good = type(key) in (int, float) and abs(key) <= 2**53
        elif kind == "ip":
            good = isinstance(key, str) and _is_ip(key)
        elif kind == "date":
            good = (type(key) is int and abs(key) <= 2**53) or isinstance(key, str)
        else:
            good = isinstance(key, str) and len(key) <= 32_766  # a keyword's longest
        if not good:
            raise _bad_cursor()
    return tuple(keys)


def _zero(metric: MetricSpec) -> Any:
    if metric.kind in ("count", "distinct", "sum", "last_sum"):
        return 0
    return (0, 0) if metric.kind == "error_rate" else None


def _final(metric: MetricSpec, value: Any) -> Any:
    """The answer's value: ratios computed, floats rounded, whole numbers as integers."""
    if metric.kind == "error_rate":
        errors, total = value
        return round(errors / total, _DIGITS) if total else None
    if value is None:
        return None
    if metric.field is not None and metric.field.kind == "date":  # epoch ms: shown in tz
        return int(value)
    if metric.kind in ("count", "distinct"):
        return int(value)
    if (
        metric.field is not None
        and metric.field.kind == "integer"
        and metric.kind in ("sum", "min", "max")
    ):
        return int(round(value))
    return round(float(value), _DIGITS)


def _fill(query: GroupQuery, rows: list[GroupRow]) -> list[GroupRow]:
    """Zero rows for the time buckets a series has no documents in."""
    slot = next((i for i, d in enumerate(query.dimensions) if d.interval), None)
    if slot is None:
        return rows
    zeros = tuple(_zero(m) for m in query.metrics)
    seen = {keys for keys, _ in rows}
    series = {keys[:slot] + keys[slot + 1 :] for keys, _ in rows}
    if len(query.dimensions) == 1:
        series = {()}
    filled = list(rows)
    for other in series:
        for start in query.bucket_starts:
            keys = other[:slot] + (start,) + other[slot:]
            if keys not in seen:
                filled.append((keys, zeros))
    return filled


def _sort(
    rows: list[dict[str, Any]],
    order: tuple[tuple[str, bool], ...],
    positions: dict[str, tuple[str, int]],
) -> None:
    """Stable multi-key sort; a missing value (None) is the smallest, as in the store."""
    for name, descending in reversed(order):
        part, index = positions[name]

        def key(row: dict[str, Any], part: str = part, index: int = index) -> tuple[bool, Any]:
            value = row[part][index]
            return value is not None, value

        rows.sort(key=key, reverse=descending)


def _finish(query: GroupQuery, rows: list[GroupRow]) -> list[dict[str, Any]]:
    return [
        {
            "keys": keys,
            "metrics": [_final(m, v) for m, v in zip(query.metrics, values, strict=True)],
        }
        for keys, values in rows
    ]


async def _whole(store: Store, query: GroupQuery, max_groups: int) -> list[dict[str, Any]]:
    rows = await store.groups(query, after=None, limit=max_groups + 1)
    if len(rows) > max_groups:
        raise InvalidQuery(
            f"the answer has more than {max_groups} rows; add filters, use fewer"
            " dimensions, or order by the dimensions (without a time dimension) to page"
            " through any number of rows",
            field="query.dimensions",
        )
    rows = _fill(query, rows)
    if len(rows) > max_groups:
        raise InvalidQuery(
            f"filling the time series gives more than {max_groups} rows; choose a shorter"
            " range, a longer interval or fewer dimensions",
            field="query.dimensions",
        )
    return _finish(query, rows)


def _match_key(query: GroupQuery, keys: tuple[Any, ...]) -> tuple[Any, ...]:
    """Keys with time buckets as their position, so a period lines up with the previous."""
    out = []
    for dim, key in zip(query.dimensions, keys, strict=True):
        out.append(query.bucket_starts.index(key) if dim.interval else key)
    return tuple(out)


def _change(current: Any, previous: Any) -> float | None:
    if current is None or previous in (None, 0):
        return None
    change: float = round((current - previous) / abs(previous), 4)
    return change


_TOP_KINDS = ("count", "distinct", "sum", "avg", "min", "max")


def _top_metric(query: Query) -> tuple[int, bool] | None:
    """``(metric, descending)`` when the store can rank the groups itself: one keyword
    dimension ordered by a plain metric, nothing to compare. Top items of a catalogue of
    any size are then one search (or one SQL statement), not every group read."""
    group = query.group
    if (
        len(group.dimensions) != 1
        or group.dimensions[0].field is None
        or group.dimensions[0].field.kind != "keyword"
        or query.previous is not None
    ):
        return None
    name, descending = query.order_by[0]
    for index, metric in enumerate(group.metrics):
        if metric.name == name and metric.kind in _TOP_KINDS:
            return index, descending
    return None


async def run_query(
    store: Store, query: Query, *, max_groups: int = DEFAULT_MAX_GROUPS
) -> dict[str, Any]:
    """The ``/query`` answer: ``{"results": [...], "meta": {...}, "query": {...}}``."""
    if "funnel" in query.normalized or "flow" in query.normalized:  # journeys (issue 25)
        return await run_journey(store, query.group, query.normalized, query.steps)
    group = query.group
    dims = group.dimensions
    positions = {d.name: ("keys", i) for i, d in enumerate(dims)}
    positions.update({m.name: ("metrics", i) for i, m in enumerate(group.metrics)})
    cursor = _decode_cursor(query.after, query.fingerprint) if query.after else {}
    paged = (
        bool(dims)
        and not any(d.interval for d in dims)
        and query.previous is None
        and list(query.order_by) == [(d.name, False) for d in dims]
    )
    next_cursor: str | None = None
    top = _top_metric(query)
    if top is not None and not paged:
        offset = _offset(cursor, max_groups)
        metric, descending = top
        raw = await store.top(
            group, metric=metric, descending=descending, size=offset + query.limit + 1
        )
        if offset and len(raw) <= offset:  # a cursor never points past the last row
            raise _bad_cursor()
        page = _finish(group, raw[offset : offset + query.limit])
        if len(raw) > offset + query.limit and offset + query.limit <= max_groups:
            next_cursor = _encode_cursor({"q": query.fingerprint, "o": offset + query.limit})
        total = None
    elif paged:
        after = _after_keys(cursor, group)
        raw = await store.groups(group, after=after, limit=query.limit + 1)
        page = _finish(group, raw[: query.limit])
        if len(raw) > query.limit:
            next_cursor = _encode_cursor(
                {"q": query.fingerprint, "a": list(raw[query.limit - 1][0])}
            )
        total = None
    else:
        rows = await _whole(store, group, max_groups)
        if query.forecast is not None:
            predicted = _forecast(group, rows, query.forecast)
        _sort(rows, query.order_by, positions)
        offset = _offset(cursor, max_groups)
        if offset and len(rows) <= offset:
            raise _bad_cursor()
        page = rows[offset : offset + query.limit]
        if offset + query.limit < len(rows):
            next_cursor = _encode_cursor({"q": query.fingerprint, "o": offset + query.limit})
        total = len(rows)
        if query.previous is not None:
            before = await _whole(store, query.previous, max_groups)
            by_key = {_match_key(query.previous, r["keys"]): r["metrics"] for r in before}
            zeros = [_final(m, _zero(m)) for m in group.metrics]
            for row in page:
                previous = by_key.get(_match_key(group, row["keys"]), zeros)
                row["previous"] = previous
                row["change"] = [
                    _change(c, p) for c, p in zip(row["metrics"], previous, strict=True)
                ]

    tz = ZoneInfo(group.tz)
    results = []
    for row in page:
        labels = [
            bucket_label(key, dim.interval, tz) if dim.interval else key
            for dim, key in zip(dims, row["keys"], strict=True)
        ]
        result = {"dimensions": labels, "metrics": _moments(group, row["metrics"], tz)}
        if "previous" in row:
            result["previous"] = _moments(group, row["previous"], tz)
            result["change"] = row["change"]
        results.append(result)

    meta: dict[str, Any] = {
        "dimensions": [d.name for d in dims],
        "metrics": [m.name for m in group.metrics],
        "range": query.normalized["range"],
        "tz": group.tz,
        "rows": len(results),
        "total_rows": total,
        "next": next_cursor,
    }
    if query.previous is not None:
        meta["previous_range"] = {
            "from": iso_moment(query.previous.start_ms, tz),
            "to": iso_moment(query.previous.end_ms, tz),
        }
    if any(m.name == "visitors" for m in group.metrics):
        meta["visitors_precision"] = VISITORS_PRECISION
    if any(m.kind in ("last_sum", "last_avg") for m in group.metrics):
        meta["last_precision"] = LAST_PRECISION
    if any(m.kind == "distinct" and m.name != "visitors" for m in group.metrics):
        meta["distinct_precision"] = DISTINCT_PRECISION
    answer: dict[str, Any] = {"results": results}
    if query.forecast is not None:
        rows_out, meta["forecast"] = predicted
        interval = dims[0].interval or "day"
        answer["forecast"] = [
            {**row, "dimensions": [bucket_label(row["dimensions"][0], interval, tz)]}
            for row in rows_out
        ]
    if any(m.kind == "percentile" for m in group.metrics):
        meta["percentiles"] = (
            "exact with linear interpolation on the embedded store; a"
            " t-digest estimate on Elasticsearch"
        )
    answer.update(meta=meta, query=query.normalized)
    return answer


def _moments(group: GroupQuery, values: list[Any], tz: ZoneInfo) -> list[Any]:
    """Time metrics (first_seen, last_seen) as ISO 8601 in the query's time zone."""
    return [
        iso_moment(v, tz) if v is not None and m.field is not None and m.field.kind == "date" else v
        for m, v in zip(group.metrics, values, strict=True)
    ]


_STEP_S = {"hour": 3600.0, "day": 86_400.0, "week": 604_800.0}


def _forecast(
    group: GroupQuery, rows: list[dict[str, Any]], spec: ForecastSpec
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Forecast rows (bucket start, values, low, high per metric) and their meta, from
    the series' complete buckets before ``spec.history_end_ms`` (gaps already filled)."""
    history = sorted(
        (r for r in rows if r["keys"][0] is not None and r["keys"][0] < spec.history_end_ms),
        key=lambda r: r["keys"][0],
    )
    interval = group.dimensions[0].interval or "day"
    per_metric = []
    seasons = 1
    for index, metric in enumerate(group.metrics):
        values = [r["metrics"][index] for r in history]
        known = sorted(v for v in values if v is not None)
        fill = known[len(known) // 2] if known else 0.0  # a bucket without a value: the median
        result = forecast(
            [fill if v is None else float(v) for v in values],
            _STEP_S[interval],
            len(spec.starts),
            coverage=spec.coverage,
        )
        seasons = max(seasons, result.season_points)
        integer = metric.kind in ("count", "distinct")
        per_metric.append(
            [
                [_shape(v, integer) for v in series]
                for series in (result.predicted, result.low, result.high)
            ]
        )
    out = [
        {
            "dimensions": [start],
            "metrics": [m[0][i] for m in per_metric],
            "low": [m[1][i] for m in per_metric],
            "high": [m[2][i] for m in per_metric],
        }
        for i, start in enumerate(spec.starts)
    ]
    season = {1: None, 24: "day", 7: "week", 168: "week"}.get(seasons, f"{seasons} buckets")
    meta = {
        "horizon": spec.horizon,
        "coverage": spec.coverage,
        "buckets": len(spec.starts),
        "history_buckets": len(history),
        "season": season,
        "model": "median seasonal profile on a deseasonalised recent level; interval from"
        " the model's own errors on the history (see docs/guides/insights.md)",
    }
    return out, meta


def _shape(value: float, integer: bool) -> float:
    """Counts cannot go below zero; values are rounded like the rest of the answer."""
    if integer:
        value = max(value, 0.0)
    return round(value, 3 if integer else _DIGITS)
