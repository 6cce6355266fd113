"""The one error tree. Every error a user can see has a stable ``code`` and HTTP status.

::

    MetronomeError                      (500 internal_error)
    ├── ConfigError                     (- config_invalid)
    ├── BadRequest                      (400 bad_request)
    │   ├── InvalidJSON                 (400 invalid_json)
    │   ├── InvalidField                (400 invalid_field)
    │   ├── InvalidParameter            (400 invalid_parameter)
    │   ├── InvalidQuery                (400 invalid_query)
    │   ├── InvalidCursor               (400 invalid_cursor)
    │   ├── LimitExceeded               (400 limit_exceeded)
    │   ├── UnknownSite                 (400 unknown_site)
    │   ├── InvalidKpi                  (400 invalid_kpi)
    │   └── InvalidFunnel               (400 invalid_funnel)
    ├── Unauthorized                    (401 unauthorized)
    │   ├── KeyRequired                 (401 key_required)
    │   ├── InvalidKey                  (401 invalid_key)
    │   └── AppTokenInvalid             (401 invalid_app_token)
    ├── Forbidden                       (403 forbidden)
    │   ├── ScopeForbidden              (403 scope_forbidden)
    │   ├── SiteForbidden               (403 site_forbidden)
    │   ├── OriginForbidden             (403 origin_forbidden)
    │   └── EndpointDisabled            (403 endpoint_disabled)
    ├── NotFound                        (404 not_found)
    │   ├── UnknownApp                  (404 unknown_app)
    │   ├── UnknownKpi                  (404 unknown_kpi)
    │   └── UnknownFunnel               (404 unknown_funnel)
    ├── MethodNotAllowed                (405 method_not_allowed)
    ├── RequestTimeout                  (408 request_timeout)
    ├── PayloadTooLarge                 (413 payload_too_large)
    ├── UriTooLong                      (414 uri_too_long)
    ├── HeadersTooLarge                 (431 headers_too_large)
    ├── UnsupportedMediaType            (415 unsupported_media_type)
    ├── StoreRefused                    (422 store_refused)
    ├── RateLimited                     (429 rate_limited)
    ├── TooManyConnections              (429 too_many_connections)
    ├── ServerBusy                      (503 server_busy)
    ├── StoreUnavailable                (503 store_unavailable)
    ├── UpgradeRequired                 (426 upgrade_required)
    └── SpoolFull                       (503 spool_full)

The tree above is drawn from the classes by ``python -m scripts.gen_docs errors-docstring``
(a test fails when it and the classes disagree); the docs site's errors page is generated
from the same classes. Codes never change once shipped; a test checks they are unique.
Domain code raises these; only ``api/render.py``'s ``error_answer`` (for Falcon's handler
in ``app.py`` and the ``POST /tick`` fast path) turns them into HTTP answers of the shape
``{"error": code, "message": ..., "details": {...}}``, with the error's ``headers``
(``Retry-After``, ``WWW-Authenticate``).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "ConfigError",
    "Forbidden",
    "HeadersTooLarge",
    "InvalidCursor",
    "InvalidField",
    "InvalidJSON",
    "InvalidKey",
    "InvalidKpi",
    "InvalidParameter",
    "InvalidQuery",
    "KeyRequired",
    "LimitExceeded",
    "MetronomeError",
    "MethodNotAllowed",
    "NotFound",
    "OriginForbidden",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ScopeForbidden",
    "ServerBusy",
    "SiteForbidden",
    "SpoolFull",
    "StoreRefused",
    "StoreUnavailable",
    "TooManyConnections",
    "Unauthorized",
    "UnknownApp",
    "UnknownKpi",
    "UnknownSite",
    "UnsupportedMediaType",
    "UpgradeRequired",
    "UriTooLong",
    "AppTokenInvalid",
    "EndpointDisabled",
    "InvalidFunnel",
    "UnknownFunnel",
    "all_error_classes",
]


class MetronomeError(Exception):
    """Base of every Metronome error; ``details`` is JSON-safe context for the client."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the JSON body."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ConfigError(MetronomeError):
    """A ``METRONOME_*`` variable has a value Metronome cannot use."""

    code = "config_invalid"


class BadRequest(MetronomeError):
    """The request cannot be processed as sent."""

    code = "bad_request"
    http_status = 400


class InvalidJSON(BadRequest):
    """The body is not valid JSON (or NDJSON)."""

    code = "invalid_json"


class InvalidField(BadRequest):
    """A field of a tick is missing, of the wrong type or out of range."""

    code = "invalid_field"


class InvalidParameter(BadRequest):
    """A query-string parameter is wrong."""

    code = "invalid_parameter"


class InvalidQuery(BadRequest):
    """A ``/query`` request (or a report's parameters) is not one Metronome can answer;
    ``details.field`` names the part, such as ``query.metrics[1]``."""

    code = "invalid_query"


class InvalidCursor(BadRequest):
    """An ``after`` cursor is not ``meta.next`` of the same query (edited, truncated, or
    from another query or an older range); ``details`` names the field or parameter."""

    code = "invalid_cursor"


