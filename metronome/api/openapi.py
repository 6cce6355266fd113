"""``GET /openapi.json``: the API described in OpenAPI 3.1.

Built from the schemas the code validates with: the query schema of
:mod:`metronome.reports.query`, the tick schema of :mod:`metronome.events.tick`, the error
codes of :mod:`metronome.errors` and the report list of :mod:`metronome.reports.named`.
Who may call what is :mod:`metronome.api.guard`'s rules, described as its security: a
bearer key with a scope, or no key (while no site exists; from a site's allowed origins
for browser ingest; a site's public item reports), and the ``site`` parameter.
"""

from __future__ import annotations

import copy
from typing import Any

import falcon.asgi

from metronome import __version__
from metronome.errors import all_error_classes
from metronome.events.fields import SITE_ID_PATTERN
from metronome.events.monitoring import KINDS, MAX_PROBE_RESULTS, STATES
from metronome.events.tick import TICK_SCHEMA
from metronome.kpis.model import KPI_SCHEMA
from metronome.live.protocol import CLIENT_MESSAGE_SCHEMA, CLOSE_CODES, SERVER_MESSAGE_SCHEMA
from metronome.recommend.related import PARAMETERS as RELATED_PARAMETERS
from metronome.reports.funnels import FUNNEL_SCHEMA
from metronome.reports.named import COMMON_PARAMETERS, REPORTS
from metronome.reports.query import QUERY_SCHEMA

from .dashboard import ASSETS

__all__ = ["OpenAPI", "openapi_document"]

_HTTP_ERROR_CODES = [
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "bad_request",
    "internal_error",
]

_TOKEN_PARAMETER = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "A token from `POST /live/token` (`mlt_...`), for browsers, which cannot"
    " send an `Authorization` header on these routes; servers send their key as a bearer.",
    "schema": {"type": "string", "maxLength": 1024},
}


