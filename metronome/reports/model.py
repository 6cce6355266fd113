"""The report model every store compiles: filters, a time range and named parts.

A :class:`ReportSpec` says *what* to count; ``store/`` says *how* (Elasticsearch
aggregations in one search, or SQL on the embedded store). Both return a
:class:`ReportResult` with the same keys, so reports are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Histogram",
    "Interval",
    "IsFilter",
    "Part",
    "ReportResult",
    "ReportSpec",
    "Terms",
]

Interval = Literal["hour", "day", "week", "month"]
Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class IsFilter:
    """Documents whose ``field`` equals one of ``values`` (or not, with ``negate``).

    ``or_missing``: documents without the field match too (the default site's filter,
    so events stored before sites existed stay in its reports).
    """

    field: str
    values: tuple[Scalar, ...]
    negate: bool = False
    or_missing: bool = False


@dataclass(frozen=True, slots=True)
class Histogram:
    """Count documents per time bucket.

    ``bucket_starts_ms`` are the bucket starts (epoch ms, ascending) computed by
    :mod:`metronome.reports.timebuckets` for ``interval`` in ``tz``; the last bucket ends
    at the report's ``end_ms``. Stores count into exactly these buckets (zero-filled).
    """

    name: str
    interval: Interval
    tz: str
    bucket_starts_ms: tuple[int, ...]
    filters: tuple[IsFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class Terms:
    """Count documents per value of ``field``: the ``size`` most frequent, ties by value.

    Documents without the field count under ``missing`` when it is set, else not at all.
    """

    name: str
    field: str
    size: int
    filters: tuple[IsFilter, ...] = ()
    missing: str | None = None


Part = Histogram | Terms


@dataclass(frozen=True, slots=True)
class ReportSpec:
    """Documents of ``datasets`` (``ticks``, ``logs``) with
    ``start_ms <= @timestamp < end_ms`` matching ``filters``, counted by each of ``parts``."""

    datasets: tuple[str, ...]
    start_ms: int
    end_ms: int
    filters: tuple[IsFilter, ...] = ()
    parts: tuple[Part, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ReportResult:
    """Per part name: ``(key, count)`` rows. Histogram keys are bucket starts in epoch ms,
    in bucket order; terms rows are most frequent first."""

    parts: dict[str, list[tuple[str | int, int]]]
