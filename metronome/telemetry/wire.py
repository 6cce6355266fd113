"""The two wire contracts, as values: request bodies to points, and the answers.

- **binoculars** ``POST /v1/metrics``: ``{"metrics": [{"name", "tags", "fields"}, ...]}``
  or the bare array; the answer is ``{"requestIntervalInMinutes": n}`` and, for metrics
  or fields left out, ``"refused": [{"index", "reason", "field"?}]`` (clients ignore it).
- **upgrade-responder** ``POST /v1/checkupgrade``: ``{"appVersion", "extraInfo"}`` (older
  clients) or ``{"appVersion", "extraTagInfo", "extraFieldInfo"}``; the answer is
  ``{"versions": [...], "requestIntervalInMinutes": n}``, and one ``upgrade_request``
  point is recorded (tag ``app_version``, the extra info as tags and fields, a country
  from the address, never the address).

No I/O here: :mod:`metronome.api.telemetry` reads the body, checks the app and the
limits, and spools what these functions return.
"""

from __future__ import annotations

from typing import Any

from metronome.errors import InvalidField, LimitExceeded
from metronome.events.point import Point, Refusal, parse_metric
from metronome.telemetry.model import App

__all__ = [
    "UPGRADE_METRIC",
    "metric_points",
    "request_interval",
    "upgrade_answer",
    "upgrade_point",
]

UPGRADE_METRIC = "upgrade_request"
MAX_SLOWDOWN = 8  # the interval grows to at most this many times the app's


def metric_points(
    body: Any, app: App, *, received_ms: int, country: str | None
) -> tuple[list[Point], list[Refusal]]:
    """A binoculars body's points and refusals. A body that is not one of the two shapes,
    or holds more metrics than the app allows, is refused whole (400)."""
    if isinstance(body, dict) and set(body) <= {"metrics"}:
        items = body.get("metrics")
    else:
        items = body
    if not isinstance(items, list):
        raise InvalidField(
            'send {"metrics": [{"name", "tags", "fields"}, ...]} or the bare array',
            field="metrics",
        )
    if len(items) > app.limits.max_metrics:
        raise LimitExceeded(
            f"a request may hold at most {app.limits.max_metrics} metrics for app"
            f" {app.id!r}; this one has {len(items)}",
            limit=app.limits.max_metrics,
        )
    points: list[Point] = []
    refused: list[Refusal] = []
    for index, raw in enumerate(items):
        point, why = parse_metric(
            raw,
            index,
            app=app.id,
            timestamp_ms=received_ms,
            limits=app.limits,
            site_id=app.site_id,
            country=country,
        )
        refused.extend(why)
        if point is not None:
            points.append(point)
    return points, refused


def _info(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidField(f"'{what}' must be an object", field=what)
    return raw


def upgrade_point(
    body: Any, app: App, *, received_ms: int, country: str | None
) -> tuple[Point, list[Refusal]]:
    """The ``upgrade_request`` point of one upgrade check (field ``value`` 1, so points
    can be summed), and the extra fields left out."""
    if not isinstance(body, dict):
        raise InvalidField("send a JSON object with 'appVersion'", field="appVersion")
    version = body.get("appVersion")
    if not isinstance(version, str) or not version or len(version) > app.limits.max_tag_length:
        raise InvalidField(
            f"'appVersion' is required: the running version, at most"
            f" {app.limits.max_tag_length} characters",
            field="appVersion",
        )
    tags = {**_info(body.get("extraInfo"), "extraInfo")}
    tags.update(_info(body.get("extraTagInfo"), "extraTagInfo"))
    tags["app_version"] = version
    fields = {"value": 1, **_info(body.get("extraFieldInfo"), "extraFieldInfo")}
    point, refused = parse_metric(
        {"name": UPGRADE_METRIC, "tags": tags, "fields": fields},
        0,
        app=app.id,
        timestamp_ms=received_ms,
        limits=app.limits,
        site_id=app.site_id,
        country=country,
    )
    if point is None:
        reason = refused[0].reason if refused else "the extra info cannot be stored"
        raise InvalidField(reason, field="extraTagInfo")
    return point, refused


def request_interval(app: App, backlog_bytes: int, threshold_bytes: int) -> int:
    """``requestIntervalInMinutes``: the app's, times 1 + every full ``threshold_bytes``
    the spool is behind (at most :data:`MAX_SLOWDOWN` times): clients slow down by
    themselves while the store catches up."""
    if threshold_bytes <= 0 or backlog_bytes < threshold_bytes:
        return app.interval_min
    return app.interval_min * min(MAX_SLOWDOWN, 1 + backlog_bytes // threshold_bytes)


def upgrade_answer(app: App, interval_min: int) -> dict[str, Any]:
    return {
        "versions": [v.to_wire() for v in app.versions],
        "requestIntervalInMinutes": interval_min,
    }
