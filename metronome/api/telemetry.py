"""Telemetry from installed software: the binoculars and upgrade-responder endpoints.

``POST /v1/metrics``, ``POST /v1/checkupgrade`` and ``GET /v1/healthcheck`` answer for the
default app (``METRONOME_TELEMETRY_APP``); ``/apps/{app}/v1/...`` for any app. The clients
send no key, so each request is checked, cheapest first and before its body is read: the
app exists (404 ``unknown_app``), the endpoint is on (403 ``endpoint_disabled``), the
app's URL token when it has one (401 ``invalid_app_token``), the client address's rate
(429), the media type and the declared size (413); then the body is read within
``METRONOME_TELEMETRY_MAX_BODY_BYTES``, parsed (:mod:`metronome.telemetry.wire`), each
instance's rate checked, and the points spooled like ticks. The answer is 200 once the
points are safe on disk, with the refusals of single metrics or fields in ``refused``.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import falcon
import falcon.asgi

from metronome.config import Settings
from metronome.errors import AppTokenInvalid, EndpointDisabled, StoreUnavailable, UnknownApp
from metronome.events import fields as F
from metronome.events.enrich import client_address
from metronome.events.geo import country_iso_code
from metronome.events.point import Point, Refusal, point_document
from metronome.pipeline import Pipeline, metrics
from metronome.pipeline.spool import backlog
from metronome.telemetry.model import App
from metronome.telemetry.registry import AppCache
from metronome.telemetry.wire import (
    metric_points,
    request_interval,
    upgrade_answer,
    upgrade_point,
)

from .body import Deadlines, decode_json, read_body, require_content_type, single_params
from .ratelimit import Buckets, address_key
from .ticks import count_refused

__all__ = ["Telemetry", "TelemetryLifespan"]

_BACKLOG_CACHE_S = 1.0
_MAX_INSTANCES_CHECKED = 16  # distinct instances one request is charged for


class Telemetry:
    """The three endpoints of one or every app (``app`` in the route, or the default)."""

    def __init__(self, settings: Settings, pipeline: Pipeline, apps: AppCache) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._apps = apps
        self._deadlines = Deadlines.of(settings.body_timeout_s)
        self._per_ip = Buckets(
            settings.telemetry_rate_per_ip,
            settings.telemetry_rate_per_ip_burst,
            "client address (telemetry)",
        )
        per_instance = settings.telemetry_rate_per_instance
        self._per_instance = Buckets(per_instance / 60, max(per_instance, 1), "instance")
        self._backlog = (0.0, 0)

    # -- checks, cheapest first ---------------------------------------------------------

    async def _app(self, app_id: str | None) -> App:
        wanted = self._settings.telemetry_app if app_id is None else app_id
        if not F.APP_ID_PATTERN.match(wanted):
            raise UnknownApp(f"there is no app {wanted[:64]!r}", app=wanted[:64])
        try:
            apps = await self._apps.get()
        except StoreUnavailable:
            if wanted == self._settings.telemetry_app:
                return App(wanted)  # the store is out: the spool still takes the default app
            raise
        app = apps.get(wanted)
        if app is None:
            if wanted == self._settings.telemetry_app:
                return App(wanted)  # the default app works before it is stored
            raise UnknownApp(
                f"there is no app {wanted!r}; `metronome apps list` shows them", app=wanted
            )
        return app

    async def _admit(
        self, req: falcon.asgi.Request, app_id: str | None, endpoint: str
    ) -> tuple[App, str | None]:
        """The app and the client's address, once the cheap checks pass."""
        app = await self._app(app_id)
        if not app.allows(endpoint):
            raise EndpointDisabled(
                f"app {app.id!r} does not take /v1/{endpoint}", app=app.id, endpoint=endpoint
            )
        if app.token is not None:
            given = single_params(req).get("token", "")
            if not hmac.compare_digest(given.encode(), app.token.encode()):
                raise AppTokenInvalid(
                    f"app {app.id!r} takes telemetry with its token only:"
                    f" /apps/{app.id}/v1/{endpoint}?token=...",
                    app=app.id,
                )
        client_ip = client_address(
            req.remote_addr, req.get_header("X-Forwarded-For"), self._settings.trusted_proxies
        )
        if self._per_ip.enabled:
            key = address_key(client_ip or "-")
            self._per_ip.spend(key, 1)
        return app, client_ip

    async def _body(self, req: falcon.asgi.Request) -> Any:
        require_content_type(req, ("application/json",))
        data = await read_body(req, self._settings.telemetry_max_body_bytes, self._deadlines)
        return decode_json(data)

    def _charge_instances(self, app: App, points: list[Point]) -> None:
        if not self._per_instance.enabled:
            return
        instances = {p.tags[app.instance_tag] for p in points if app.instance_tag in p.tags}
        for instance in sorted(instances)[:_MAX_INSTANCES_CHECKED]:
            self._per_instance.spend(f"{app.id}\x00{instance[:256]}", 1)

    def _interval(self, app: App) -> int:
        now = time.monotonic()
        checked, unshipped = self._backlog
        if now - checked > _BACKLOG_CACHE_S:
            unshipped = backlog(self._pipeline.spool, with_age=False).bytes_unshipped
            self._backlog = (now, unshipped)
        return request_interval(app, unshipped, self._settings.telemetry_backlog_bytes)

    async def _spool(
        self, app: App, points: list[Point], refused: list[Refusal], sender: str | None
    ) -> None:
        received_ms = int(time.time() * 1000)
        documents = [point_document(p, received_ms=received_ms, sender=sender) for p in points]
        await self._pipeline.ingest(documents)
        metrics.TELEMETRY_ACCEPTED.labels(app.id).inc(len(documents))
        for refusal in refused:
            metrics.TELEMETRY_REFUSED.labels(app.id, "field" if refusal.field else "metric").inc()

    # -- routes -------------------------------------------------------------------------

    async def on_post_metrics(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, app: str | None = None
    ) -> None:
        """binoculars: ``{"metrics": [...]}`` or the bare array -> 200
        ``{"requestIntervalInMinutes": n}``."""
        try:
            found, client_ip = await self._admit(req, app, "metrics")
            body = await self._body(req)
            country = country_iso_code(client_ip) if client_ip else None
            now_ms = int(time.time() * 1000)
            points, refused = metric_points(body, found, received_ms=now_ms, country=country)
            self._charge_instances(found, points)
            await self._spool(found, points, refused, client_ip)
        except Exception as exc:
            count_refused(exc, 1)
            raise
        answer: dict[str, Any] = {"requestIntervalInMinutes": self._interval(found)}
        if refused:
            answer["refused"] = [r.to_dict() for r in refused]
        resp.status = falcon.HTTP_200
        resp.media = answer

    async def on_post_checkupgrade(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, app: str | None = None
    ) -> None:
        """upgrade-responder: ``{"appVersion", ...}`` -> 200 ``{"versions": [...],
        "requestIntervalInMinutes": n}``; one ``upgrade_request`` point recorded."""
        try:
            found, client_ip = await self._admit(req, app, "checkupgrade")
            body = await self._body(req)
            country = country_iso_code(client_ip) if client_ip else None
            now_ms = int(time.time() * 1000)
            point, refused = upgrade_point(body, found, received_ms=now_ms, country=country)
            self._charge_instances(found, [point])
            await self._spool(found, [point], refused, client_ip)
        except Exception as exc:
            count_refused(exc, 1)
            raise
        answer = upgrade_answer(found, self._interval(found))
        if refused:
            answer["refused"] = [r.to_dict() for r in refused]
        resp.status = falcon.HTTP_200
        resp.media = answer

    async def on_get_healthcheck(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, app: str | None = None
    ) -> None:
        """200 while the app exists and its health check is on."""
        found = await self._app(app)
        if not found.allows("healthcheck"):
            raise EndpointDisabled(
                f"app {found.id!r} does not take /v1/healthcheck",
                app=found.id,
                endpoint="healthcheck",
            )
        resp.media = {"status": "ok", "app": found.id}


class TelemetryLifespan:
    """Middleware: closes the apps registry's connections when a worker stops."""

    def __init__(self, apps: AppCache) -> None:
        self._apps = apps

    async def process_shutdown(self, scope: Any, event: Any) -> None:
        await self._apps.close()
