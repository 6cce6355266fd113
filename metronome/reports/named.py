"""Built-in reports: common questions as ready ``/query`` requests (``GET /reports/{name}``).

Each report is one or more ``/query`` requests built from a few parameters a person may
change in the URL (``?range=7d&tz=Europe/Berlin&limit=20``), run by the one query engine
(:func:`metronome.reports.engine.run_query`). Most answer with the ``/query`` answer; the
item report behind ``/tock`` (``/reports/tock?id=...``) is three queries answered in its
own shape. :func:`run_report` is the one way any of them is answered.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from metronome.errors import InvalidCursor, InvalidParameter, InvalidQuery, NotFound
from metronome.events import api_call
from metronome.events import fields as F
from metronome.reports import errors, journeys, platform, tock
from metronome.reports.engine import run_query
from metronome.reports.query import PRESETS, for_site, parse_query
from metronome.reports.timebuckets import SUPPORTED_RANGE
from metronome.store.base import Store

__all__ = [
    "COMMON_PARAMETERS",
    "REPORTS",
    "NamedReport",
    "Plan",
    "find_report",
    "report_query",
    "run_report",
]

Answer = dict[str, Any]

COMMON_PARAMETERS: dict[str, str] = {
    "range": f"a preset: {PRESETS}; default 30d",
    "from": "start: a date (whole day), ISO 8601 or epoch ms; overrides range;"
    f" supported: {SUPPORTED_RANGE}",
    "to": "end: a date (whole day included), ISO 8601 or epoch ms",
    "tz": "IANA time zone for dates and buckets; default UTC",
    "limit": "most rows, 1 to 10000",
    "bots": "exclude (default) or include known crawlers",
    "after": "meta.next of the previous page, with the same other parameters",
}
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,5}$")  # ASCII only: str.isdigit() also takes "²"


@dataclass(frozen=True, slots=True)
class Plan:
    """What answering a report takes: its ``/query`` requests by part name, and how the
    parts' answers make the report's answer."""

    queries: dict[str, dict[str, Any]]
    shape: Callable[[dict[str, Answer]], Answer]


@dataclass(frozen=True, slots=True)
class NamedReport:
    """A report: ``build`` makes its ``/query`` request from the URL's parameters, and
    the answer is that query's answer.

    A report of several parts sets ``plan`` instead (the URL's parameters -> a
    :class:`Plan`). ``parameters`` are the ones it takes besides
    :data:`COMMON_PARAMETERS` (or instead of them, without ``common``). ``public``: a site
    with public item reports may read it without a key.
    """

    name: str
    description: str
    build: Callable[[Mapping[str, str]], dict[str, Any]] | None
    parameters: Mapping[str, str]  # parameter -> what it does
    plan: Callable[[Mapping[str, str]], Plan] | None = None
    common: bool = True
    public: bool = False
    all_parameters: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        every = {**COMMON_PARAMETERS, **self.parameters} if self.common else self.parameters
        object.__setattr__(self, "all_parameters", every)


def _interval(params: Mapping[str, str], default: str) -> str:
    interval = params.get("interval", default)
    if interval not in ("minute", "hour", "day", "week", "month"):
        raise InvalidParameter(
            "'interval' is minute, hour, day, week or month", parameter="interval"
        )
    return interval


def _source(params: Mapping[str, str], default: str) -> str:
    source = params.get("source", default)
    if source not in ("ticks", "logs", "all"):
        raise InvalidParameter("'source' is ticks, logs or all", parameter="source")
    return source


_FLEET_PARAMETERS = {
    "app": "the telemetry app (required)",
    "instance": "the tag that tells instances apart (default instance_uuid)",
}


def _app_filter(params: Mapping[str, str], metric: str | None = None) -> list[Any]:
    app = params.get("app")
    if not app:
        raise InvalidParameter("name the telemetry app with ?app=...", parameter="app")
    filters: list[Any] = [["is", "app", [app]]]
    if metric:
        filters.append(["is", "metric.name", [metric]])
    return filters


def _instance(params: Mapping[str, str]) -> str:
    return f"tags.{params.get('instance', 'instance_uuid')}"


def _features(params: Mapping[str, str]) -> list[str]:
    features = [f.strip() for f in params.get("features", "").split(",") if f.strip()]
    if not features or len(features) > 19:
        raise InvalidParameter(
            "name 1 to 19 features (fields) with ?features=a,b", parameter="features"
        )
    return features


def _event_filter(params: Mapping[str, str]) -> list[Any]:
    event = params.get("event")
    return [["is", "event", [event]]] if event else []


def _api_call_filters(params: Mapping[str, str]) -> list[Any]:
    filters: list[Any] = [["is", F.EVENT_DATASET, [api_call.EVENT_DATASET]]]
    if params.get("route"):
        filters.append(["is", F.HTTP_ROUTE, [params["route"]]])
    if params.get("method"):
        filters.append(["is", F.HTTP_REQUEST_METHOD, [params["method"].upper()]])
    return filters


API_CALLS_PARAMETER = {
    "api_calls": "include: count API calls (metronome.middleware) too; left out by default"
}


def access_log_filters(params: Mapping[str, str]) -> list[Any]:
    """The filters of a report over access logs: API calls share the ``logs`` source
    (``event.dataset`` ``metronome.api_calls``) and are left out unless
    ``api_calls=include`` (an app behind a logged web server would count twice)."""
    choice = params.get("api_calls", "exclude")
    if choice == "include":
        return []
    if choice != "exclude":
        raise InvalidParameter("'api_calls' is include or exclude", parameter="api_calls")
    return [["is_not", F.EVENT_DATASET, [api_call.EVENT_DATASET]]]


_PLAN_PARAMETERS = {name: COMMON_PARAMETERS[name] for name in ("range", "from", "to", "tz")}
_ERRORS_PARAMETERS = {
    **_PLAN_PARAMETERS,
    "bots": COMMON_PARAMETERS["bots"],
    "interval": "hour, day (default), week or month",
    "path": "only this page (url.path)",
}
_ERROR_GROUPS_PARAMETERS = {
    "group": "one group's fingerprint: also list its pages and browsers",
}


def _errors_plan(
    name: str,
    params: Mapping[str, str],
    parameters: Mapping[str, str],
    make: Callable[[dict[str, Any]], tuple[dict[str, dict[str, Any]], Any]],
) -> Plan:
    """An error report's parts (:mod:`metronome.reports.errors`) from the URL's
    parameters, checked like a one-query report's."""
    shell = NamedReport(
        name,
        "",
        lambda p: {
            **({"interval": _interval(p, "day")} if "interval" in parameters else {}),
            **{k: p[k] for k in ("path", "group") if k in p},
        },
        parameters,
        common="group" in parameters,
    )
    queries, shape = make(report_query(shell, params))
    return Plan(queries, shape)


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
                "filters": access_log_filters(p),
                "limit": 1000,
            },
            {"interval": "hour, day (default), week or month", **API_CALLS_PARAMETER},
        ),
        NamedReport(
            "slowest-pages",
            "Paths with the slowest 95th-percentile response time (ns)",
            lambda p: {
                "source": "logs",
                "metrics": [{"p95": "duration"}, {"avg": "duration"}, "events"],
                "dimensions": ["path"],
                "order_by": [["p95:duration", "desc"]],
                "filters": [["gt", "duration", -1], *access_log_filters(p)],
                "limit": 10,
            },
            API_CALLS_PARAMETER,
        ),
        # API calls (issue 23): what metronome.middleware reports, per route over time
        NamedReport(
            "api-calls",
            "API calls per route and time bucket: calls, error rate (5xx share) and"
            " duration percentiles (ns)",
            lambda p: {
                "source": "logs",
                "metrics": [
                    "events",
                    "error_rate",
                    {"p50": "duration"},
                    {"p95": "duration"},
                    {"p99": "duration"},
                ],
                "dimensions": [f"time:{_interval(p, 'day')}", F.HTTP_ROUTE],
                "filters": _api_call_filters(p),
                "limit": 1000,
            },
            {
                "interval": "hour, day (default), week or month",
                "route": "only this route template",
                "method": "only this method (GET, POST, ...)",
            },
        ),
        # telemetry (issue 19): fleet questions about one app's points
        NamedReport(
            "active-instances",
            "Telemetry: instances of an app that reported, per time bucket",
            lambda p: {
                "source": "metrics",
                "metrics": [{"distinct": _instance(p)}],
                "dimensions": [f"time:{_interval(p, 'day')}"],
                "filters": _app_filter(p),
                "limit": 10_000,
            },
            {**_FLEET_PARAMETERS, "interval": "hour, day (default), week or month"},
        ),
        NamedReport(
            "fleet-total",
            "Telemetry: a gauge's fleet total per time bucket (the last value of each"
            " instance, summed)",
            lambda p: {
                "source": "metrics",
                "metrics": [
                    {"last_sum": f"fields.{p.get('field', 'value')}", "instance": _instance(p)},
                    {"distinct": _instance(p)},
                ],
                "dimensions": [f"time:{_interval(p, 'day')}"],
                "filters": _app_filter(p, p.get("metric", "storage_capacity")),
                "limit": 10_000,
            },
            {
                **_FLEET_PARAMETERS,
                "metric": "the gauge's metric name (default storage_capacity)",
                "field": "its field (default value)",
                "interval": "hour, day (default), week or month",
            },
        ),
        NamedReport(
            "feature-adoption",
            "Telemetry: per version, the share of reporting instances with each feature on",
            lambda p: {
                "source": "metrics",
                "metrics": [
                    {"distinct": _instance(p)},
                    *(
                        {"last_avg": f"fields.{feature}", "instance": _instance(p)}
                        for feature in _features(p)
                    ),
                ],
                "dimensions": [f"tags.{p.get('version_tag', 'app_version')}"],
                "filters": _app_filter(p, p.get("metric", "enabled_feature")),
                "limit": 10_000,
            },
            {
                **_FLEET_PARAMETERS,
                "features": "the features (fields of the metric), separated by commas",
                "metric": "the features' metric name (default enabled_feature)",
                "version_tag": "the version's tag (default app_version)",
            },
        ),
        NamedReport(
            "version-spread",
            "Telemetry: instances (and reports) per version over time",
            lambda p: {
                "source": "metrics",
                "metrics": [{"distinct": _instance(p)}, "events"],
                "dimensions": [
                    f"time:{_interval(p, 'day')}",
                    f"tags.{p.get('version_tag', 'app_version')}",
                ],
                "filters": _app_filter(p, p.get("metric")),
                "limit": 10_000,
            },
            {
                **_FLEET_PARAMETERS,
                "metric": "only this metric (upgrade_request for upgrade checks)",
                "version_tag": "the version's tag (default app_version)",
                "interval": "hour, day (default), week or month",
            },
        ),
        NamedReport(
            "tock",
            "One item's views per time bucket, downloads by format and referrers"
            " (the /tock report)",
            None,
            tock.PARAMETERS,
            plan=lambda p: _tock_plan(p),
            common=False,
            public=True,
        ),
        NamedReport(
            "storage-growth",
            "Bytes added (file.uploaded) and removed (file.deleted) per space and time bucket,"
            " with the running total",
            None,
            {**_PLAN_PARAMETERS, "interval": "hour, day (default), week or month"},
            plan=lambda p: _planned("storage-growth", p, "day", platform.storage_growth_plan),
            common=False,
        ),
        NamedReport(
            "extractions",
            "Extractions queued, started and finished per time bucket, and the queue's length",
            None,
            {**_PLAN_PARAMETERS, "interval": "hour (default), day, week or month"},
            plan=lambda p: _planned("extractions", p, "hour", platform.extractions_plan),
            common=False,
        ),
        NamedReport(
            "extraction-runtime",
            "Runtime percentiles (ms) of finished extractions per extractor",
            lambda p: platform.extraction_runtime_query({}),
            {},
        ),
        NamedReport(
            "downloads-per-resource",
            "resource.download events and visitors per resource, most first",
            lambda p: platform.downloads_query({"limit": 10}),
            {},
        ),
        NamedReport(
            "concurrency",
            "Requests in progress at once per time bucket, from access logs with a duration",
            None,
            {
                **_PLAN_PARAMETERS,
                "interval": "minute, hour (default), day or week",
                **API_CALLS_PARAMETER,
            },
            plan=lambda p: _planned(
                "concurrency",
                {k: v for k, v in p.items() if k != "api_calls"},
                "hour",
                lambda body: platform.concurrency_plan(body, access_log_filters(p)),
            ),
            common=False,
        ),
        NamedReport(
            "uptime",
            "Uptime % per monitor and region, with the downtime intervals",
            None,
            _PLAN_PARAMETERS,
            plan=lambda p: _planned("uptime", p, "", platform.uptime_plan),
            common=False,
        ),
        NamedReport(
            "response-times",
            "Monitors' response time percentiles (ms), time to first byte and page size",
            lambda p: platform.response_times_query({}),
            {},
        ),
        NamedReport(
            "certificate-expiry",
            "TLS monitors' certificate days left (latest, and the fewest in the range)",
            lambda p: platform.certificate_expiry_query({}),
            {},
        ),
        # errors (issue 25): error ticks grouped by their fingerprint
        NamedReport(
            "errors",
            "Errors, page views and errors per 1,000 page views per page and time bucket",
            None,
            _ERRORS_PARAMETERS,
            plan=lambda p: _errors_plan("errors", p, _ERRORS_PARAMETERS, errors.errors_plan),
            common=False,
        ),
        NamedReport(
            "error-groups",
            "Error groups (one per fingerprint): errors, visitors affected, first and last"
            " seen, pages and browsers affected; most frequent first",
            None,
            _ERROR_GROUPS_PARAMETERS,
            plan=lambda p: _errors_plan(
                "error-groups", p, _ERROR_GROUPS_PARAMETERS, errors.error_groups_plan
            ),
        ),
        # journeys (issue 25): visits' entry and exit pages, and one page's transitions
        NamedReport(
            "entry-pages",
            "Pages visits began on: visits, bounce rate, visit duration (ms) and views per visit",
            lambda p: {
                "source": "visits",
                "metrics": ["visits", "bounce_rate", "visit_duration", "views_per_visit"],
                "dimensions": ["entry_page"],
                "limit": 10,
            },
            {},
        ),
        NamedReport(
            "exit-pages",
            "Pages visits ended on: visits, views per visit and visit duration (ms)",
            lambda p: {
                "source": "visits",
                "metrics": ["visits", "views_per_visit", "visit_duration"],
                "dimensions": ["exit_page"],
                "limit": 10,
            },
            {},
        ),
        NamedReport(
            "transitions",
            "One page's transitions: where its views came from (the previous page, the"
            " external referrer of visits entering on it, or entry) and went next (the next"
            " page, or exit), with counts and shares",
            None,
            {**_PLAN_PARAMETERS, "item": "the page: an item id, or a path (required)"},
            plan=lambda p: _transitions_plan(p),
            common=False,
        ),
        NamedReport(
            "flows",
            "The paths visits took after a page: a tree of the next pages (or exit) with"
            " the visits that took each",
            None,
            {
                **_PLAN_PARAMETERS,
                "item": "the page: an item id, or a path (required)",
                "depth": "pages after it, 1 to 10 (default 3)",
            },
            plan=lambda p: _flows_plan(p),
            common=False,
        ),
    ]
}


