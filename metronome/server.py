"""Runs the app under gunicorn with uvicorn workers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn_worker import UvicornWorker
from websockets.datastructures import Headers
from websockets.http11 import Response
from websockets.server import ServerProtocol

from metronome.api.ratelimit import address_key
from metronome.config import Network, Settings
from metronome.errors import (
    BadRequest,
    HeadersTooLarge,
    MetronomeError,
    RequestTimeout,
    ServerBusy,
    TooManyConnections,
    UriTooLong,
    all_error_classes,
)
from metronome.logconfig import configure_logging

__all__ = [
    "HEADER_LIMITS",
    "MAX_HEAD_BYTES",
    "MAX_URL_BYTES",
    "MetronomeHttp",
    "MetronomeWebSocket",
    "MetronomeWorker",
    "PortInUse",
    "control_socket_path",
    "ensure_port_free",
    "run_server",
]

log = logging.getLogger("metronome")

MAX_URL_BYTES = 65_535
"""The longest request target (path and query string) a worker takes; longer ones get
``414 uri_too_long`` (uvicorn's URL parser cannot take more)."""

MAX_HEAD_BYTES = 98_304
"""The most bytes a request line and its headers may take together; more get ``431
headers_too_large`` (httptools itself has no limit, and would buffer them all)."""

HEADER_LIMITS: dict[bytes, int] = {
    b"origin": 2048,
    b"referer": 8192,
    b"user-agent": 8192,
    b"x-forwarded-for": 4096,
}
"""The longest value, in bytes, of the headers the app reads from every client; a longer
one gets ``431 headers_too_large`` naming it (before the app sees the request, so nothing
is parsed or cached from it). Browsers' values are far shorter: an origin is a scheme,
host and port; browsers cut a ``Referer`` to 4096 bytes; a ``User-Agent`` is a few hundred
(the app reads its first 1024 bytes and stores its first ``METRONOME_MAX_VALUE_LENGTH``);
a proxy chain of 4096 bytes is some 90 hops."""

_OPEN_BY_ADDRESS: Counter[str] = Counter()
"""Connections open in this worker, by client address (IPv6: by /64)."""

_WARN_EVERY_S = 10.0
_warned_at = -_WARN_EVERY_S

_LINGER_S = 2.0
"""How long a connection refused by the parser stays open, reading and dropping what the
client still sends: closing with unread data would reset the connection, and the client
would lose the answer."""

_UNIX_PATH_MAX = 107  # sun_path holds 108 bytes, the last a NUL


def _json_error(error: MetronomeError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps(error.to_dict())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    headers.extend(
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers().items()
    )
    return error.http_status, body, headers


async def _send_error(send: Any, error: MetronomeError) -> None:
    status, body, headers = _json_error(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _busy(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The answer past ``METRONOME_MAX_CONNECTIONS`` (uvicorn's is plain text)."""
    await _send_error(
        send,
        ServerBusy(
            "this worker has METRONOME_MAX_CONNECTIONS connections or requests in progress;"
            " retry in a moment"
        ),
    )


async def _unsupported_version(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The answer to a request line that says HTTP/0.9 or 2.0 (the app would fail on it)."""
    await _send_error(
        send,
        BadRequest(f"HTTP/{scope['http_version']} is not spoken here; send HTTP/1.1"),
    )


class _UrlTooLong(Exception):
    """Raised from the parser's URL callback: the URL is over :data:`MAX_URL_BYTES`."""


class _HeaderTooLong(Exception):
    """Raised from the parser's header callback: a header is over :data:`HEADER_LIMITS`."""


class MetronomeHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, whose own answers are JSON in Metronome's error
    shape like every other: ``400 bad_request`` for a request it cannot parse or an HTTP
    version other than 1.0 and 1.1, ``414 uri_too_long`` past :data:`MAX_URL_BYTES`
    (before reading the rest of the URL), ``431 headers_too_large`` past
    :data:`MAX_HEAD_BYTES`, ``408 request_timeout`` when the request line and headers take
    longer than :attr:`head_timeout_s`, ``503 server_busy`` past the connection limit
    (``limit_concurrency``), ``429 too_many_connections`` to a connection past
    :attr:`max_per_address` from one client address (before reading a byte of it)."""

    head_timeout_s: float = 10.0
    """Seconds a request's line and headers have to arrive, from the connection's start or
    the request's first byte (``METRONOME_BODY_TIMEOUT_S``, set by the worker). The clock
    runs over the whole head: a header line every few seconds does not restart it."""

    max_per_address: int = 0
    """Most connections one client address (IPv6: one /64) may hold open in this worker; 0
    is no limit (``METRONOME_MAX_CONNECTIONS_PER_ADDRESS``, set by the worker)."""

    trusted_proxies: tuple[Network, ...] = ()
    """Peers exempt from :attr:`max_per_address`: every client of a reverse proxy comes
    from its address (``METRONOME_TRUSTED_PROXIES``, set by the worker)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy_at: int | None = self.limit_concurrency
        self.limit_concurrency = None  # checked below, answered in JSON
        self._refused = False
        self._in_head = True  # the next bytes are a request line and headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._address: str | None = None  # counted in _OPEN_BY_ADDRESS while open
        self._header_refusal: HeadersTooLarge | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        address = self._limited_address()
        if address is not None:
            if _OPEN_BY_ADDRESS[address] >= self.max_per_address:
                self._refuse_connection(address)
                return
            _OPEN_BY_ADDRESS[address] += 1
            self._address = address
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        address, self._address = self._address, None
        if address is not None:
            _OPEN_BY_ADDRESS[address] -= 1
            if _OPEN_BY_ADDRESS[address] <= 0:
                del _OPEN_BY_ADDRESS[address]
        super().connection_lost(exc)

    def _limited_address(self) -> str | None:
        """The key this connection counts under, or None when it is not limited."""
        if not self.max_per_address or not self.client:
            return None
        host = str(self.client[0])
        if self.trusted_proxies and len(host) <= 64:
            try:
                peer = ipaddress.ip_address(host)
            except ValueError:
                return address_key(host)
            if any(peer in net for net in self.trusted_proxies):
                return None
        return address_key(host)

    def _refuse_connection(self, address: str) -> None:
        """Answer ``429 too_many_connections`` before reading anything, and close; the
        connection does not count against ``METRONOME_MAX_CONNECTIONS`` while it lingers."""
        global _warned_at
        self.connections.discard(self)
        now = time.monotonic()
        if now - _warned_at >= _WARN_EVERY_S:  # one line per 10 s, whatever the flood
            _warned_at = now
            log.warning(
                "too_many_connections address=%s open=%d (a reverse proxy? list it in"
                " METRONOME_TRUSTED_PROXIES)",
                address,
                _OPEN_BY_ADDRESS[address],
            )
        limit = self.max_per_address
        self._refuse(
            TooManyConnections(
                f"this client address has {limit} connections open to this worker;"
                " close some, or retry in a moment",
                limit=limit,
            )
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # the previous request is still being answered: the next one's clock starts later
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
            return
        if self._head_bytes == 0:  # a connection that never sent a byte: nothing to answer
            self._refused = True
            self.transport.close()
            return
        timeout = self.head_timeout_s
        self._refuse(
            RequestTimeout(
                f"the request line and headers did not arrive within {timeout:g} s",
                limit_s=timeout,
            )
        )

    def data_received(self, data: bytes) -> None:
        if self._refused:  # after a refusal, what still comes is dropped
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self._refused:
            self._refuse(
                HeadersTooLarge(
                    f"the request line and headers are over {MAX_HEAD_BYTES} bytes",
                    limit=MAX_HEAD_BYTES,
                )
            )

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        limit = HEADER_LIMITS.get(name.lower())
        if limit is not None and len(value) > limit:
            header = name.decode("latin-1")
            self._header_refusal = HeadersTooLarge(
                f"the {header} header is over {limit} bytes",
                header=header.lower(),
                limit=limit,
            )
            raise _HeaderTooLong  # the parser stops; data_received answers 400, made 431
        super().on_header(name, value)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            raise _UrlTooLong  # the parser stops; data_received answers 400, made 414 below

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        limit = self._busy_at
        if self.parser.get_http_version() not in ("1.0", "1.1"):
            refusal = _unsupported_version
        elif limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            log.warning(
                "server_busy connections=%d requests=%d", len(self.connections), len(self.tasks)
            )
            refusal = _busy
        else:
            super().on_headers_complete()
            return
        app, self.app = self.app, refusal  # what uvicorn runs for this request
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def send_400_response(self, msg: str) -> None:
        if self._header_refusal is not None:
            self._refuse(self._header_refusal)
        elif len(getattr(self, "url", b"")) > MAX_URL_BYTES:
            self._refuse(
                UriTooLong(
                    f"the URL is over {MAX_URL_BYTES} bytes; send the data in a request body",
                    limit=MAX_URL_BYTES,
                )
            )
        else:
            self._refuse(BadRequest("the request is not valid HTTP/1.1"))

    def _refuse(self, error: MetronomeError) -> None:
        """Answer ``error`` and close the connection (after a linger)."""
        self._refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the request in progress ends here: its app gets a disconnect, its answer is
            # dropped (uvicorn would write it after this one, or after closing)
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # half an answer is out: nothing else can follow
                self.transport.close()
                return
        status, body, headers = _json_error(error)
        lines = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            lines.extend([name, b": ", value, b"\r\n"])
        lines.extend([b"\r\n", body])
        self.transport.write(b"".join(lines))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)


class _JsonHandshake(ServerProtocol):
    """websockets' server side, whose refusals of a handshake (no ``Sec-WebSocket-Key``,
    an unsupported version, headers over its limits, the app failing) are JSON in the one
    error shape instead of plain text."""

    def reject(self, status: int, text: str) -> Response:
        status = int(status)
        fallback = BadRequest if status < 500 else MetronomeError
        cls = next((c for c in all_error_classes() if c.http_status == status), fallback)
        message = text.strip() or "the WebSocket handshake failed"
        body = orjson.dumps(cls(message).to_dict())
        response: Response = super().reject(status, "")
        kept = [
            (name, value)
            for name, value in response.headers.raw_items()
            if name.lower() not in ("content-length", "content-type")
        ]
        headers = Headers(
            [*kept, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return Response(response.status_code, response.reason_phrase, headers, body)


class MetronomeWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with :class:`_JsonHandshake`: a handshake it refuses
    itself gets a JSON answer, like one the app refuses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _JsonHandshake(
            extensions=self.conn.available_extensions,
            max_size=self.config.ws_max_size,
            logger=self.conn.logger,
        )


class MetronomeWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker is untyped
    """uvicorn's gunicorn worker with Metronome's connection limit, each listening on a
    socket of its own (gunicorn's ``reuse_port``: the kernel spreads new connections).

    Slow clients: an idle keep-alive connection is closed after ``METRONOME_KEEPALIVE_S``
    (gunicorn ``keepalive``, passed on as uvicorn's ``timeout_keep_alive``); a request
    line and headers, then its body, must each arrive within ``METRONOME_BODY_TIMEOUT_S``
    (:class:`MetronomeHttp`, then the app, answer 408); past ``METRONOME_MAX_CONNECTIONS``
    connections or requests in progress a worker answers 503 (uvicorn's
    ``limit_concurrency``, answered by :class:`MetronomeHttp`); past
    ``METRONOME_MAX_CONNECTIONS_PER_ADDRESS`` connections from one client address a new one
    is answered 429 and closed before it is read, so slow clients from one address cannot
    take the others' connections.
    """

    sockets: list[Any]  # set by gunicorn before run()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env(os.environ)
        http = type(
            "MetronomeHttp",
            (MetronomeHttp,),
            {
                "head_timeout_s": settings.body_timeout_s,
                "max_per_address": settings.max_connections_per_address,
                "trusted_proxies": settings.trusted_proxies,
            },
        )
        self.CONFIG_KWARGS = {
            **UvicornWorker.CONFIG_KWARGS,
            "http": http,
            "ws": MetronomeWebSocket,
            "ws_max_size": settings.live_max_message_bytes,  # past it: closed 1009
            "limit_concurrency": settings.max_connections or None,
        }
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        self.log.info(
            "Listening at: %s (worker %s)",
            ",".join(str(listener) for listener in self.sockets),
            self.pid,
        )
        # uvicorn gets the sockets themselves, not gunicorn's wrappers: its event loop closes
        # a socket it serves, and closing the wrapper after that logged "Bad file descriptor"
        self.sockets = [getattr(listener, "sock", listener) for listener in self.sockets]
        super().run()


class _GunicornLog(Logger):
    """gunicorn's logger; the arbiter, which holds no socket with a socket per worker,
    logs the address it serves instead of an empty ``Listening at:``."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if msg == "Listening at: %s (%s)" and args and not args[0]:
            msg = "Listening at: %s (%s; a socket per worker)"
            args = (",".join(f"http://{bound}" for bound in self.cfg.bind), *args[1:])
        super().info(msg, *args, **kwargs)


def control_socket_path(settings: Settings) -> Path | None:
    """Where the arbiter's control socket (``gunicornc -s PATH``) goes: in the data
    directory, so two servers never share one (gunicorn's default is one per user).
    ``None`` when the path is too long for a Unix socket: the server runs without one."""
    path = Path(settings.data_dir).resolve() / "gunicorn.ctl"
    return path if len(os.fsencode(path)) <= _UNIX_PATH_MAX else None


class PortInUse(RuntimeError):
    """Another process listens on the address ``serve`` was asked to bind."""


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` when something already listens on ``host:port``.

    The workers' sockets share the port (``SO_REUSEPORT``), and the kernel would let a
    second server of the same user share it too, silently splitting the traffic between
    them (two data directories, each with part of the events). A plain bind tells.
    """
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET  # as gunicorn picks it
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        probe.bind((bare, port))
    except OSError as exc:
        raise PortInUse(
            f"cannot listen on {host}:{port}: {exc.strerror} (is another"
            " Metronome running? METRONOME_PORT or --port picks another)"
        ) from None
    finally:
        probe.close()


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # runs in each worker after the fork: every worker builds its own app and store
        from metronome.app import app_from_env

        return app_from_env()


def run_server(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; workers that die are replaced."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    configure_logging(settings)
    # the application's modules, imported once here: the workers forked below start with
    # them loaded (each still builds its own app and store, in ``_Server.load``), so a
    # start or a worker's restart costs one import of them, not one per worker
    import metronome.app  # noqa: F401

    control = control_socket_path(settings)
    if control is None:
        log.info("control_socket_disabled reason=the data directory's path is too long")
    _Server(
        {
            "bind": f"{host}:{settings.port}",
            "workers": settings.workers,
            "worker_class": "metronome.server.MetronomeWorker",
            "graceful_timeout": 10,
            "timeout": 60,  # a worker that stops answering its arbiter is restarted
            "keepalive": settings.keepalive_s,
            # a listening socket per worker (gunicorn 24+ makes them in each worker): the
            # kernel spreads new connections over them. With one socket shared by all, the
            # worker that woke first accepted every connection waiting, and keep-alive
            # connections stayed there (31 of 32 on one of two workers in one benchmark run,
            # all 8 in another, at half the throughput)
            "reuse_port": True,
            "accesslog": None,
            "loglevel": settings.log_level,
            "preload_app": False,
            "logger_class": "metronome.server._GunicornLog",
            "control_socket": str(control or ""),
            "control_socket_disable": control is None,
        }
    ).run()
