"""The one place that names document fields.

Documents are Logstash format (``@timestamp``, ``@version``) with Elastic Common Schema
names where ECS has one. Fields ECS has no name for live under ``item.*``, ``referrer.*``,
``site.*`` and ``bot``; a client's free-form tick parameters live under ``params.*`` only.

The index templates in ``index_templates/`` map exactly :data:`TICK_FIELDS` (a test
checks it), and the embedded store's columns are chosen from these names.
"""

from __future__ import annotations

import re

__all__ = [
    "INSIGHT_DATASET",
    "KPI_ID",
    "KPI_NAME",
    "KPI_DASHBOARD",
    "INSIGHT_KIND",
    "INSIGHT_STATE",
    "INSIGHT_KEY",
    "INSIGHT_COMPARED_TO",
    "INSIGHT_DIRECTION",
    "INSIGHT_MESSAGE",
    "INSIGHT_OBSERVED",
    "INSIGHT_RAISED_AT",
    "INSIGHT_EXPECTED",
    "INSIGHT_LOW",
    "INSIGHT_HIGH",
    "INSIGHT_SCORE",
    "INSIGHT_CHANGE",
    "INSIGHT_FIELDS",
    "APP",
    "APP_ID_PATTERN",
    "BOT",
    "CLIENT_GEO_COUNTRY_ISO_CODE",
    "CLIENT_IP",
    "DEFAULT_SITE",
    "ERROR_COLUMN",
    "ERROR_FIELDS",
    "ERROR_FINGERPRINT",
    "ERROR_GROUP",
    "ERROR_LINE",
    "ERROR_MESSAGE",
    "ERROR_SOURCE",
    "ERROR_STACK_TRACE",
    "ERROR_TYPE",
    "EVENT_ACTION",
    "EVENT_DATASET",
    "EVENT_DURATION",
    "EVENT_ID",
    "FIELDS",
    "EVENT_INGESTED",
    "HTTP_REQUEST_METHOD",
    "HTTP_REQUEST_REFERRER",
    "HTTP_RESPONSE_BODY_BYTES",
    "HTTP_RESPONSE_STATUS_CODE",
    "HTTP_ROUTE",
    "HTTP_VERSION",
    "ITEM_FORMAT",
    "ITEM_ID",
    "HOST_NAME",
    "LOG_FIELDS",
    "METRICS",
    "METRICSET_NAME",
    "METRIC_FIELDS",
    "METRIC_NAME",
    "POINT_DATASET",
    "ROLLUP_COUNT",
    "ROLLUP_DATASET",
    "ROLLUP_FIELDS",
    "ROLLUP_INTERVAL",
    "ROLLUP_STAT_OBJECTS",
    "PARAMS",
    "REFERRER_DOMAIN",
    "REFERRER_PAGE",
    "REFERRER_SPAM",
    "SERVICE_NAME",
    "SITE_ID",
    "SITE_ID_PATTERN",
    "DESTINATION_PORT",
    "RELATED_IP",
    "SOURCE_ADDRESS",
    "SOURCE_IP",
    "TAGS",
    "SOURCE_PORT",
    "TICK_FIELDS",
    "TIMESTAMP",
    "TYPED",
    "URL_DOMAIN",
    "URL_ORIGINAL",
    "URL_PATH",
    "URL_QUERY",
    "USER_AGENT_DEVICE_NAME",
    "USER_AGENT_NAME",
    "USER_AGENT_ORIGINAL",
    "USER_AGENT_OS_NAME",
    "USER_AGENT_OS_VERSION",
    "USER_AGENT_VERSION",
    "USER_ID",
    "VERSION",
    "VISITOR_ID",
    "VISITS_DATASET",
    "VISIT_BOUNCE",
    "VISIT_DURATION_MS",
    "VISIT_END",
    "VISIT_ENTRY",
    "VISIT_EVENTS",
    "VISIT_EVENT_FIELDS",
    "VISIT_EXIT",
    "VISIT_FIELDS",
    "VISIT_GAP_MS",
    "VISIT_ID",
    "VISIT_ITEMS",
    "VISIT_OFFSETS_MS",
    "VISIT_PAGEVIEWS",
    "VISIT_PAGE_TIME_MS",
    "VISIT_PREV",
    "VISIT_SEQ",
    "VISIT_SOURCE",
    "VISIT_START",
    "VISIT_DIRECT",
    "REPLACED_DATASETS",
]