def _planned(
    name: str,
    params: Mapping[str, str],
    interval: str,
    make: Callable[[dict[str, Any]], tuple[dict[str, dict[str, Any]], Any]],
) -> Plan:
    """A report of several parts from :mod:`metronome.reports.platform`: the URL's range,
    tz and interval in one body, then the parts ``make`` builds from it."""
    shell = NamedReport(
        name,
        "",
        lambda p: {"interval": _interval(p, interval)} if interval else {},
        {**_PLAN_PARAMETERS, "interval": ""} if interval else _PLAN_PARAMETERS,
        common=False,
    )
    queries, shape = make(report_query(shell, params))
    return Plan(queries, shape)


def _transitions_plan(params: Mapping[str, str]) -> Plan:
    page = params.get("item")
    if not page:
        raise InvalidParameter("name the page with ?item=...", parameter="item")
    shell = NamedReport("transitions", "", lambda p: {}, _PLAN_PARAMETERS, common=False)
    body = report_query(shell, {k: v for k, v in params.items() if k != "item"})
    queries, shape = journeys.transitions_plan(page, body)
    return Plan(queries, shape)


def _flows_plan(params: Mapping[str, str]) -> Plan:
    page = params.get("item")
    if not page:
        raise InvalidParameter("name the page with ?item=...", parameter="item")
    depth = params.get("depth", "3")
    if not _WHOLE_NUMBER.match(depth) or not 1 <= int(depth) <= 10:
        raise InvalidParameter("'depth' is a whole number from 1 to 10", parameter="depth")
    shell = NamedReport("flows", "", lambda p: {}, _PLAN_PARAMETERS, common=False)
    body = report_query(shell, {k: v for k, v in params.items() if k not in ("item", "depth")})
    body = {**body, "source": "visits", "flow": {"page": page, "depth": int(depth)}}
    return Plan({"": body}, lambda answers: {"report": "flows", **answers[""]})