def _live_paths() -> dict[str, Any]:
    """``/live``, ``/live/events``, ``/live/token`` and the dashboard's pages."""
    closes = "; ".join(f"`{code}` {text}" for code, text in CLOSE_CODES.items())
    live_text = (
        " Once a site exists: a key with the `query` scope, or a token; a page (an `Origin`)"
        " must be this server's own or one the site allows. Every message is JSON with a"
        " `type`: the client's are `LiveClientMessage`, the server's `LiveServerMessage`"
        " (components below)."
    )
    return {
        "/live": {
            "get": {
                "summary": "Live subscriptions (WebSocket): /query answers pushed as they change",
                "description": "Open as a WebSocket (`Upgrade: websocket`); subscribe with a"
                " `/query` body whose range rolls (`5min`, `1h`, `today`) and a frequency, get"
                " `result` messages at most that often and only when the answer changed."
                + live_text
                + f" Close codes: {closes}. Over plain HTTP: `426 upgrade_required`.",
                "operationId": "live",
                "security": _READ_SECURITY,
                "parameters": [_TOKEN_PARAMETER, _SITE_PARAMETER],
                "responses": {
                    "101": {"description": "Switching to the WebSocket protocol"},
                    "426": {
                        "description": "Asked over plain HTTP: open it as a WebSocket",
                        "content": _json(_ref("Error")),
                    },
                    **_errors(400, 401, 403),
                },
            }
        },
        "/live/events": {
            "get": {
                "summary": "Live subscriptions as Server-Sent Events (where WebSockets are"
                " blocked)",
                "description": 'Each `s` is a subscription (`{"id", "query",'
                ' "frequency"}`, JSON); each event\'s data is a `LiveServerMessage`; to'
                " change the subscriptions, reconnect. Pings come as events too (no answer"
                " needed); an event named `close` ends the stream." + live_text,
                "operationId": "liveEvents",
                "security": _READ_SECURITY,
                "parameters": [
                    {
                        "name": "s",
                        "in": "query",
                        "required": True,
                        "description": "a subscription, as JSON; repeat for more",
                        "schema": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "style": "form",
                        "explode": True,
                    },
                    _TOKEN_PARAMETER,
                    _SITE_PARAMETER,
                ],
                "responses": {
                    "200": {
                        "description": "An endless stream of events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 403, 429),
                },
            }
        },
        "/live/token": {
            "post": {
                "summary": "Mint a short-lived token for a browser (the dashboard's sign-in)",
                "description": "The token reads as the key that minted it, for its site, until"
                " it expires (`METRONOME_LIVE_TOKEN_TTL_S`) or the key is revoked: as a bearer"
                " on `/query`, `/tock` and `/reports`, as `?token=` on `/live` and"
                " `/live/events`. A token cannot mint another." + _GUARD_TEXT["read"],
                "operationId": "liveToken",
                "security": _READ_SECURITY,
                "parameters": [
                    {
                        **_SITE_PARAMETER,
                        "schema": {"type": "string", "pattern": SITE_ID_PATTERN.pattern},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The token",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["token", "site", "expires_s", "ttl_s"],
                                "properties": {
                                    "token": {"type": "string"},
                                    "site": {"type": "string"},
                                    "expires_s": {"type": "integer"},
                                    "ttl_s": {"type": "integer"},
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 403),
                },
            }
        },
        "/dashboard": {
            "get": {
                "summary": "The dashboard (a web page; signs in with a query key)",
                "operationId": "dashboard",
                "security": _NO_SECURITY,
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/dashboard/{asset}": {
            "get": {
                "summary": "The dashboard's script and styles",
                "operationId": "dashboardAsset",
                "security": _NO_SECURITY,
                "parameters": [
                    {
                        "name": "asset",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": [n for n in ASSETS if n != "index.html"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "JavaScript or CSS",
                        "content": {"text/javascript": {}, "text/css": {}},
                    },
                    "404": {"description": "No such file", "content": _json(_ref("Error"))},
                },
            }
        },
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _rewrite_refs(node: Any, defs_to: str) -> Any:
    """Point ``#/$defs/x`` references at ``components/schemas`` (OpenAPI's home for them)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = f"#/components/schemas/{defs_to}{value[len('#/$defs/') :].title()}"
            elif key not in ("$schema", "$defs"):
                out[key] = _rewrite_refs(value, defs_to)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, defs_to) for item in node]
    return node


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "The request is wrong; `error` says how, `details` where (`unknown_site`: no"
        " such site, or a site named while none exists)",
        401: "A key is needed (`key_required`) or the one sent is unknown or revoked"
        " (`invalid_key`)",
        403: "The key lacks the route's scope (`scope_forbidden`) or is for another site"
        " (`site_forbidden`), or the page's origin may not send to the site"
        " (`origin_forbidden`)",
        404: "No such route, report or KPI",
        405: "Method not allowed here",
        413: "The body is over the limit",
        415: "Send a JSON body",
        429: "Too many requests; wait for Retry-After seconds",
        503: "The store or the spool cannot take it now; retry after Retry-After",
    }
    return {str(s): {"description": reasons[s], "content": _json(_ref("Error"))} for s in statuses}


def _query_params(spec: dict[str, str], required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "description": text,
            "schema": {"type": "string"},
        }
        for name, text in spec.items()
    ]


_KEY = "key"
_SITE_PARAMETER = {
    "name": "site",
    "in": "query",
    "required": False,
    "description": "The site id. Without a key: the site a page sends to, or whose public"
    " item reports are read. With a key for one site: that site, or leave it out. With an"
    " all-sites admin key: required. While no site exists: leave it out (or `default`).",
    "schema": {"type": "string"},
}
_SECURITY_SCHEMES = {
    _KEY: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "mk_...",
        "description": "A key made with `metronome keys create`, for one site or all"
        " (`--all-sites`), with scopes: `ingest` (send ticks), `query` (read reports),"
        " `admin` (both). An operation's required scope is in its `security`. While no"
        " site exists nothing needs a key (keys are not looked at).",
    }
}
# the empty requirement: no key, while no site exists, or as the operation's text says
_INGEST_SECURITY = [{_KEY: ["ingest"]}, {}]
_READ_SECURITY = [{_KEY: ["query"]}, {}]
_NO_SECURITY: list[dict[str, list[str]]] = []
_GUARD_TEXT = {
    "ingest": " Without a key (once a site exists): name the site with `?site=` (or the"
    " ticks' `site` field) and send from a page whose `Origin` the site allows.",
    "pixel": " Without a key (once a site exists): name the site with `?site=`; the"
    " `Origin`, else the origin of the `Referer`, must be one the site allows (a request"
    " with neither cannot be checked and is taken). `HEAD` answers the image's headers"
    " and records nothing.",
    "tock": " Without a key (once a site exists): only a site with public item reports,"
    " named with `?site=`.",
    "read": " Once a site exists: a key with the `query` scope.",
}


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    query_schema = _rewrite_refs(copy.deepcopy(QUERY_SCHEMA), "Query")
    query_filter = _rewrite_refs(copy.deepcopy(QUERY_SCHEMA["$defs"]["filter"]), "Query")
    codes = sorted({cls.code for cls in all_error_classes()} | set(_HTTP_ERROR_CODES))
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"enum": codes},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        },
        "Tick": TICK_SCHEMA,
        "Query": query_schema,
        "QueryFilter": query_filter,
        "QueryAnswer": {
            "type": "object",
            "required": ["results", "meta", "query"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["dimensions", "metrics"],
                        "properties": {
                            "dimensions": {"type": "array"},
                            "metrics": {"type": "array"},
                            "previous": {"type": "array"},
                            "change": {"type": "array"},
                        },
                    },
                },
                "meta": {
                    "type": "object",
                    "required": ["dimensions", "metrics", "next"],
                    "properties": {"next": {"type": ["string", "null"]}},
                },
                "query": {"type": "object"},
                "report": {"type": "string"},
                "forecast": {
                    "type": "array",
                    "description": "with `forecast` in the query: the next buckets, each"
                    " with metrics, low and high (the interval), per metric",
                    "items": {
                        "type": "object",
                        "required": ["dimensions", "metrics", "low", "high"],
                        "properties": {
                            "dimensions": {"type": "array"},
                            "metrics": {"type": "array"},
                            "low": {"type": "array"},
                            "high": {"type": "array"},
                        },
                    },
                },
            },
        },
        "Kpi": {k: v for k, v in KPI_SCHEMA.items() if k != "$schema"},
        "StoredKpi": {
            "type": "object",
            "required": ["id", "site", "name", "query", "interval", "created_ms"],
            "properties": {
                "id": {"type": "string"},
                "site": {"type": "string"},
                "name": {"type": "string"},
                "query": {"type": "object"},
                "interval": {"enum": ["hour", "day"]},
                "created_ms": {"type": "integer"},
            },
        },
        "LiveClientMessage": CLIENT_MESSAGE_SCHEMA,
        "LiveServerMessage": SERVER_MESSAGE_SCHEMA,
        "Tock": {
            "type": "object",
            "required": ["views", "downloads", "referers"],
            "properties": {
                name: {"type": "object", "additionalProperties": {"type": "integer"}}
                for name in ("views", "downloads", "referers")
            },
        },
        "SeriesReport": {
            "description": "A platform report of several parts (storage-growth, extractions,"
            " concurrency: a row per time bucket and series, with running totals; uptime: a"
            " row per monitor and region)",
            "type": "object",
            "required": ["report", "results", "meta"],
            "not": {"required": ["query"]},  # what tells it from a QueryAnswer
            "properties": {
                "report": {"type": "string"},
                "results": {"type": "array", "items": {"type": "object"}},
                "meta": {"type": "object", "required": ["range", "tz"]},
            },
        },
    }
    tock_params = _query_params(  # id is in the path; site is described with security
        {k: v for k, v in REPORTS["tock"].parameters.items() if k not in ("id", "site")}
    )
    report_names = list(REPORTS)
    ingest_errors = _errors(400, 401, 403, 413, 415, 429, 503)
    paths: dict[str, Any] = {
        "/tick": {
            "post": {
                "summary": "Send one tick",
                "description": "Spooled, then stored." + _GUARD_TEXT["ingest"],
                "operationId": "postTick",
                "security": _INGEST_SECURITY,
                "parameters": [_SITE_PARAMETER],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("Tick")},
                        "text/plain": {
                            "schema": {"type": "string"},
                            "description": "JSON sent as text (navigator.sendBeacon)",
                        },
                    },
                },
                "responses": {
                    "202": {
                        "description": "Spooled: safe on disk",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "string"}},
                            }
                        ),
                    },
                    **ingest_errors,
                },
            }
        },
        "/ticks": {
            "post": {
                "summary": "Send a batch of ticks (a JSON array, or NDJSON)",
                "description": "Each tick is checked on its own." + _GUARD_TEXT["ingest"],
                "operationId": "postTicks",
                "security": _INGEST_SECURITY,
                "parameters": [
                    _SITE_PARAMETER,
                    {  # issue 23: what a `metronome` destination sends
                        "name": "X-Metronome-Forwarded",
                        "in": "header",
                        "required": False,
                        "description": "`1`: the ticks come from another Metronome; each"
                        " carries `event_id`, its event id there (32 lowercase hex digits),"
                        " and is stored under an id made from it and the site, so a tick"
                        " sent again is stored once",
                        "schema": {"type": "string", "enum": ["1"]},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"type": "array", "items": _ref("Tick")}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "202": {
                        "description": "What was accepted, and why the rest was not",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["accepted", "rejected", "ids"],
                                "properties": {
                                    "accepted": {"type": "integer"},
                                    "rejected": {"type": "array"},
                                    "ids": {"type": "array"},
                                },
                            }
                        ),
                    },
                    **ingest_errors,
                },
            }
        },
        "/tick.gif": {
            "get": {
                "summary": "A tick as a 1x1 image, for e-mails and noscript",
                "description": "The tick's fields as query parameters." + _GUARD_TEXT["pixel"],
                "operationId": "getTickGif",
                "security": _INGEST_SECURITY,
                "parameters": [
                    *_query_params(
                        {
                            "id": "the item",
                            "event": "view (default), ...",
                            "format": "file format",
                            "url": "page",
                            "referrer": "referring page",
                        },
                        required=("id",),
                    ),
                    _SITE_PARAMETER,
                ],
                "responses": {
                    "200": {"description": "A transparent GIF", "content": {"image/gif": {}}},
                    **_errors(400, 401, 403, 429, 503),
                },
            }
        },
        "/tock/{item_id}": {
            "get": {
                "summary": "One item's report: views per bucket, downloads by format, referrers",
                "description": "The item report." + _GUARD_TEXT["tock"],
                "operationId": "getTock",
                "security": _READ_SECURITY,
                "parameters": [
                    {
                        "name": "item_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    *tock_params,
                    _SITE_PARAMETER,
                ],
                "responses": {
                    "200": {"description": "The report", "content": _json(_ref("Tock"))},
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/tock": {
            "get": {
                "summary": "The item report for ids that contain '/': /tock?id=...",
                "description": "The item report." + _GUARD_TEXT["tock"],
                "operationId": "getTockById",
                "security": _READ_SECURITY,
                "parameters": [
                    *_query_params({"id": "the item"}, required=("id",)),
                    *tock_params,
                    _SITE_PARAMETER,
                ],
                "responses": {
                    "200": {"description": "The report", "content": _json(_ref("Tock"))},
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/query": {
            "post": {
                "summary": "Any question: metrics by dimensions over a range, with filters",
                "description": "Answered for one site only." + _GUARD_TEXT["read"],
                "operationId": "postQuery",
                "security": _READ_SECURITY,
                "parameters": [_SITE_PARAMETER],
                "requestBody": {"required": True, "content": _json(_ref("Query"))},
                "responses": {
                    "200": {"description": "The answer", "content": _json(_ref("QueryAnswer"))},
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            }
        },
        "/reports": {
            "get": {
                "summary": "The built-in reports and their parameters",
                "operationId": "listReports",
                "security": _NO_SECURITY,
                "responses": {
                    "200": {
                        "description": "Report names",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["reports"],
                                "properties": {"reports": {"type": "array"}},
                            }
                        ),
                    }
                },
            }
        },
        "/reports/{name}": {
            "get": {
                "summary": "A built-in report (the /query answer; tock answers in its own shape)",
                "description": "Answered for one site only."
                + _GUARD_TEXT["read"]
                + " The `tock` report as `GET /tock` says.",
                "operationId": "getReport",
                "security": _READ_SECURITY,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": report_names},
                    },
                    *_query_params(
                        {
                            **COMMON_PARAMETERS,
                            "source": "ticks, logs or all",
                            "event": "top-items: only this event",
                            "interval": "hour, day, week or month",
                            "id": "tock: the item",
                            "app": "telemetry reports: the app",
                            "instance": "telemetry reports: the instance tag",
                            "metric": "telemetry reports: the metric name",
                            "field": "fleet-total: the gauge's field",
                            "features": "feature-adoption: fields, separated by commas",
                            "version_tag": "telemetry reports: the version's tag",
                        }
                    ),
                    _SITE_PARAMETER,
                ],
                "responses": {
                    "200": {
                        "description": "The report",
                        "content": _json(
                            {"oneOf": [_ref("QueryAnswer"), _ref("Tock"), _ref("SeriesReport")]}
                        ),
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process answers",
                "operationId": "health",
                "security": _NO_SECURITY,
                "responses": {"200": {"description": "ok", "content": _json({"type": "object"})}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Ready (or degraded: the store is down, the spool has room)",
                "operationId": "ready",
                "security": _NO_SECURITY,
                "responses": {
                    "200": {
                        "description": "ready or degraded",
                        "content": _json({"type": "object"}),
                    },
                    "503": {"description": "not ready", "content": _json({"type": "object"})},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": _NO_SECURITY,
                "responses": {
                    "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                },
            }
        },
        "/metronome.js": {
            "get": {
                "summary": "The browser tracker",
                "operationId": "tracker",
                "security": _NO_SECURITY,
                "responses": {
                    "200": {"description": "JavaScript", "content": {"text/javascript": {}}},
                    "304": {"description": "Not modified"},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": _NO_SECURITY,
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}
                },
            }
        },
    }
    paths.update(_telemetry_paths())
    schemas.update(_TELEMETRY_SCHEMAS)
    paths.update(_kpi_paths())
    paths.update(_related_paths())  # issue 25: recommendations
    paths.update(_funnel_paths())  # issue 25: funnels saved per site
    schemas.update(_FUNNEL_SCHEMAS)
    schemas.update(_RELATED_SCHEMAS)
    paths.update(_PROBE_PATHS)  # issue 20: remote probes
    schemas.update(_PROBE_SCHEMAS)
    paths.update(_live_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Metronome",
            "version": __version__,
            "description": "Self-hosted usage analytics: ticks and access logs in,"
            " reports out. Errors are JSON with a stable `error` code. While no site exists"
            " (the single-user default) nothing needs a key; once one does, each operation's"
            " `security` and description say who may call it.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": _SECURITY_SCHEMES},
    }


# -- telemetry (issue 19): the binoculars and upgrade-responder endpoints ----------------

_METRIC = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "fields": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]}},
    },
}
_TELEMETRY_SCHEMAS: dict[str, Any] = {
    "TelemetryMetrics": {
        "description": "binoculars: the metrics, wrapped or as the bare array",
        "oneOf": [
            {
                "type": "object",
                "required": ["metrics"],
                "additionalProperties": False,
                "properties": {"metrics": {"type": "array", "items": _METRIC}},
            },
            {"type": "array", "items": _METRIC},
        ],
    },
    "TelemetryRefusal": {
        "type": "object",
        "required": ["index", "reason"],
        "properties": {
            "index": {"type": "integer"},
            "reason": {"type": "string"},
            "field": {"type": "string"},
        },
    },
    "TelemetryAnswer": {
        "type": "object",
        "required": ["requestIntervalInMinutes"],
        "properties": {
            "requestIntervalInMinutes": {"type": "integer", "minimum": 1},
            "refused": {"type": "array", "items": _ref("TelemetryRefusal")},
        },
    },
    "CheckUpgrade": {
        "description": "upgrade-responder: the running version and extra information",
        "type": "object",
        "required": ["appVersion"],
        "properties": {
            "appVersion": {"type": "string", "minLength": 1},
            "extraInfo": {"type": ["object", "null"]},
            "extraTagInfo": {"type": ["object", "null"]},
            "extraFieldInfo": {"type": ["object", "null"]},
        },
    },
    "CheckUpgradeAnswer": {
        "type": "object",
        "required": ["versions", "requestIntervalInMinutes"],
        "properties": {
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "releaseDate", "tags"],
                    "properties": {
                        "name": {"type": "string"},
                        "releaseDate": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
            "requestIntervalInMinutes": {"type": "integer", "minimum": 1},
            "refused": {"type": "array", "items": _ref("TelemetryRefusal")},
        },
    },
}
_TELEMETRY_TEXT = (
    " No key: the app's optional URL token (`?token=`), per-address and per-instance rate"
    " limits, and a switch per endpoint (`metronome apps update --disable`) guard it."
)


def _telemetry_paths() -> dict[str, Any]:
    """The telemetry routes, for the default app (``/v1/...``) and any app."""
    paths: dict[str, Any] = {}
    for prefix in ("", "/apps/{app}"):
        params: list[dict[str, Any]] = _query_params({"token": "the app's URL token, if set"})
        if prefix:
            params.insert(
                0,
                {
                    "name": "app",
                    "in": "path",
                    "required": True,
                    "description": "the app's id (`metronome apps list`)",
                    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
                },
            )
        which = "the app" if prefix else "the default app (METRONOME_TELEMETRY_APP)"
        suffix = "ForApp" if prefix else ""
        paths[f"{prefix}/v1/metrics"] = {
            "post": {
                "summary": f"binoculars: store metrics as points of {which}",
                "description": "Answers 200 once the points are spooled, with the interval"
                " the client waits; metrics or fields left out are listed in `refused`."
                + _TELEMETRY_TEXT,
                "operationId": f"postTelemetryMetrics{suffix}",
                "security": _NO_SECURITY,
                "parameters": params,
                "requestBody": {"required": True, "content": _json(_ref("TelemetryMetrics"))},
                "responses": {
                    "200": {"description": "stored", "content": _json(_ref("TelemetryAnswer"))},
                    **_errors(400, 401, 403, 404, 413, 415, 429, 503),
                },
            }
        }
        paths[f"{prefix}/v1/checkupgrade"] = {
            "post": {
                "summary": f"upgrade-responder: the versions of {which}; records the check",
                "description": "Answers the app's versions file and the interval; records one"
                " `upgrade_request` point." + _TELEMETRY_TEXT,
                "operationId": f"postCheckUpgrade{suffix}",
                "security": _NO_SECURITY,
                "parameters": params,
                "requestBody": {"required": True, "content": _json(_ref("CheckUpgrade"))},
                "responses": {
                    "200": {
                        "description": "the versions",
                        "content": _json(_ref("CheckUpgradeAnswer")),
                    },
                    **_errors(400, 401, 403, 404, 413, 415, 429, 503),
                },
            }
        }
        paths[f"{prefix}/v1/healthcheck"] = {
            "get": {
                "summary": f"binoculars: {which} answers",
                "operationId": f"telemetryHealth{suffix}",
                "security": _NO_SECURITY,
                "parameters": params[:1] if prefix else [],
                "responses": {
                    "200": {"description": "ok", "content": _json({"type": "object"})},
                    **_errors(403, 404),
                },
            }
        }
    return paths


def _kpi_paths() -> dict[str, Any]:
    """``/kpis`` and ``/kpis/{kpi_id}`` (issue 22)."""
    text = (
        " A KPI is a saved query of one site: the worker evaluates it and stores insights"
        ' (`POST /query` with `"source": "insights"`).' + _GUARD_TEXT["read"]
    )
    kpi_id = {
        "name": "kpi_id",
        "in": "path",
        "required": True,
        "description": "The KPI's id",
        "schema": {"type": "string"},
    }
    stored = _json(_ref("StoredKpi"))
    return {
        "/kpis": {
            "get": {
                "summary": "The site's KPIs (widgets: those with a dashboard), by position",
                "description": text,
                "operationId": "listKpis",
                "security": _READ_SECURITY,
                "parameters": [_SITE_PARAMETER],
                "responses": {
                    "200": {
                        "description": "The KPIs",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["kpis"],
                                "properties": {
                                    "kpis": {"type": "array", "items": _ref("StoredKpi")}
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 403, 503),
                },
            },
            "post": {
                "summary": "Define a KPI (one with the same id is replaced)",
                "description": text,
                "operationId": "createKpi",
                "security": _READ_SECURITY,
                "parameters": [_SITE_PARAMETER],
                "requestBody": {"required": True, "content": _json(_ref("Kpi"))},
                "responses": {
                    "201": {"description": "The KPI as stored", "content": stored},
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            },
        },
        "/kpis/{kpi_id}": {
            "get": {
                "summary": "One KPI",
                "description": text,
                "operationId": "getKpi",
                "security": _READ_SECURITY,
                "parameters": [kpi_id, _SITE_PARAMETER],
                "responses": {
                    "200": {"description": "The KPI", "content": stored},
                    **_errors(400, 401, 403, 404, 503),
                },
            },
            "delete": {
                "summary": "Remove a KPI (its insights stay)",
                "description": text,
                "operationId": "deleteKpi",
                "security": _READ_SECURITY,
                "parameters": [kpi_id, _SITE_PARAMETER],
                "responses": {
                    "204": {"description": "Removed"},
                    **_errors(400, 401, 403, 404, 503),
                },
            },
        },
    }


_FUNNEL_SCHEMAS: dict[str, Any] = {
    "Funnel": {k: v for k, v in FUNNEL_SCHEMA.items() if k != "$schema"},
    "StoredFunnel": {
        "type": "object",
        "required": ["id", "site", "name", "steps", "within", "filters", "created_ms"],
        "properties": {
            "id": {"type": "string"},
            "site": {"type": "string"},
            "name": {"type": "string"},
            "steps": {"type": "array", "items": {"type": "object"}},
            "within": {"type": "string"},
            "filters": {"type": "array"},
            "created_ms": {"type": "integer"},
            "updated_ms": {"type": "integer"},
        },
    },
    "FunnelReport": {
        "type": "object",
        "required": ["report", "saved", "funnel", "meta", "query"],
        "properties": {
            "report": {"const": "funnel"},
            "saved": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
            },
            "funnel": {
                "type": "object",
                "description": "as POST /query answers a funnel: unit, within, and per step"
                " reached, from_previous, from_start, median_ms_from_previous, dropped_to",
            },
            "meta": {"type": "object"},
            "query": {"type": "object"},
        },
    },
}


def _funnel_paths() -> dict[str, Any]:
    """``/funnels``, ``/funnels/{funnel_id}`` and ``/funnels/{funnel_id}/report``."""
    text = (
        " A funnel is a saved `/query` funnel of one site (steps on pages, events or"
        " parameter values; within a visit or a window); its report counts it for a range."
        + _GUARD_TEXT["read"]
    )
    funnel_id = {
        "name": "funnel_id",
        "in": "path",
        "required": True,
        "description": "The funnel's id",
        "schema": {"type": "string"},
    }
    stored = _json(_ref("StoredFunnel"))
    one = [funnel_id, _SITE_PARAMETER]

    def operation(summary: str, op_id: str, **more: Any) -> dict[str, Any]:
        return {
            "summary": summary,
            "description": text,
            "operationId": op_id,
            "security": _READ_SECURITY,
            **more,
        }

    range_parameters = [
        {"name": name, "in": "query", "required": False, "description": what}
        | {"schema": {"type": "string"}}
        for name, what in (
            ("range", "a preset (default 30d), as /query takes"),
            ("from", "a date, an ISO 8601 time or epoch ms"),
            ("to", "a date (the whole day), an ISO 8601 time or epoch ms"),
            ("tz", "IANA time zone (default UTC)"),
        )
    ]
    return {
        "/funnels": {
            "get": operation(
                "The site's saved funnels, by name",
                "listFunnels",
                parameters=[_SITE_PARAMETER],
                responses={
                    "200": {
                        "description": "The funnels",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["funnels"],
                                "properties": {
                                    "funnels": {"type": "array", "items": _ref("StoredFunnel")}
                                },
                            }
                        ),
                    },
                    **_errors(400, 401, 403, 503),
                },
            ),
            "post": operation(
                "Save a funnel (an id already taken is refused: PUT replaces)",
                "createFunnel",
                parameters=[_SITE_PARAMETER],
                requestBody={"required": True, "content": _json(_ref("Funnel"))},
                responses={
                    "201": {"description": "The funnel as stored", "content": stored},
                    **_errors(400, 401, 403, 413, 415, 503),
                },
            ),
        },
        "/funnels/{funnel_id}/report": {
            "get": operation(
                "A saved funnel counted for a range: the ad hoc /query funnel's answer",
                "reportFunnel",
                parameters=[*one, *range_parameters],
                responses={
                    "200": {"description": "The funnel", "content": _json(_ref("FunnelReport"))},
                    **_errors(400, 401, 403, 404, 503),
                },
            ),
        },
        "/funnels/{funnel_id}": {
            "get": operation(
                "One saved funnel",
                "getFunnel",
                parameters=one,
                responses={
                    "200": {"description": "The funnel", "content": stored},
                    **_errors(400, 401, 403, 404, 503),
                },
            ),
            "put": operation(
                "Replace a saved funnel's definition",
                "replaceFunnel",
                parameters=one,
                requestBody={"required": True, "content": _json(_ref("Funnel"))},
                responses={
                    "200": {"description": "The funnel as stored", "content": stored},
                    **_errors(400, 401, 403, 404, 413, 415, 503),
                },
            ),
            "delete": operation(
                "Remove a saved funnel",
                "deleteFunnel",
                parameters=one,
                responses={
                    "204": {"description": "Removed"},
                    **_errors(400, 401, 403, 404, 503),
                },
            ),
        },
    }


_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}
_PROBE_SCHEMAS: dict[str, Any] = {
    "ProbeResults": {
        "type": "object",
        "additionalProperties": False,
        "required": ["probe", "region", "results"],
        "properties": {
            "probe": {**_NAME, "description": "the probe's id (kept in its data directory)"},
            "region": {**_NAME, "description": "where the probe runs, like `eu-west`"},
            "results": {
                "type": "array",
                "maxItems": MAX_PROBE_RESULTS,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["monitor", "kind", "at_ms", "ok", "state"],
                    "properties": {
                        "monitor": _NAME,
                        "kind": {"enum": list(KINDS)},
                        "at_ms": {
                            "type": "integer",
                            "description": "when the check ran, milliseconds since 1970",
                        },
                        "ok": {"type": "boolean", "description": "this check passed"},
                        "state": {"enum": list(STATES), "description": "the monitor's state"},
                        "previous": {"enum": [*STATES, None]},
                        "down_since_ms": {"type": ["integer", "null"]},
                        "reason": {"type": ["string", "null"], "maxLength": 500},
                        "measured": {
                            "type": "object",
                            "maxProperties": 32,
                            "additionalProperties": {"type": "number"},
                            "description": "total_ms, dns_ms, connect_ms, tls_ms,"
                            " first_byte_ms, status, body_bytes, days_left",
                        },
                    },
                },
            },
        },
    },
}
_PROBE_PATHS: dict[str, Any] = {
    "/probe/results": {
        "post": {
            "summary": "A remote probe's monitor results (`metronome probe`)",
            "description": "Stored as `monitor` points with the probe's region, once each"
            " (a result sent again is stored once). Once a site exists: a key with the"
            " `probe` scope, which may call nothing else.",
            "operationId": "postProbeResults",
            "security": [{_KEY: ["probe"]}, {}],
            "parameters": [_SITE_PARAMETER],
            "requestBody": {"required": True, "content": _json(_ref("ProbeResults"))},
            "responses": {
                "200": {
                    "description": "spooled",
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["stored", "documents"],
                            "properties": {
                                "stored": {"type": "integer"},
                                "documents": {"type": "integer"},
                            },
                        }
                    ),
                },
                **_errors(400, 401, 403, 413, 415, 503),
            },
        }
    }
}


class OpenAPI:
    def __init__(self) -> None:
        self._document = openapi_document()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = self._document


_RELATED_SCHEMAS: dict[str, Any] = {
    "Related": {
        "description": "The items most associated with an item, best first, with the counts"
        " behind each score",
        "type": "object",
        "required": ["item", "results", "meta"],
        "properties": {
            "item": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["item", "score", "together", "item_baskets", "other_baskets"],
                    "properties": {
                        "item": {"type": "string"},
                        "score": {"type": "number"},
                        "together": {"type": "integer"},
                        "item_baskets": {"type": "integer"},
                        "other_baskets": {"type": "integer"},
                    },
                },
            },
            "meta": {"type": "object", "required": ["range", "tz", "within"]},
        },
    }
}


def _related_paths() -> dict[str, Any]:
    """``/items/{item_id}/related`` and ``/items/related?id=`` (issue 25)."""
    text = (
        " Items found in the same visits (or visitors' days) as the item, scored by the"
        " cosine of their baskets shrunk toward 0 for few shared baskets; see"
        " docs/guides/errors-and-recommendations.md." + _GUARD_TEXT["read"]
    )
    params = _query_params(RELATED_PARAMETERS)
    responses = {
        "200": {"description": "The related items", "content": _json(_ref("Related"))},
        **_errors(400, 401, 403, 503),
    }
    return {
        "/items/{item_id}/related": {
            "get": {
                "summary": "The items most associated with an item",
                "description": text,
                "operationId": "getRelatedItems",
                "security": _READ_SECURITY,
                "parameters": [
                    {
                        "name": "item_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    *params,
                    _SITE_PARAMETER,
                ],
                "responses": responses,
            }
        },
        "/items/related": {
            "get": {
                "summary": "Related items for ids that contain '/': /items/related?id=...",
                "description": text,
                "operationId": "getRelatedItemsById",
                "security": _READ_SECURITY,
                "parameters": [
                    *_query_params({"id": "the item"}, required=("id",)),
                    *params,
                    _SITE_PARAMETER,
                ],
                "responses": responses,
            }
        },
    }
