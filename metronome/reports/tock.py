"""The item report behind ``GET /tock/{id}`` (the esridc/metronome shape).

::

    {"views": {"2015-01-22": 9200, "2015-01-21": 8800, ...},   every bucket, newest first
     "downloads": {"csv": 120000, "kml": 4500},                event=download by format
     "referers": {"washingtonpost.com/articles/dc-news": 230000, "arcgis.com": 4200}}

``views`` counts ``event=view`` per bucket; ``referers`` counts the views' referrer pages
(host + path); both ``downloads`` and ``referers`` are the ``top`` most frequent, most
first, ties by name. Known crawlers are left out unless ``bots=include``. Ticks and
access-log lines (mapped to items by URL rules) count together unless ``sources`` picks one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from metronome.errors import InvalidParameter
from metronome.events import fields as F
from metronome.reports.model import (
    Histogram,
    Interval,
    IsFilter,
    ReportResult,
    ReportSpec,
    Terms,
)
from metronome.reports.timebuckets import bucket_label, bucket_starts, parse_moment

__all__ = ["DEFAULT_DAYS", "TockQuery", "parse_tock_query", "shape_tock", "tock_spec"]

DEFAULT_DAYS = 30
SOURCES = ("ticks", "logs")  # browser/app ticks, and web-server access logs
MAX_TOP = 1000


@dataclass(frozen=True, slots=True)
class TockQuery:
    item_id: str
    start_ms: int
    end_ms: int
    tz: ZoneInfo
    interval: Interval
    top: int
    include_bots: bool
    sources: tuple[str, ...] = ("ticks", "logs")


def _zone(params: Mapping[str, str]) -> ZoneInfo:
    name = params.get("tz", "UTC") or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParameter(
            f"'tz' must be an IANA time zone name such as Europe/Berlin, got {name!r}",
            parameter="tz",
        ) from None


def parse_tock_query(
    item_id: str, params: Mapping[str, str], now_ms: int | None = None
) -> TockQuery:
    """Read ``from``, ``to``, ``tz``, ``interval``, ``top`` and ``bots`` from a query string.

    Defaults: the last 30 days in ``tz`` (today included), daily buckets, top 10, no bots.
    """
    known = {"from", "to", "tz", "interval", "top", "bots", "sources"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r}; /tock takes {', '.join(sorted(known))}",
            parameter=unknown[0],
        )
    tz = _zone(params)
    interval = params.get("interval", "day")
    if interval not in get_args(Interval):
        raise InvalidParameter(
            f"'interval' must be one of {', '.join(get_args(Interval))}, got {interval!r}",
            parameter="interval",
        )
    now = int(time.time() * 1000) if now_ms is None else now_ms
    end_ms = parse_moment("to", params["to"], tz, end=True) if params.get("to") else now + 1
    if params.get("from"):
        start_ms = parse_moment("from", params["from"], tz, end=False)
    else:
        end_local = datetime.fromtimestamp((end_ms - 1) / 1000, tz=UTC).astimezone(tz)
        first = end_local.date() - timedelta(days=DEFAULT_DAYS - 1)
        start_ms = int(datetime(first.year, first.month, first.day, tzinfo=tz).timestamp() * 1000)
    if start_ms >= end_ms:
        raise InvalidParameter("'from' must be before 'to'", parameter="from")
    top_text = params.get("top", "10")
    if not top_text.isdigit() or not 1 <= int(top_text) <= MAX_TOP:
        raise InvalidParameter(f"'top' must be a whole number from 1 to {MAX_TOP}", parameter="top")
    bots = params.get("bots", "exclude")
    if bots not in ("exclude", "include"):
        raise InvalidParameter("'bots' must be 'exclude' or 'include'", parameter="bots")
    sources = tuple(
        sorted({s.strip() for s in params.get("sources", "ticks,logs").split(",") if s.strip()})
    )
    if not sources or not set(sources) <= set(SOURCES):
        raise InvalidParameter(
            "'sources' is a comma-separated list of ticks and logs (default: both)",
            parameter="sources",
        )
    return TockQuery(
        item_id,
        start_ms,
        end_ms,
        tz,
        interval,  # type: ignore[arg-type]
        int(top_text),
        bots == "include",
        tuple(s for s in SOURCES if s in sources),
    )


def tock_spec(query: TockQuery, site: IsFilter) -> ReportSpec:
    """The backend-neutral report for one item of one site (``site``: the caller's
    :attr:`metronome.api.guard.Access.site_filter`)."""
    try:
        starts = bucket_starts(query.start_ms, query.end_ms, query.interval, query.tz)
    except ValueError as exc:
        raise InvalidParameter(
            f"the range holds {exc}; choose a shorter range or a longer interval",
            parameter="interval",
        ) from None
    views = (IsFilter(F.EVENT_ACTION, ("view",)),)
    if site.field != F.SITE_ID or site.negate:
        raise ValueError("a report needs the caller's site filter")
    filters = [site, IsFilter(F.ITEM_ID, (query.item_id,))]
    if not query.include_bots:
        filters.append(IsFilter(F.BOT, (True,), negate=True))
        filters.append(IsFilter(F.REFERRER_SPAM, (True,), negate=True))
    return ReportSpec(
        datasets=query.sources,
        start_ms=query.start_ms,
        end_ms=query.end_ms,
        filters=tuple(filters),
        parts=(
            Histogram("views", query.interval, query.tz.key, tuple(starts), views),
            Terms(
                "downloads",
                F.ITEM_FORMAT,
                query.top,
                (IsFilter(F.EVENT_ACTION, ("download",)),),
                missing="unknown",
            ),
            Terms("referers", F.REFERRER_PAGE, query.top, views),
        ),
    )


def shape_tock(query: TockQuery, result: ReportResult) -> dict[str, Any]:
    """The JSON answer: views newest first, downloads and referers most first."""
    views = {
        bucket_label(int(start), query.interval, query.tz): count
        for start, count in reversed(result.parts["views"])
    }
    return {
        "views": views,
        "downloads": {str(k): n for k, n in result.parts["downloads"]},
        "referers": {str(k): n for k, n in result.parts["referers"]},
    }