def _tock_plan(params: Mapping[str, str]) -> Plan:
    item_id = params.get("id")
    if not item_id:
        raise InvalidParameter("give the item as /tock/{id} or ?id=...", parameter="id")
    query = tock.parse_tock_query(item_id, {k: v for k, v in params.items() if k != "id"})
    return Plan(tock.tock_queries(query), lambda answers: tock.shape_tock(query, answers))


def report_query(report: NamedReport, params: Mapping[str, str]) -> dict[str, Any]:
    """The ``/query`` request for a one-query ``report`` with the URL's parameters."""
    assert report.build is not None, "a report of parts has no single query"
    allowed = set(report.all_parameters)
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
        if not _WHOLE_NUMBER.match(text) or not 1 <= int(text) <= 10_000:
            raise InvalidParameter("'limit' is a whole number from 1 to 10000", parameter="limit")
        body["limit"] = int(text)
    if "after" in params:
        body["after"] = params["after"]
    return body


def find_report(name: str) -> NamedReport:
    """The built-in report ``name``, or :class:`NotFound` listing them."""
    report = REPORTS.get(name)
    if report is None:
        raise NotFound(f"no report {name!r}; GET /reports lists them: {', '.join(REPORTS)}")
    return report


async def run_report(
    store: Store,
    report: NamedReport,
    params: Mapping[str, str],
    *,
    site_id: str,
    max_groups: int,
    typed: Mapping[str, str] | None = None,
) -> Answer:
    """Answer ``report`` for the URL's ``params``, counting only ``site_id``'s documents.

    Every part is a ``/query`` request, validated and run like one sent to ``POST
    /query``; the parts of a report run concurrently. ``typed``: the typed events'
    fields, as :func:`~metronome.reports.query.parse_query` takes them.
    """
    if report.plan is not None:
        plan = report.plan(params)
    else:
        plan = Plan(
            {"": report_query(report, params)},
            lambda answers: {"report": report.name, **answers[""]},
        )
    try:
        queries = {
            name: for_site(parse_query(body, typed=typed), site_id)
            for name, body in plan.queries.items()
        }
        answers = await asyncio.gather(
            *(run_query(store, query, max_groups=max_groups) for query in queries.values())
        )
    except InvalidCursor as exc:
        raise InvalidCursor(
            _as_parameter_message(exc.message, "after"), parameter="after"
        ) from None
    except InvalidQuery as exc:
        raise _as_parameter(exc, report, params) from None
    return plan.shape(dict(zip(queries, answers, strict=True)))