class LimitExceeded(BadRequest):
    """A configured limit (parameters per tick, key or value length, batch size) is exceeded."""

    code = "limit_exceeded"


class UnknownSite(BadRequest):
    """No site has the id given with `?site=` or a tick's `site` field."""

    code = "unknown_site"


class Unauthorized(MetronomeError):
    """The request needs a key (``Authorization: Bearer ...``) it did not bring."""

    code = "unauthorized"
    http_status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="metronome"'}


class KeyRequired(Unauthorized):
    """No key was sent where one is needed (and no public way in applies)."""

    code = "key_required"


class InvalidKey(Unauthorized):
    """The key is malformed, unknown or revoked."""

    code = "invalid_key"


class Forbidden(MetronomeError):
    """The caller is known but may not do this."""

    code = "forbidden"
    http_status = 403


class ScopeForbidden(Forbidden):
    """The key lacks the scope this route needs (`ingest`, `query` or `admin`)."""

    code = "scope_forbidden"


class SiteForbidden(Forbidden):
    """The request names a site other than the key's own."""

    code = "site_forbidden"


class OriginForbidden(Forbidden):
    """A browser request from an `Origin` the site does not allow."""

    code = "origin_forbidden"


class NotFound(MetronomeError):
    """No such route or resource."""

    code = "not_found"
    http_status = 404


class MethodNotAllowed(MetronomeError):
    """The route exists but not with this HTTP method."""

    code = "method_not_allowed"
    http_status = 405


class RequestTimeout(MetronomeError):
    """The request body did not arrive within METRONOME_BODY_TIMEOUT_S."""

    code = "request_timeout"
    http_status = 408


class PayloadTooLarge(MetronomeError):
    """The body is larger than the configured limit."""

    code = "payload_too_large"
    http_status = 413


class UriTooLong(MetronomeError):
    """The request's URL (path and query string) is over the server's limit; send the data
    in a body (``POST /query``, ``POST /ticks``)."""

    code = "uri_too_long"
    http_status = 414


class HeadersTooLarge(MetronomeError):
    """The request line and headers together are over the server's limit."""

    code = "headers_too_large"
    http_status = 431


class UnsupportedMediaType(MetronomeError):
    """The body's Content-Type is not one this route reads."""

    code = "unsupported_media_type"
    http_status = 415


class StoreRefused(MetronomeError):
    """The store refused a valid-looking document for good (say, a mapping conflict)."""

    code = "store_refused"
    http_status = 422


class RateLimited(MetronomeError):
    """Over a per-client-address or per-site ingest rate limit; retry after `Retry-After`."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class TooManyConnections(MetronomeError):
    """One client address has METRONOME_MAX_CONNECTIONS_PER_ADDRESS connections open to a
    worker; close some, or retry after `Retry-After`."""

    code = "too_many_connections"
    http_status = 429

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class ServerBusy(MetronomeError):
    """A worker has METRONOME_MAX_CONNECTIONS connections or requests in progress; retry
    after `Retry-After`."""

    code = "server_busy"
    http_status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class StoreUnavailable(MetronomeError):
    """The store (Elasticsearch or the embedded store) cannot be reached or refused work."""

    code = "store_unavailable"
    http_status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class UpgradeRequired(MetronomeError):
    """A WebSocket route was asked over plain HTTP; open it as a WebSocket."""

    code = "upgrade_required"
    http_status = 426

    def headers(self) -> dict[str, str]:
        return {"Upgrade": "websocket"}


def all_error_classes() -> list[type[MetronomeError]]:
    """Every error class, the base first; used by the docs test."""
    seen: list[type[MetronomeError]] = []
    todo: list[type[MetronomeError]] = [MetronomeError]
    while todo:
        cls = todo.pop(0)
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


class SpoolFull(MetronomeError):
    """The spool reached METRONOME_SPOOL_MAX_BYTES while the store is behind; retry later."""

    code = "spool_full"
    http_status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "30"}


# -- telemetry (issue 19) ----------------------------------------------------------------


class UnknownApp(NotFound):
    """No telemetry app with this id (`metronome apps list` shows them)."""

    code = "unknown_app"


class AppTokenInvalid(Unauthorized):
    """The app takes telemetry only with its URL token (`?token=`): missing or wrong."""

    code = "invalid_app_token"


class EndpointDisabled(Forbidden):
    """The app switched this telemetry endpoint off (`metronome apps update --disable`)."""

    code = "endpoint_disabled"


# --- KPIs (issue 22) ----------------------------------------------------------------------


class InvalidKpi(BadRequest):
    """A KPI definition is not one Metronome can evaluate; ``details.field`` names the
    part, such as ``kpi.query.metrics``."""

    code = "invalid_kpi"


class UnknownKpi(NotFound):
    """No KPI of the caller's site has this id."""

    code = "unknown_kpi"


# --- saved funnels (issue 25) -------------------------------------------------------------


class InvalidFunnel(BadRequest):
    """A funnel definition is not one Metronome can count; ``details.field`` names the
    part, such as ``funnel.steps[1].filters[0]``."""

    code = "invalid_funnel"


class UnknownFunnel(NotFound):
    """No saved funnel of the caller's site has this id."""

    code = "unknown_funnel"
