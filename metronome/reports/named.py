"""Built-in reports: common questions as ready ``/query`` requests (``GET /reports/{name}``).

Each report is a query with a few parameters a person may change in the URL
(``?range=7d&tz=Europe/Berlin&limit=20``); the answer is the ``/query`` answer. The item
report behind ``/tock`` is one of them (``/reports/tock?id=...``), answered in its own shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metronome.errors import InvalidParameter

__all__ = ["COMMON_PARAMETERS", "REPORTS", "NamedReport", "report_query"]

COMMON_PARAMETERS: dict[str, str] = {
    "range": "a preset (today, yesterday, week, month, year, 7d, 24h, ...); default 30d",
    "from": "start: a date (whole day), ISO 8601 or epoch ms; overrides range",
    "to": "end: a date (whole day included), ISO 8601 or epoch ms",
    "tz": "IANA time zone for dates and buckets; default UTC",
    "limit": "most rows, 1 to 10000",
    "bots": "exclude (default) or include known crawlers",
}


@dataclass(frozen=True, slots=True)
class NamedReport:
    name: str
    description: str
    build: Callable[[Mapping[str, str]], dict[str, Any]]
    parameters: Mapping[str, str]  # extra parameters: name -> what it does


def _interval(params: Mapping[str, str], default: str) -> str:
    interval = params.get("interval", default)
    if interval not in ("hour", "day", "week", "month"):
        raise InvalidParameter("'interval' is hour, day, week or month", parameter="interval")
    return interval


def _source(params: Mapping[str, str], default: str) -> str:
    source = params.get("source", default)
    if source not in ("ticks", "logs", "all"):
        raise InvalidParameter("'source' is ticks, logs or all", parameter="source")
    return source


def _event_filter(params: Mapping[str, str]) -> list[Any]:
    event = params.get("event")
    return [["is", "event", [event]]] if event else []


REPORTS: dict[str, NamedReport] = {
    report.name: report
    for report in [
        NamedReport(
            "top-items",
            "Items with the most events (views, downloads, ...) and visitors",
            lambda p: {
                "source": _source(p, "all"),
                "metrics": ["events", "visitors"],
                "dimensions": ["item"],
                "filters": _event_filter(p),
                "limit": 10,
            },
            {"source": "ticks, logs or all (default)", "event": "count only this event"},
        ),
        NamedReport(
            "top-referrers",
            "Pages that sent the most views",
            lambda p: {
                "source": _source(p, "all"),
                "metrics": ["events", "visitors"],
                "dimensions": ["referrer"],
                "limit": 10,
                "filters": [["is", "event", ["view"]], ["matches", "referrer", ["*"]]],
            },  # has one
            {"source": "ticks, logs or all (default)"},
        ),
        NamedReport(
            "downloads-by-format",
            "Downloads per format, per time bucket",
            lambda p: {
                "source": _source(p, "all"),
                "metrics": ["events"],
                "dimensions": [f"time:{_interval(p, 'month')}", "format"],
                "filters": [["is", "event", ["download"]]],
                "limit": 1000,
            },
            {
                "source": "ticks, logs or all (default)",
                "interval": "hour, day, week or month (default)",
            },
        ),
        NamedReport(
            "status-codes",
            "Access-log responses per status code over time",
            lambda p: {
                "source": "logs",
                "metrics": ["events", "bytes"],
                "dimensions": [f"time:{_interval(p, 'day')}", "status"],
                "limit": 1000,
            },
            {"interval": "hour, day (default), week or month"},
        ),
        NamedReport(
            "slowest-pages",
            "Paths with the slowest 95th-percentile response time (ns)",
            lambda p: {
                "source": "logs",
                "metrics": [{"p95": "duration"}, {"avg": "duration"}, "events"],
                "dimensions": ["path"],
                "order_by": [["p95:duration", "desc"]],
                "filters": [["gt", "duration", -1]],
                "limit": 10,
            },
            {},
        ),
    ]
}


def report_query(report: NamedReport, params: Mapping[str, str]) -> dict[str, Any]:
    """The ``/query`` request for ``report`` with the URL's parameters."""
    allowed = set(COMMON_PARAMETERS) | set(report.parameters)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r}; /reports/{report.name} takes"
            f" {', '.join(sorted(allowed))}",
            parameter=unknown[0],
        )
    body = report.build(params)
    if params.get("from"):
        body["range"] = {
            "from": params["from"],
            **({"to": params["to"]} if params.get("to") else {}),
        }
    elif params.get("to"):
        raise InvalidParameter("'to' needs 'from'", parameter="to")
    else:
        body["range"] = params.get("range", "30d")
    if "tz" in params:
        body["tz"] = params["tz"]
    if "bots" in params:
        body["bots"] = params["bots"]
    if "limit" in params:
        text = params["limit"]
        if not text.isdigit() or not 1 <= int(text) <= 10_000:
            raise InvalidParameter("'limit' is a whole number from 1 to 10000", parameter="limit")
        body["limit"] = int(text)
    return body
