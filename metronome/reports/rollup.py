"""Rollups in the one query model: what rolling a bucket reads, and answering from rollups.

A rollup (declared per app: ``enabled_feature every 1h sum,max``) keeps, per bucket and
combination of its tags, the count of points and the sum, min, max or last value of each
field (:func:`~metronome.events.point.rollup_document`). Both directions are ordinary
:class:`~metronome.store.query.GroupQuery` values, so each store's one compiler runs them:

- :func:`roll_query` reads raw points of one metric for whole buckets, grouped by bucket,
  site and the kept tags: its rows become rollup documents (:func:`rollup_documents`);
- :func:`touched_query` finds the earliest point stored since the last pass (late points
  included), from where buckets are rolled again;
- :func:`from_rollup` answers a ``/query`` from a rollup instead of raw points when that
  gives the same answer: one app and metric, only kept tags (and site) in dimensions and
  filters, time buckets and range on the rollup's bucket edges and already rolled, and
  metrics the rollup keeps (``events``, ``sum``/``min``/``max`` of fields it keeps, distinct
  counts of kept tags, ``last_sum``/``last_avg`` by a kept instance tag when it keeps
  ``last``: each rollup document is stamped with its last point's time). Anything else is
  answered from raw points, as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from metronome.events import fields as F
from metronome.events.document import Document, format_timestamp, parse_iso_ms
from metronome.events.point import rollup_document
from metronome.reports.query import Query
from metronome.reports.timebuckets import EARLIEST_MS, bucket_starts, parse_zone
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
    "UNIT_MS",
    "RollupSource",
    "bucket_floor",
    "from_rollup",
    "points_in",
    "roll_query",
    "rollup_documents",
    "rollups_in",
    "touched_query",
]

UNIT_MS = {"hour": 3_600_000, "day": 86_400_000}
_APP = FieldRef(F.APP, "keyword")
_METRIC = FieldRef(F.METRIC_NAME, "keyword")
_SITE = FieldRef(F.SITE_ID, "keyword")
_COUNT = FieldRef(F.ROLLUP_COUNT, "integer")
_COARSER = {"hour": ("hour", "day", "week", "month"), "day": ("day", "week", "month")}


@dataclass(frozen=True, slots=True)
class RollupSource:
    """One declared rollup of one app, and up to when it is complete (``rolled_ms``:
    every bucket ending by then holds every point)."""

    app: str
    metric: str
    interval: str  # "hour" or "day"
    stats: tuple[str, ...]
    tags: tuple[str, ...]
    rolled_ms: int = EARLIEST_MS


def bucket_floor(ms: int, interval: str) -> int:
    unit = UNIT_MS[interval]
    return ms - ms % unit


def _only(source: RollupSource) -> FilterNode:
    return BoolNode(
        "and",
        (Leaf("is", _APP, (source.app,)), Leaf("is", _METRIC, (source.metric,))),
    )


def touched_query(source: RollupSource, since_ms: int, now_ms: int) -> GroupQuery:
    """The earliest ``@timestamp`` (metric ``m0``) of the rollup's points stored since
    ``since_ms`` (their ``event.ingested``)."""
    ingested = Leaf("gt", FieldRef(F.EVENT_INGESTED, "date"), (format_timestamp(since_ms),))
    return GroupQuery(
        datasets=(F.POINT_DATASET,),
        start_ms=EARLIEST_MS,
        end_ms=now_ms + UNIT_MS["day"],
        tz="UTC",
        bucket_starts=(),
        dimensions=(),
        metrics=(MetricSpec("first", "min", FieldRef(F.TIMESTAMP, "date")),),
        filter=BoolNode("and", (_only(source), ingested)),
    )


def roll_query(
    source: RollupSource, start_ms: int, end_ms: int, fields: Sequence[str]
) -> GroupQuery:
    """Raw points of the rollup's metric in ``[start_ms, end_ms)`` (bucket edges), by
    bucket, site and kept tags: ``events``, then per field its min (which also says
    whether the field is there) and the stats kept."""
    dims = [
        DimensionSpec(f"time:{source.interval}", interval=source.interval),  # type: ignore[arg-type]
        DimensionSpec(F.SITE_ID, field=_SITE),
        *(DimensionSpec(f"tags.{t}", field=FieldRef(f"tags.{t}", "keyword")) for t in source.tags),
    ]
    metrics = [MetricSpec("events", "count")]
    for name in fields:
        ref = FieldRef(f"fields.{name}", "number")
        metrics.append(MetricSpec(f"min:{name}", "min", ref))
        if "sum" in source.stats or "avg" in source.stats:
            metrics.append(MetricSpec(f"sum:{name}", "sum", ref))
        if "max" in source.stats:
            metrics.append(MetricSpec(f"max:{name}", "max", ref))
        if "last" in source.stats:
            # the last value of the group: "instance" is the metric name, the same for all
            metrics.append(MetricSpec(f"last:{name}", "last_sum", ref, instance=_METRIC))
    metrics.append(MetricSpec("at", "max", FieldRef(F.TIMESTAMP, "date")))  # the last point
    starts = tuple(bucket_starts(start_ms, end_ms, source.interval, parse_zone("tz", "UTC")))  # type: ignore[arg-type]
    return GroupQuery(
        datasets=(F.POINT_DATASET,),
        start_ms=start_ms,
        end_ms=end_ms,
        tz="UTC",
        bucket_starts=starts,
        dimensions=tuple(dims),
        metrics=tuple(metrics),
        filter=_only(source),
    )


def points_in(source: RollupSource, start_ms: int, end_ms: int) -> GroupQuery:
    """The raw points of ``source``'s metric in ``[start_ms, end_ms)``."""
    return GroupQuery(
        datasets=(F.POINT_DATASET,),
        start_ms=start_ms,
        end_ms=end_ms,
        tz="UTC",
        bucket_starts=(),
        dimensions=(),
        metrics=(MetricSpec("events", "count"),),
        filter=_only(source),
    )


