"""Builds the Falcon ASGI app: routes, error handling, and the store's lifespan.

``create_app(settings)`` is cheap: connections open in ``process_startup`` (once per
worker process) and close in ``process_shutdown``. Every error leaves as JSON:
``{"error": "<code>", "message": "...", "details": {...}}``; unexpected exceptions are
logged with their traceback and answered ``internal_error`` without it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi
import falcon.media
import orjson

from metronome.api.dashboard import Dashboard
from metronome.api.fastpath import FastIngest
from metronome.api.funnels import FunnelsResource
from metronome.api.guard import Cors, Guard
from metronome.api.health import Health, Metrics, Ready
from metronome.api.kpis import KpisResource
from metronome.api.live import LiveEvents, LiveSocket, LiveToken
from metronome.api.openapi import OpenAPI
from metronome.api.probe import ProbeResults
from metronome.api.query import QueryResource
from metronome.api.related import Related
from metronome.api.render import dump_json, error_answer, internal_error
from metronome.api.reports import Reports
from metronome.api.telemetry import Telemetry, TelemetryLifespan
from metronome.api.ticks import Pixel, Tick, Ticks
from metronome.api.tock import Tock
from metronome.api.tracker import Script
from metronome.config import Settings
from metronome.errors import MetronomeError, StoreUnavailable
from metronome.heap import settle
from metronome.live.hub import Hub
from metronome.pipeline import Pipeline, metrics
from metronome.sites.cache import RegistryCache
from metronome.sites.registry import open_registry
from metronome.store import Store, open_store
from metronome.telemetry.registry import AppCache, open_apps

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("metronome")

_FALCON_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "store_unavailable",
}


class _Lifespan:
    """Opens the store and installs its schema when a worker starts, then loads the sites
    and keys; closes them at exit."""

    def __init__(self, store: Store, pipeline: Pipeline, guard: Guard, hub: Hub) -> None:
        self._store = store
        self._pipeline = pipeline
        self._guard = guard
        self._hub = hub

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self._store.open()
        try:
            changes = await self._store.ensure_schema()
        except StoreUnavailable as exc:
            log.warning("schema_install_deferred reason=%s", exc.message)
        else:
            for change in changes:
                if change.action != "unchanged":
                    log.info("schema_installed name=%s action=%s", change.name, change.action)
        await self._guard.start()
        settle()  # what the worker holds from now on is out of the collector's way

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        self._pipeline.close()
        await self._hub.close()
        await self._guard.close()
        await self._store.close()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _Timing:
    """Observes each request's latency by route template."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str], Any] = {}

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.started = time.perf_counter()

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        started = getattr(req.context, "started", None)
        if started is not None:
            method = req.method if req.method in _METHODS else "OTHER"  # bounded labels
            key = (req.uri_template or "(no route)", method)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = metrics.REQUEST_SECONDS.labels(*key)
            child.observe(time.perf_counter() - started)


_ASGI_SEND = "metronome.asgi_send"
"""Where :class:`_App` keeps a WebSocket connection's ASGI ``send`` in its scope: the error
handlers refuse an unaccepted WebSocket with an HTTP answer through it."""


class _App(falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]):
    """Falcon's ASGI app, which lets the error handlers refuse a WebSocket handshake with a
    JSON answer (the ``websocket.http.response`` extension) instead of a bare close."""

    # falcon.asgi.App declares __call__ as its WSGI parent's (typeshed-wise); this is ASGI's
    async def __call__(  # type: ignore[override]
        self, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, _ASGI_SEND: send}
        await super().__call__(scope, receive, send)


class _Router(falcon.routing.CompiledRouter):
    """Falcon's router, answering ``HEAD`` wherever ``GET`` is answered (Falcon sends the
    headers, ``Content-Length`` included, without the body)."""

    def map_http_methods(self, resource: object, **kwargs: Any) -> dict[str, Any]:
        methods: dict[str, Any] = super().map_http_methods(resource, **kwargs)
        if "GET" in methods and "HEAD" not in methods:
            methods["HEAD"] = methods["GET"]
        return methods