TIMESTAMP = "@timestamp"
VERSION = "@version"

EVENT_ID = "event.id"  # assigned at ingestion; also the Elasticsearch _id
EVENT_ACTION = "event.action"  # the tick's `event`: view, download, error, ...
EVENT_DATASET = "event.dataset"  # metronome.ticks
EVENT_INGESTED = "event.ingested"

ITEM_ID = "item.id"  # the tick's `id`: a page, dataset, map or app
ITEM_FORMAT = "item.format"  # the tick's `format`, lowercased: csv, kml, shp, ...

URL_ORIGINAL = "url.original"
URL_DOMAIN = "url.domain"
URL_PATH = "url.path"

HTTP_REQUEST_REFERRER = "http.request.referrer"  # as sent
REFERRER_DOMAIN = "referrer.domain"  # host without a leading www.
REFERRER_PAGE = "referrer.page"  # host + path, no scheme, query or trailing slash
REFERRER_SPAM = "referrer.spam"  # true when the domain is on the referrer block list

CLIENT_IP = "client.ip"
CLIENT_GEO_COUNTRY_ISO_CODE = "client.geo.country_iso_code"  # offline database: events/geo.py

USER_AGENT_ORIGINAL = "user_agent.original"
USER_AGENT_NAME = "user_agent.name"
USER_AGENT_VERSION = "user_agent.version"
USER_AGENT_OS_NAME = "user_agent.os.name"
USER_AGENT_OS_VERSION = "user_agent.os.version"
USER_AGENT_DEVICE_NAME = "user_agent.device.name"

BOT = "bot"  # true for known crawlers

VISITOR_ID = "visitor.id"  # daily-salted hash of address and user agent: events/visitor.py
# The site an event belongs to (metronome.sites): stamped at ingestion from the
# authenticated site, never from what a client sends; every report filters on it.
SITE_ID = "site.id"
DEFAULT_SITE = "default"  # the single-user default: the site of events when no site exists
# What a site id may be (settings, sites, trusted inputs check it before stamping one)
SITE_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# Visits (issue 25; metronome/pipeline/visits.py assigns them): a visitor's run of events on
# one site with no gap longer than METRONOME_VISIT_GAP, within one day of its visitor id.
# Every tick and log event of a visit carries these four (crawlers and referrer spam none).
VISIT_ID = "visit.id"  # hash of the site and the visit's first event id; related items
# (metronome/recommend/) count a visit as one basket
VISIT_SEQ = "visit.seq"  # the event's position in the visit, from 1
VISIT_GAP_MS = "visit.gap_ms"  # time since the visitor's previous event in the visit
VISIT_PREV = "visit.prev"  # the page (item) the visitor was on before; absent on entry

VISIT_EVENT_FIELDS: frozenset[str] = frozenset({VISIT_ID, VISIT_SEQ, VISIT_GAP_MS, VISIT_PREV})

PARAMS = "params"  # object of free parameters, one keyword field each
# object of a typed event's fields (events/typed.py): numbers as doubles, text as keywords
TYPED = "typed"

# Errors (issue 25): an ``error`` tick's report of what broke (events/errors.py), ECS
# ``error.*`` where ECS has a name; ticks only (a log document has none of them).
ERROR_MESSAGE = "error.message"
ERROR_TYPE = "error.type"  # TypeError, ValueError, ... (a rejection's reason's class)
ERROR_SOURCE = "error.source"  # the script (or module) the error came from
ERROR_LINE = "error.line"
ERROR_COLUMN = "error.column"
ERROR_STACK_TRACE = "error.stack_trace"
ERROR_GROUP = "error.group"  # normalised message and top frame: what a group is called
ERROR_FINGERPRINT = "error.fingerprint"  # hash of error.type and error.group: one per group

