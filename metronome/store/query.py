"""What every store compiles: a resolved query, free of any engine's syntax.

:mod:`metronome.reports.query` turns a ``/query`` request into a :class:`GroupQuery`
(fields resolved against the index templates, the range absolute, time buckets computed);
each engine has one compiler for it (:mod:`.es_query` for Elasticsearch query DSL,
:mod:`.sqlite_query` for the embedded store's SQL). These are plain values, so the
stores depend on nothing above them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BasketCounts",
    "BasketQuery",
    "BoolNode",
    "DimensionSpec",
    "FieldRef",
    "FilterNode",
    "GroupQuery",
    "Interval",
    "Kind",
    "Leaf",
    "MetricSpec",
]

Interval = Literal["minute", "hour", "day", "week", "month"]
Kind = Literal["keyword", "number", "integer", "boolean", "ip", "date"]


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A resolved document field: its name, kind, and the field numbers are read from."""

    name: str
    kind: Kind
    param: bool = False

    @property
    def numeric_field(self) -> str:
        """Where Elasticsearch keeps the numeric value (``params.x.num`` for parameters)."""
        return f"{self.name}.num" if self.param else self.name


@dataclass(frozen=True, slots=True)
class Leaf:
    """One condition: ``is``/``is_not`` (any of ``values``), ``contains`` (any of the
    substrings), ``matches`` (any anchored pattern: ``*`` any run, ``?`` one character),
    ``gt``/``lt`` (one number). A document without the field never matches a leaf, so
    ``is_not`` and ``not`` include it."""

    op: Literal["is", "is_not", "contains", "matches", "gt", "lt"]
    field: FieldRef
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class BoolNode:
    op: Literal["and", "or", "not"]
    items: tuple[FilterNode, ...]


FilterNode = Leaf | BoolNode


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """``count`` (events), ``distinct`` (visitors, items, instances), ``sum``/``avg``/
    ``min``/``max``, ``percentile`` (``percent``), ``error_rate`` (share of status codes
    >= 500), or ``last_sum``/``last_avg``: the last value of ``field`` per ``instance``
    in the group (the latest document that has the field), then summed or averaged over
    the instances (a fleet's total of a gauge; the share of instances with a 0/1 field
    at 1)."""

    name: str
    kind: Literal[
        "count",
        "distinct",
        "sum",
        "avg",
        "min",
        "max",
        "percentile",
        "error_rate",
        "last_sum",
        "last_avg",
    ]
    field: FieldRef | None = None
    percent: float | None = None
    instance: FieldRef | None = None


@dataclass(frozen=True, slots=True)
class DimensionSpec:
    """A time bucket (``interval`` set) or a field's value."""

    name: str
    field: FieldRef | None = None
    interval: Interval | None = None


@dataclass(frozen=True, slots=True)
class GroupQuery:
    """Documents of ``datasets`` in ``[start_ms, end_ms)`` matching ``filter``, grouped by
    ``dimensions`` with ``metrics`` per group. Time keys are the bucket starts in
    ``bucket_starts`` (computed in ``tz``)."""

    datasets: tuple[str, ...]
    start_ms: int
    end_ms: int
    tz: str
    bucket_starts: tuple[int, ...]
    dimensions: tuple[DimensionSpec, ...]
    metrics: tuple[MetricSpec, ...]
    filter: FilterNode | None


@dataclass(frozen=True, slots=True)
class BasketQuery:
    """Items that share baskets with ``item`` among the documents of ``where`` (its
    datasets, range and filter; no dimensions or metrics). A basket is a visitor's day
    (``visitor.id``, salted per UTC day), or with ``visits`` the event's visit
    (``visit.id``) when it has one. At most ``candidates`` other items, those sharing the
    most baskets (at least ``min_support``) first, ties by item."""

    where: GroupQuery
    item: str
    visits: bool
    min_support: int
    candidates: int


@dataclass(frozen=True, slots=True)
class BasketCounts:
    """What a :class:`BasketQuery` found: the baskets holding the item, and per other item
    ``(item, baskets holding both, baskets holding the other)``. ``exact``: False when
    Elasticsearch estimated a count (cardinality) or sampled the item's baskets."""

    item_baskets: int
    pairs: tuple[tuple[str, int, int], ...]
    exact: bool = True
