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

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from zoneinfo import ZoneInfo

from metronome.errors import InvalidParameter
from metronome.reports.timebuckets import (
    EARLIEST_MS,
    MAX_BUCKETS,
    bucket_count,
    parse_moment,
    parse_zone,
)
from metronome.store.query import Interval

__all__ = [
    "DEFAULT_DAYS",
    "PARAMETERS",
    "TockQuery",
    "parse_tock_query",
    "shape_tock",
    "tock_queries",
]

DEFAULT_DAYS = 30
SOURCES = ("ticks", "logs")  # browser/app ticks, and web-server access logs
MAX_TOP = 1000
UNKNOWN_FORMAT = "unknown"  # where downloads without a format count

PARAMETERS = {
    "id": "the item (required)",
    "from": "start: a date, ISO 8601 or epoch ms (default: 30 days ago)",
    "to": "end: a date (whole day included), ISO 8601 or epoch ms",
    "tz": "IANA time zone; default UTC",
    "interval": "hour, day (default), week or month",
    "top": "most downloads formats and referrers, 1 to 1000 (default 10)",
    "bots": "exclude (default) or include",
    "sources": "ticks, logs or both (default)",
    "site": "a site with public item reports (without a key): its id",
}
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,5}$")  # ASCII only: str.isdigit() also takes "²"


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


def parse_tock_query(
    item_id: str, params: Mapping[str, str], now_ms: int | None = None
) -> TockQuery:
    """Read ``from``, ``to``, ``tz``, ``interval``, ``top`` and ``bots`` from a query string.

    Defaults: the last 30 days in ``tz`` (today included), daily buckets, top 10, no bots.
    """
    known = set(PARAMETERS) - {"id"}  # site: read by the API's guard, listed here too
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r}; /tock takes {', '.join(sorted(known))}",
            parameter=unknown[0],
        )
    tz = parse_zone("tz", params.get("tz", "UTC") or "UTC")
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
        start_ms = max(start_ms, EARLIEST_MS)  # 30 days before 0002-01-05: from the earliest
    if start_ms >= end_ms:
        raise InvalidParameter("'from' must be before 'to'", parameter="from")
    if bucket_count(start_ms, end_ms, interval, tz) > MAX_BUCKETS:  # type: ignore[arg-type]
        raise InvalidParameter(
            f"the range holds more than {MAX_BUCKETS} {interval} buckets; choose a shorter"
            " range or a longer interval",
            parameter="interval",
        )
    top_text = params.get("top", "10")
    if not _WHOLE_NUMBER.match(top_text) or not 1 <= int(top_text) <= MAX_TOP:
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


def tock_queries(query: TockQuery) -> dict[str, dict[str, Any]]:
    """The item report as ``/query`` requests, one per part of the answer.

    ``views``: events ``view`` per time bucket (every bucket, gap-filled); ``downloads``:
    events ``download`` per format, most first; ``referers``: the views' referrer pages,
    most first. Each asks for one row more than ``top`` so :func:`shape_tock` can rank
    downloads without a format (``unknown``) by name among the others.
    """
    common: dict[str, Any] = {
        "source": "all" if len(query.sources) == 2 else query.sources[0],
        "range": {"from": str(query.start_ms), "to": str(query.end_ms)},
        "tz": query.tz.key,
        "bots": "include" if query.include_bots else "exclude",
    }
    item = ["is", "item", [query.item_id]]
    return {
        "views": {
            **common,
            "dimensions": [f"time:{query.interval}"],
            "filters": [item, ["is", "event", ["view"]]],
            "limit": MAX_BUCKETS,
        },
        "downloads": {
            **common,
            "dimensions": ["format"],
            "filters": [item, ["is", "event", ["download"]]],
            "limit": query.top + 1,
        },
        "referers": {
            **common,
            "dimensions": ["referrer"],
            "filters": [item, ["is", "event", ["view"]], ["matches", "referrer", ["*"]]],
            "limit": query.top + 1,
        },
    }


def _ranked(rows: list[dict[str, Any]], top: int) -> dict[str, int]:
    """``top`` keys by count (most first), ties by name; no key counts as ``unknown``."""
    counts: dict[str, int] = {}
    for row in rows:
        (key,) = row["dimensions"]
        name = UNKNOWN_FORMAT if key is None else str(key)
        counts[name] = counts.get(name, 0) + int(row["metrics"][0])
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    return dict(ranked[:top])


def shape_tock(query: TockQuery, answers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON answer from the ``/query`` answers of :func:`tock_queries`: views newest
    first, downloads and referers most first."""
    views = answers["views"]["results"]
    return {
        "views": {row["dimensions"][0]: row["metrics"][0] for row in reversed(views)},
        "downloads": _ranked(answers["downloads"]["results"], query.top),
        "referers": _ranked(answers["referers"]["results"], query.top),
    }