ERROR_FIELDS: frozenset[str] = frozenset(
    {
        ERROR_MESSAGE,
        ERROR_TYPE,
        ERROR_SOURCE,
        ERROR_LINE,
        ERROR_COLUMN,
        ERROR_STACK_TRACE,
        ERROR_GROUP,
        ERROR_FINGERPRINT,
    }
)
"""The fields of an ``error`` tick's report (ticks only)."""

TICK_FIELDS: frozenset[str] = frozenset(
    ERROR_FIELDS
    | {
        TIMESTAMP,
        VERSION,
        EVENT_ID,
        EVENT_ACTION,
        EVENT_DATASET,
        EVENT_INGESTED,
        ITEM_ID,
        ITEM_FORMAT,
        URL_ORIGINAL,
        URL_DOMAIN,
        URL_PATH,
        HTTP_REQUEST_REFERRER,
        REFERRER_DOMAIN,
        REFERRER_PAGE,
        REFERRER_SPAM,
        CLIENT_IP,
        CLIENT_GEO_COUNTRY_ISO_CODE,
        USER_AGENT_ORIGINAL,
        USER_AGENT_NAME,
        USER_AGENT_VERSION,
        USER_AGENT_OS_NAME,
        USER_AGENT_OS_VERSION,
        USER_AGENT_DEVICE_NAME,
        BOT,
        VISITOR_ID,
        SITE_ID,
        *VISIT_EVENT_FIELDS,
    }
)
"""Every fixed field of a tick document (``params.*`` excluded)."""

# Access logs (dataset "logs"): a log document uses the tick fields above that an access
# log line can fill (never client.ip or params.*) and these, mapped by
# index_templates/component/metronome-logs-mappings.json.

SOURCE_IP = "source.ip"  # the client that sent the request (X-Forwarded-For via trusted proxies)
HTTP_REQUEST_METHOD = "http.request.method"  # as logged: GET, POST, ...
HTTP_VERSION = "http.version"  # 1.1, 2.0 (no "HTTP/")
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_RESPONSE_BODY_BYTES = "http.response.body.bytes"
URL_QUERY = "url.query"  # the request target after "?", without it
EVENT_DURATION = "event.duration"  # nanoseconds, from $request_time
SOURCE_ADDRESS = "source.address"  # the client as logged: its address, or a host name
SOURCE_PORT = "source.port"  # the client's port, where logged (ELB, ALB, HAProxy)
DESTINATION_PORT = "destination.port"  # the server's port: a host:port prefix, %p
RELATED_IP = "related.ip"  # every address of a forwarded chain (the client among them)
# API calls (events/api_call.py: what metronome.middleware reports) are stored with the
# access logs, in the same shape, plus these two:
HTTP_ROUTE = "http.route"  # the route template that answered (/users/{id}), not the raw path
USER_ID = "user.id"  # the authenticated user, as the tracked app's hook names them

LOG_FIELDS: frozenset[str] = frozenset(
    (TICK_FIELDS - ERROR_FIELDS)
    | {
        SOURCE_IP,
        HTTP_REQUEST_METHOD,
        HTTP_VERSION,
        HTTP_RESPONSE_STATUS_CODE,
        HTTP_RESPONSE_BODY_BYTES,
        URL_QUERY,
        EVENT_DURATION,
        SOURCE_ADDRESS,
        SOURCE_PORT,
        DESTINATION_PORT,
        RELATED_IP,
        HTTP_ROUTE,
        USER_ID,
    }
)
"""Every field the ``logs`` indices map: the shared base mappings (so ``client.ip`` too,
which log documents leave empty: their client is ``source.ip``), ``item.*``,
``referrer.*``, the access-log fields and an API call's route and user. A log document
carries a subset of these."""