async def _answer(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    ws: falcon.asgi.WebSocket | None,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    """Answer an error: on ``resp``, or refuse the WebSocket ``ws`` (an HTTP answer to its
    handshake where the server supports one, else a close with code 3000 + status)."""
    if ws is None:
        assert resp is not None
        resp.status = status
        for name, value in headers.items():
            resp.set_header(name, value)
        resp.media = body
        return
    send = req.scope.get(_ASGI_SEND)
    extensions = req.scope.get("extensions") or {}
    if ws.unaccepted and send is not None and "websocket.http.response" in extensions:
        data = orjson.dumps(body)
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": data})
    elif not ws.closed:
        await ws.close(3000 + status, str(body.get("message", ""))[:120])


async def _metronome_error(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    ex: MetronomeError,
    params: dict[str, Any],
    ws: falcon.asgi.WebSocket | None = None,
) -> None:
    await _answer(req, resp, ws, *error_answer(ex, req.path))


async def _http_error(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    ex: falcon.HTTPError,
    params: dict[str, Any],
    ws: falcon.asgi.WebSocket | None = None,
) -> None:
    status = ex.status_code
    headers = dict(ex.headers or {})
    code = _FALCON_CODES.get(status, "bad_request" if status < 500 else "internal_error")
    method = "WebSocket" if ws is not None else req.method
    if status == 404:
        message = f"no route {method} {req.path}; GET /openapi.json lists the API"
    elif status == 405:
        allowed = headers.get("Allow", "")
        message = f"{method} is not allowed on {req.path}; allowed: {allowed}"
    else:
        message = ex.description or ex.title or "bad request"
    await _answer(req, resp, ws, status, {"error": code, "message": message}, headers)


async def _unexpected(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    ex: Exception,
    params: dict[str, Any],
    ws: falcon.asgi.WebSocket | None = None,
) -> None:
    status, body = internal_error(req.method, req.path)
    await _answer(req, resp, ws, status, body, {})


def create_app(settings: Settings, store: Store | None = None) -> FastIngest:
    """The ASGI app for ``settings`` (on ``store`` if given, else the configured one):
    the Falcon app (``.falcon_app``) behind the ``POST /tick`` fast path."""
    store = store or open_store(settings)
    pipeline = Pipeline(settings)
    registry = open_registry(settings)
    guard = Guard(settings, RegistryCache(registry, settings.sites_cache_s, settings.data_dir))
    apps = AppCache(open_apps(settings), settings)
    hub = Hub(settings, store)
    app = _App(
        middleware=[
            _Lifespan(store, pipeline, guard, hub),
            TelemetryLifespan(apps),
            _Timing(),
            Cors(guard),
        ],
        cors_enable=False,
        router=_Router(),
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    json_handler = falcon.media.JSONHandler(dumps=dump_json, loads=orjson.loads)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler

    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(store, pipeline))
    app.add_route("/metrics", Metrics(pipeline.spool))
    tick = Tick(settings, pipeline, guard)
    app.add_route("/tick", tick)
    app.add_route("/ticks", Ticks(settings, pipeline, guard))
    app.add_route("/probe/results", ProbeResults(settings, pipeline, guard))  # issue 20
    app.add_route("/tick.gif", Pixel(settings, pipeline, guard))
    app.add_route("/metronome.js", Script())
    app.add_route("/query", QueryResource(settings, store, guard, apps))
    app.add_route("/openapi.json", OpenAPI())
    reports = Reports(settings, store, guard)
    app.add_route("/reports", reports)
    app.add_route("/reports/{name}", reports, suffix="named")
    tock = Tock(settings, store, guard)
    app.add_route("/tock", tock)
    app.add_route("/tock/{item_id}", tock, suffix="item")
    kpis = KpisResource(settings, guard)  # issue 22: KPI definitions
    app.add_route("/kpis", kpis)
    app.add_route("/kpis/{kpi_id}", kpis, suffix="one")
    funnels = FunnelsResource(settings, store, guard)  # issue 25: funnels saved per site
    app.add_route("/funnels", funnels)
    app.add_route("/funnels/{funnel_id}", funnels, suffix="one")
    app.add_route("/funnels/{funnel_id}/report", funnels, suffix="report")

    telemetry = Telemetry(settings, pipeline, apps)  # binoculars and upgrade-responder
    for prefix in ("", "/apps/{app}"):
        app.add_route(f"{prefix}/v1/metrics", telemetry, suffix="metrics")
        app.add_route(f"{prefix}/v1/checkupgrade", telemetry, suffix="checkupgrade")
        app.add_route(f"{prefix}/v1/healthcheck", telemetry, suffix="healthcheck")
    app.add_route("/live", LiveSocket(settings, hub, guard))
    app.add_route("/live/events", LiveEvents(settings, hub, guard))
    app.add_route("/live/token", LiveToken(guard))
    dashboard = Dashboard()
    app.add_route("/dashboard", dashboard)
    app.add_route("/dashboard/{asset}", dashboard, suffix="asset")
    related = Related(store, guard)  # issue 25: recommendations
    app.add_route("/items/related", related)
    app.add_route("/items/{item_id}/related", related, suffix="item")

    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(MetronomeError, _metronome_error)
    return FastIngest(app, tick)


def app_from_env() -> FastIngest:
    """The app for the current environment (what each server worker loads)."""
    from metronome.logconfig import configure_logging

    settings = Settings.from_env(os.environ)
    configure_logging(settings)
    return create_app(settings)