def rollups_in(source: RollupSource, start_ms: int, end_ms: int) -> GroupQuery:
    """The rollup documents of ``source`` in ``[start_ms, end_ms)`` (to delete before
    rolling those buckets again)."""
    kept = Leaf("is", FieldRef(F.ROLLUP_INTERVAL, "keyword"), (source.interval,))
    return GroupQuery(
        datasets=(F.ROLLUP_DATASET,),
        start_ms=start_ms,
        end_ms=end_ms,
        tz="UTC",
        bucket_starts=(),
        dimensions=(),
        metrics=(MetricSpec("events", "count"),),
        filter=BoolNode("and", (_only(source), kept)),
    )


def rollup_documents(
    source: RollupSource, query: GroupQuery, rows: Iterable[tuple[tuple[Any, ...], tuple[Any, ...]]]
) -> list[Document]:
    """The rollup documents of :func:`roll_query`'s rows."""
    documents = []
    names = [m.name for m in query.metrics]
    for keys, values in rows:
        count = int(values[0] or 0)
        if not count:
            continue  # a zero-filled bucket
        bucket, site = keys[0], keys[1]
        tags = {t: v for t, v in zip(source.tags, keys[2:], strict=True) if v is not None}
        stats: dict[str, dict[str, float]] = {"sum": {}, "min": {}, "max": {}, "last": {}}
        present: set[str] = set()
        last = values[-1]  # "at": ISO text (SQL) or epoch ms (Elasticsearch)
        last_ms = parse_iso_ms(last) if isinstance(last, str) else None
        if last_ms is None and isinstance(last, int | float):
            last_ms = int(last)
        for name, value in zip(names[1:-1], values[1:-1], strict=True):
            stat, _, field = name.partition(":")
            if stat == "min" and value is not None:
                present.add(field)
            if value is not None:
                stats[stat][field] = float(value)
        for stat in stats:
            stats[stat] = {k: v for k, v in stats[stat].items() if k in present}
        documents.append(
            rollup_document(
                app=source.app,
                metric=source.metric,
                interval=source.interval,
                bucket_ms=int(bucket),
                site_id=site,
                tags=tags,
                count=count,
                stats={
                    "sum": stats["sum"],
                    "min": stats["min"] if "min" in source.stats else {},
                    "max": stats["max"],
                    "last": stats["last"],
                },
                last_ms=last_ms,
            )
        )
    return documents