# Metrics (dataset "metrics"): periodic measurements in <prefix>-metrics-YYYY.MM.DD, mapped by
# index_templates/component/metronome-metrics-mappings.json on top of the shared base
# mappings. Values live under one object, ``metrics.<name>``, each mapped as a double.

METRICSET_NAME = "metricset.name"  # which collector measured: "spool", "store", ...
HOST_NAME = "host.name"
SERVICE_NAME = "service.name"
METRICS = "metrics"  # object of numeric values, one double field each

# Points (events/point.py) live in the same dataset: one measurement of one producer (a
# telemetry app, a collector, a monitor), in <prefix>-metrics-<app>-YYYY.MM.DD.
POINT_DATASET = "metrics"
APP = "app"  # the producer: a telemetry app's id, or a collector's or monitor's name
METRIC_NAME = "metric.name"  # the measurement: storage_capacity, enabled_feature, ...
TAGS = "tags"  # object of keyword values (tags.<name>): what a point is about
FIELDS = "fields"  # object of double values (fields.<name>): what was measured
# What an app id (and any producer's name) may be: it is part of index names
APP_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

METRIC_FIELDS: frozenset[str] = frozenset(
    (
        TICK_FIELDS
        - ERROR_FIELDS
        - {ITEM_ID, ITEM_FORMAT, REFERRER_DOMAIN, REFERRER_PAGE, REFERRER_SPAM}
    )
    - VISIT_EVENT_FIELDS
    | {METRICSET_NAME, HOST_NAME, SERVICE_NAME, APP, METRIC_NAME}
)
"""Every fixed field the ``metrics`` indices map (``metrics.*``, ``tags.*`` and
``fields.*`` excluded): the shared base mappings, the metric set, host and service names,
and a point's producer and metric name."""

# Insights (dataset "insights"): what the worker found in a KPI's series -- a trend, a
# threshold crossing or an anomaly, raised or recovered -- in <prefix>-insights-YYYY.MM.DD,
# mapped by index_templates/component/metronome-insights-mappings.json on top of the shared
# base mappings. ``@timestamp`` is the start of the bucket the insight is about.

INSIGHT_DATASET = "insights"
KPI_ID = "kpi.id"
KPI_NAME = "kpi.name"
KPI_DASHBOARD = "kpi.dashboard"
INSIGHT_KIND = "insight.kind"  # trend, threshold or anomaly
INSIGHT_STATE = "insight.state"  # raised or recovered
INSIGHT_KEY = "insight.key"  # what is raised and recovered: kpi, kind and its variant
INSIGHT_COMPARED_TO = "insight.compared_to"  # expected_range, previous_period, ...
INSIGHT_DIRECTION = "insight.direction"  # up or down
INSIGHT_MESSAGE = "insight.message"  # the explanation a person reads
INSIGHT_OBSERVED = "insight.observed"
INSIGHT_EXPECTED = "insight.expected"
INSIGHT_LOW = "insight.low"  # the expected range (anomalies), or the reference (trends)
INSIGHT_HIGH = "insight.high"
INSIGHT_SCORE = "insight.score"  # robust z-score (anomalies)
INSIGHT_CHANGE = "insight.change"  # relative change (trends): 0.25 is +25%
INSIGHT_RAISED_AT = "insight.raised_at"  # epoch ms of the bucket that raised it (both states)

