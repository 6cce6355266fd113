"""Track every request an app answers: ASGI and WSGI middleware for the Python client.

Wrap a web app and each request it answers becomes one API call in Metronome (the
``api-calls`` report, or ``/query`` on ``source: logs``): the route template that
answered (``/users/{id}``, not ``/users/42``), the method, the status, the duration, the
response's bytes and, through a hook, the authenticated user::

    from metronome.client import Client
    from metronome.middleware import ApiCallTracker, track_falcon, track_flask

    tracker = ApiCallTracker(Client("http://metronome.internal:8080", key="mk_..."))
    app = track_falcon(falcon_app, tracker)   # falcon.App or falcon.asgi.App
    track_flask(flask_app, tracker)           # wraps flask_app.wsgi_app in place
    app = ASGIMiddleware(starlette_app, tracker)  # Starlette, FastAPI, any ASGI app
    app = WSGIMiddleware(wsgi_app, tracker)       # any WSGI app
    # Django: MIDDLEWARE = ["metronome.middleware.DjangoMiddleware", ...] and
    # METRONOME_API_CALLS = tracker in settings.py

Each call is a tick of the event ``api.call`` queued on the batching
:class:`~metronome.client.Client` (or anything with its ``tick`` method), so the request
pays for timing and one queue put, a few microseconds; the client sends in the
background. Tracking never fails a request: an exception while tracking is swallowed and
counted in ``tracker.stats.failures``, a full client queue in ``stats.dropped``, and an
app's own exception still reaches the server (recorded as a 500).

Routes come from the framework where it names them: Falcon's ``req.uri_template``,
Starlette's and FastAPI's matched route, Flask's ``request.url_rule``, Django's
``resolver_match.route``; any app may put its own in the ASGI scope or WSGI environ as
``"metronome.route"``. A request no route answered (a 404) is recorded as ``(no route)``
unless ``path_fallback`` records its raw path (beware: scanners make every path a row).

The user hook receives the ASGI scope or the WSGI environ (Django: the request) once the
response is done; by default it reads ``"metronome.user"`` from it, which an app's
authentication sets (``req.scope``/``req.env`` in Falcon, ``request.environ`` in Flask).
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from time import perf_counter_ns, time
from typing import Any, Protocol

__all__ = [
    "ASGIMiddleware",
    "ApiCallTracker",
    "DjangoMiddleware",
    "FalconRoute",
    "TrackerStats",
    "WSGIMiddleware",
    "track_falcon",
    "track_flask",
]

log = logging.getLogger("metronome.middleware")

ACTION = "api.call"  # the server's metronome.events.api_call.ACTION (the client imports no server)
ROUTE_KEY = "metronome.route"
USER_KEY = "metronome.user"
WERKZEUG_REQUEST = "werkzeug.request"  # Flask's request, in the environ until it answered
NO_ROUTE = "(no route)"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]  # frameworks type scope and send narrower
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Ticker(Protocol):
    """What sends the calls: :class:`~metronome.client.Client` (or another client)."""

    def tick(self, item_id: str, event: str = ..., **fields: Any) -> bool: ...


@dataclass
class TrackerStats:
    """``tracked``: calls handed to the client; ``skipped``: excluded or sampled out;
    ``dropped``: the client's queue was full; ``failures``: errors swallowed while
    tracking (a failing user hook among them)."""

    tracked: int = 0
    skipped: int = 0
    dropped: int = 0
    failures: int = 0


class ApiCallTracker:
    """Decides which requests to track and hands each finished one to ``client``.

    ``sample_rate``: the share of requests tracked (0 to 1; counts are then of the
    sample). ``exclude``: patterns (``*`` any run, ``?`` one character) of paths or
    routes never tracked, such as ``"/healthz"`` or ``"/static/*"``; ``exclude_methods``:
    methods never tracked (``OPTIONS``, ...). ``user``: the hook naming the authenticated
    user (None or text). ``path_fallback``: record the raw path when no route answered.
    """

    def __init__(
        self,
        client: Ticker,
        *,
        sample_rate: float = 1.0,
        exclude: Sequence[str] = (),
        exclude_methods: Sequence[str] = (),
        user: Callable[[Any], Any] | None = None,
        path_fallback: bool = False,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate is a share from 0 to 1, not {sample_rate!r}")
        self._client = client
        self._rate = sample_rate
        self._excluded = (
            re.compile("|".join(fnmatch.translate(p) for p in exclude)).match if exclude else None
        )
        self._methods = frozenset(m.upper() for m in exclude_methods)
        self._user = user  # None: the "metronome.user" value of the scope or environ
        # nothing to decide per request (the usual case): the middlewares skip ``wants``
        self.selective = sample_rate < 1.0 or bool(exclude) or bool(exclude_methods)
        self._path_fallback = path_fallback
        # Client.enqueue takes the tick built here (no keyword packing, a few µs less on a
        # busy machine); any other ticker gets tick(...)
        self._enqueue: Callable[[dict[str, Any]], bool] | None = getattr(client, "enqueue", None)
        self._random = random.random
        self.stats = TrackerStats()

    def wants(self, method: str, path: str) -> bool:
        """Whether to track a request (asked when it arrives, so skipping costs nothing)."""
        if (
            (self._rate < 1.0 and self._random() >= self._rate)
            or method in self._methods
            or (self._excluded is not None and self._excluded(path))
        ):
            self.stats.skipped += 1
            return False
        return True

    def record(
        self,
        env: Any,
        method: str,
        path: str,
        route: str | None,
        status: int,
        duration_ns: int,
        body_bytes: int | None,
    ) -> None:
        """Hand one finished request to the client. Never raises."""
        try:
            if not route:
                route = path if self._path_fallback else NO_ROUTE
            elif self._excluded is not None and self._excluded(route):
                self.stats.skipped += 1
                return
            if self._user is None:
                user = env.get(USER_KEY)
            else:
                try:
                    user = self._user(env)
                except Exception:  # noqa: BLE001 - the app's hook must not fail its request
                    self.stats.failures += 1
                    user = None
            if user is not None and type(user) is not str:
                user = str(user)
            # None (no bytes, no user) is what the server takes for a missing value
            if self._enqueue is not None:
                queued = self._enqueue(
                    {
                        "id": route,
                        "event": ACTION,
                        "method": method,
                        "status": status,
                        "duration_ns": duration_ns,
                        "bytes": body_bytes,
                        "user": user,
                        "ts": int(time() * 1000),
                    }
                )
            else:
                queued = self._client.tick(
                    route,
                    ACTION,
                    method=method,
                    status=status,
                    duration_ns=duration_ns,
                    bytes=body_bytes,
                    user=user,
                )
            if queued:
                self.stats.tracked += 1
            else:
                self.stats.dropped += 1
        except Exception:  # noqa: BLE001 - tracking never fails a request
            self.stats.failures += 1
            if self.stats.failures == 1:
                log.exception("api_call_tracking_failed")


def _asgi_route(scope: Scope, root_path: str) -> str | None:
    """The route template an ASGI framework left in the scope: ours, or Starlette's and
    FastAPI's matched route (``scope["route"].path``) behind the prefix of the mounts it
    went through (Starlette grows ``root_path`` by each mount's matched path)."""
    route = scope.get(ROUTE_KEY)
    if route is None:
        matched = scope.get("route")
        path = getattr(matched, "path", None) if matched is not None else None
        if isinstance(path, str):
            mounted = scope.get("root_path", "")
            prefix = mounted[len(root_path) :] if mounted.startswith(root_path) else ""
            route = prefix + path
    return route if isinstance(route, str) else None


class ASGIMiddleware:
    """Tracks the HTTP requests of an ASGI app (Starlette, FastAPI, Falcon's ASGI app
    through :func:`track_falcon`, ...); WebSocket and lifespan events pass untouched."""

    def __init__(self, app: ASGIApp, tracker: ApiCallTracker) -> None:
        self.app = app
        self.tracker = tracker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracker = self.tracker
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path = scope.get("path", "")
        if tracker.selective and not tracker.wants(method, path):
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        start = perf_counter_ns()
        answer = [500, 0]  # status, body bytes

        async def counting_send(message: MutableMapping[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                answer[1] += len(message.get("body", b""))
            elif kind == "http.response.start":
                answer[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            duration = perf_counter_ns() - start
            try:
                route = _asgi_route(scope, root_path)
            except Exception:  # noqa: BLE001 - a framework's odd scope must not fail a request
                tracker.stats.failures += 1
                route = None
            tracker.record(scope, method, path, route, answer[0], duration, answer[1])


class _TrackedBody:
    """A WSGI response body that counts its bytes and records the call when the server
    closes it (after the last byte was sent), closing the app's body too."""

    __slots__ = ("_body", "_done", "bytes")

    def __init__(self, body: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._body = body
        self._done = done
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self.bytes += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done(self.bytes)


class WSGIMiddleware:
    """Tracks the requests of a WSGI app (Flask through :func:`track_flask`, Falcon's
    WSGI app through :func:`track_falcon`, any other).

    Per request it wraps ``start_response`` (which keeps the status line, the headers and
    Flask's request, still in the environ while the response starts) and times the app;
    everything else waits until the app answered."""

    def __init__(self, app: WSGIApp, tracker: ApiCallTracker) -> None:
        self.app = app
        self.tracker = tracker

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        tracker = self.tracker
        if tracker.selective and not tracker.wants(
            environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        ):
            return self.app(environ, start_response)
        started: list[Any] = [None, (), None]  # status line, headers, Flask's request

        def tracking_start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            started[0] = line
            started[1] = headers
            started[2] = environ.get(WERKZEUG_REQUEST)
            return start_response(line, headers, exc_info)

        start = perf_counter_ns()
        try:
            body = self.app(environ, tracking_start_response)
        except BaseException:
            self._record(environ, started, start, 0)
            raise
        if type(body) is list:  # already whole (Falcon's and many others' answer)
            self._record(environ, started, start, sum(map(len, body)))
            return body
        # the Content-Length, when the app gave one (Flask's and Django's whole responses):
        # recorded now, the body passed on untouched; a wrapper counting it costs more than
        # the app's own answer's pass through the server. The duration ends when the app
        # answered.
        length = None
        try:
            for name, value in started[1]:
                if name == "Content-Length" or (
                    len(name) == 14 and name.lower() == "content-length"
                ):
                    length = int(value) if value.isdigit() else None
                    break
        except Exception:  # noqa: BLE001 - odd headers: counted as the body passes
            length = None
        if length is None:
            return _TrackedBody(body, lambda sent: self._record(environ, started, start, sent))
        self._record(environ, started, start, length)
        return body

    def _record(self, environ: dict[str, Any], started: list[Any], start: int, sent: int) -> None:
        duration = perf_counter_ns() - start
        tracker = self.tracker
        try:
            line = started[0]
            status = int(line[:3]) if line else 500
            # the route: ours in the environ (Falcon's, through FalconRoute), else the
            # url_rule of the Flask request that answered (none: a 404)
            route = environ.get(ROUTE_KEY)
            if route is None and started[2] is not None:
                try:
                    route = started[2].url_rule.rule
                except AttributeError:
                    route = None
            if type(route) is not str:
                route = None
        except Exception:  # noqa: BLE001 - an odd status line or request must not fail one
            tracker.stats.failures += 1
            status, route = 500, None
        method = environ.get("REQUEST_METHOD", "GET")
        tracker.record(environ, method, environ.get("PATH_INFO", ""), route, status, duration, sent)


class FalconRoute:
    """Falcon middleware that puts ``req.uri_template`` where the ASGI or WSGI middleware
    reads the route (WSGI and ASGI apps alike); :func:`track_falcon` adds it."""

    def process_resource(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        if req.uri_template is not None:
            req.env[ROUTE_KEY] = req.uri_template

    async def process_resource_async(self, req: Any, resp: Any, resource: Any, params: Any) -> None:
        if req.uri_template is not None:
            req.scope[ROUTE_KEY] = req.uri_template


def track_falcon(app: Any, tracker: ApiCallTracker) -> Any:
    """Track a ``falcon.App`` or ``falcon.asgi.App``: adds :class:`FalconRoute` to it and
    returns the app to serve (wrapped in :class:`ASGIMiddleware` or
    :class:`WSGIMiddleware`)."""
    import falcon.asgi

    app.add_middleware(FalconRoute())
    if isinstance(app, falcon.asgi.App):
        return ASGIMiddleware(app, tracker)
    return WSGIMiddleware(app, tracker)


def track_flask(app: Any, tracker: ApiCallTracker) -> Any:
    """Track a Flask app in place; returns the app. Its ``wsgi_app`` is wrapped (the app's
    own WSGI middleware stays outside); the route is the ``url_rule`` of the request Flask
    leaves in the environ (``"werkzeug.request"``) while the response starts (it clears it
    before returning), so nothing runs inside Flask per request."""
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, tracker)
    return app


class DjangoMiddleware:
    """Django middleware (synchronous): add ``"metronome.middleware.DjangoMiddleware"``
    first in ``MIDDLEWARE`` and set ``METRONOME_API_CALLS`` to an
    :class:`ApiCallTracker` in the settings. The user hook receives the request (the
    default reads ``request.user`` when authenticated)."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        settings = importlib.import_module("django.conf").settings  # Django is the app's

        self.get_response = get_response
        self.tracker: ApiCallTracker = settings.METRONOME_API_CALLS
        if self.tracker._user is None:
            self.tracker._user = _django_user

    def __call__(self, request: Any) -> Any:
        tracker = self.tracker
        method, path = request.method, request.path_info
        if tracker.selective and not tracker.wants(method, path):
            return self.get_response(request)
        start = perf_counter_ns()
        status: int = 500
        body_bytes: int | None = 0
        try:
            response = self.get_response(request)
            status = response.status_code
            body_bytes = None if response.streaming else len(response.content)
            return response
        finally:
            duration = perf_counter_ns() - start
            match = getattr(request, "resolver_match", None)
            route = getattr(match, "route", None) or None
            if route is not None and not route.startswith("/"):
                route = "/" + route  # Django's routes have no leading slash
            tracker.record(request, method, path, route, status, duration, body_bytes)


def _django_user(request: Any) -> Any:
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return user.pk
    return None