# -- answering from a rollup ------------------------------------------------------------


def _conjuncts(node: FilterNode | None) -> list[FilterNode]:
    if node is None:
        return []
    if isinstance(node, BoolNode) and node.op == "and":
        return [c for item in node.items for c in _conjuncts(item)]
    return [node]


def _leaves(node: FilterNode) -> Iterable[Leaf]:
    if isinstance(node, Leaf):
        yield node
    else:
        for item in node.items:
            yield from _leaves(item)


def _single(conjuncts: list[FilterNode], ref: FieldRef) -> str | None:
    for node in conjuncts:
        if isinstance(node, Leaf) and node.op == "is" and node.field.name == ref.name:
            if len(node.values) == 1 and isinstance(node.values[0], str):
                return node.values[0]
    return None


def _metric(metric: MetricSpec, source: RollupSource, kept: set[str]) -> MetricSpec | None:
    ref = metric.field
    if metric.kind == "count":
        return MetricSpec(metric.name, "sum", _COUNT)
    if ref is None:
        return None
    if metric.kind == "distinct" and ref.name in kept:
        return metric
    if not ref.name.startswith("fields."):
        return None
    field = ref.name.removeprefix("fields.")
    if metric.kind == "sum" and ("sum" in source.stats or "avg" in source.stats):
        return metric
    if metric.kind in ("last_sum", "last_avg") and "last" in source.stats:
        if metric.instance is None or metric.instance.name not in kept:
            return None
        stored = FieldRef(f"{F.ROLLUP_STAT_OBJECTS['last']}.{field}", "number")
        return MetricSpec(metric.name, metric.kind, stored, instance=metric.instance)
    if metric.kind in ("min", "max") and metric.kind in source.stats:
        stored = FieldRef(f"{F.ROLLUP_STAT_OBJECTS[metric.kind]}.{field}", "number")
        return MetricSpec(metric.name, metric.kind, stored)
    return None


def _group(group: GroupQuery, source: RollupSource, kept: set[str]) -> GroupQuery | None:
    unit = UNIT_MS[source.interval]
    edges = (group.start_ms, group.end_ms, *group.bucket_starts)
    if any(edge % unit for edge in edges) or group.end_ms > source.rolled_ms:
        return None
    for dim in group.dimensions:
        if dim.interval is not None:
            if dim.interval not in _COARSER[source.interval]:
                return None
        elif dim.field is None or dim.field.name not in kept:
            return None
    if group.filter is not None and any(
        leaf.field.name not in kept for leaf in _leaves(group.filter)
    ):
        return None
    metrics = [_metric(m, source, kept) for m in group.metrics]
    if any(m is None for m in metrics):
        return None
    return dataclasses.replace(
        group,
        datasets=(F.ROLLUP_DATASET,),
        metrics=tuple(m for m in metrics if m is not None),
        filter=BoolNode(
            "and",
            (
                Leaf("is", FieldRef(F.ROLLUP_INTERVAL, "keyword"), (source.interval,)),
                group.filter,
            ),
        )
        if group.filter is not None
        else Leaf("is", FieldRef(F.ROLLUP_INTERVAL, "keyword"), (source.interval,)),
    )


def from_rollup(query: Query, sources: Sequence[RollupSource]) -> tuple[Query, RollupSource] | None:
    """``query`` answered from one of ``sources`` (the first that gives the same answer),
    or None: then raw points answer it."""
    group = query.group
    if group.datasets != (F.POINT_DATASET,):
        return None
    conjuncts = _conjuncts(group.filter)
    app, metric = _single(conjuncts, _APP), _single(conjuncts, _METRIC)
    for source in sources:
        if (source.app, source.metric) != (app, metric):
            continue
        kept = {F.APP, F.METRIC_NAME, F.SITE_ID, *(f"tags.{t}" for t in source.tags)}
        current = _group(group, source, kept)
        if current is None:
            continue
        previous = None
        if query.previous is not None:
            previous = _group(query.previous, source, kept)
            if previous is None:
                continue
        return dataclasses.replace(query, group=current, previous=previous), source
    return None