INSIGHT_FIELDS: frozenset[str] = frozenset(
    (
        TICK_FIELDS
        - ERROR_FIELDS
        - {ITEM_ID, ITEM_FORMAT, REFERRER_DOMAIN, REFERRER_PAGE, REFERRER_SPAM}
    )
    - VISIT_EVENT_FIELDS
    | {
        KPI_ID,
        KPI_NAME,
        KPI_DASHBOARD,
        INSIGHT_KIND,
        INSIGHT_STATE,
        INSIGHT_KEY,
        INSIGHT_COMPARED_TO,
        INSIGHT_DIRECTION,
        INSIGHT_MESSAGE,
        INSIGHT_OBSERVED,
        INSIGHT_EXPECTED,
        INSIGHT_LOW,
        INSIGHT_HIGH,
        INSIGHT_SCORE,
        INSIGHT_CHANGE,
        INSIGHT_RAISED_AT,
    }
)
"""Every field the ``insights`` indices map: the shared base mappings and the insight's."""
# Rollups (dataset "rollups", <prefix>-rollups-<app>-YYYY.MM.DD): one document per bucket of
# a rolled-up metric and combination of its kept tags, at the bucket's start, with the
# point fields above (app, metric.name, tags.*, site.id) and the stats of its fields:
# sums under fields.<name> (so a sum reads the same field as on points), and min, max and
# last values under their own objects. Mapped by metronome-rollups-mappings.json.

ROLLUP_DATASET = "rollups"
ROLLUP_INTERVAL = "rollup.interval"  # hour or day
ROLLUP_COUNT = "rollup.count"  # points rolled into the document
ROLLUP_STAT_OBJECTS = {"min": "fields_min", "max": "fields_max", "last": "fields_last"}

ROLLUP_FIELDS: frozenset[str] = frozenset(METRIC_FIELDS | {ROLLUP_INTERVAL, ROLLUP_COUNT})
"""Every fixed field the ``rollups`` indices map (the objects of values excluded)."""

# Visit summaries (dataset "visits", <prefix>-visits-YYYY.MM.DD by the visit's start; rows of
# dataset "visits" in the embedded store, also seen through its ``visits`` view): one document
# per visit, its id the visit id, written again (replaced) as the visit grows. It carries the
# entry event's site, visitor, user agent, country and url fields, and these, mapped by
# index_templates/component/metronome-visits-mappings.json. ``@timestamp`` is the start.

VISITS_DATASET = "visits"
VISIT_START = "visit.start"  # epoch ms of the first event
VISIT_END = "visit.end"  # epoch ms of the last event
VISIT_EVENTS = "visit.events"  # events in the visit
VISIT_PAGEVIEWS = "visit.pageviews"  # page views among them (view ticks; access-log pages)
VISIT_DURATION_MS = "visit.duration_ms"  # end - start
VISIT_ENTRY = "visit.entry"  # the first page (item id, or url.path without one)
VISIT_EXIT = "visit.exit"  # the last page
VISIT_ITEMS = "visit.items"  # the pages in time order (repeats kept), at most 500
VISIT_OFFSETS_MS = "visit.offsets_ms"  # ms from the start to each of visit.items
VISIT_SOURCE = "visit.source"  # the entry's referrer host, or "direct"
VISIT_BOUNCE = "visit.bounce"  # 1 when the visit has at most one page view, else 0
VISIT_PAGE_TIME_MS = "visit.page_time_ms"  # duration / (pages - 1): absent on one page
VISIT_DIRECT = "direct"  # visit.source of a visit whose entry has no external referrer

VISIT_FIELDS: frozenset[str] = frozenset(
    (
        TICK_FIELDS
        - ERROR_FIELDS
        - {ITEM_ID, ITEM_FORMAT, REFERRER_DOMAIN, REFERRER_PAGE, REFERRER_SPAM}
    )
    - VISIT_EVENT_FIELDS
    | {
        VISIT_ID,
        VISIT_START,
        VISIT_END,
        VISIT_EVENTS,
        VISIT_PAGEVIEWS,
        VISIT_DURATION_MS,
        VISIT_ENTRY,
        VISIT_EXIT,
        VISIT_ITEMS,
        VISIT_OFFSETS_MS,
        VISIT_SOURCE,
        VISIT_BOUNCE,
        VISIT_PAGE_TIME_MS,
    }
)
"""Every field the ``visits`` indices map: the shared base mappings and the visit's."""

REPLACED_DATASETS: frozenset[str] = frozenset({VISITS_DATASET})
"""Datasets of summaries: a second write of an id replaces the document (elsewhere it is a
no-op), so a summary written again as its visit grows is stored once, up to date."""