# the URL parameters a part of a report's /query request comes from, most likely first
_PARAMETERS_OF = {
    "query.range": ("from", "to", "range"),
    "query.compare": ("from", "range"),
    "query.tz": ("tz",),
    "query.limit": ("limit", "top"),
    "query.bots": ("bots",),
    "query.source": ("source", "sources"),
    "query.after": ("after",),
    "query.filters": ("event", "id", "route", "method"),
    "query.dimensions": ("interval", "from", "range"),
}


def _as_parameter(
    exc: InvalidQuery, report: NamedReport, params: Mapping[str, str]
) -> InvalidParameter:
    """A report's URL parameters are its interface: a refused part of its ``/query``
    request is answered as the parameter it came from (``invalid_parameter``)."""
    part = str(exc.details.get("field", "query"))
    candidates = next(
        (names for prefix, names in _PARAMETERS_OF.items() if part.startswith(prefix)), ()
    )
    given = [name for name in candidates if name in params]
    taken = [name for name in candidates if name in report.all_parameters]
    if not given and not taken:
        return InvalidParameter(exc.message)
    parameter = (given or taken)[0]
    return InvalidParameter(_as_parameter_message(exc.message, parameter), parameter=parameter)


def _as_parameter_message(message: str, parameter: str) -> str:
    head, colon, rest = message.partition(": ")
    if colon and head.startswith("query"):
        return f"'{parameter}': {rest}"
    return message
