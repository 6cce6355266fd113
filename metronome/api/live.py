"""``GET /live`` (WebSocket), ``GET /live/events`` (Server-Sent Events) and
``POST /live/token``: thin shells around :mod:`metronome.live`.

Cost before work: the guard checks the key or token (and the page's origin) before the
handshake is accepted; the connection limits next; a client's message is bounded by the
server's WebSocket frame limit (``METRONOME_LIVE_MAX_MESSAGE_BYTES``, closed 1009 past it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import falcon
import falcon.asgi
import orjson

from metronome.config import Settings
from metronome.errors import (
    InvalidField,
    InvalidParameter,
    LimitExceeded,
    MetronomeError,
    TooManyConnections,
    UpgradeRequired,
)
from metronome.live.connection import Closing, Connection
from metronome.live.hub import Hub
from metronome.live.protocol import Subscribe, parse_subscription
from metronome.pipeline.metrics import LIVE_CLOSED

from .guard import Access, Guard

__all__ = ["LiveEvents", "LiveSocket", "LiveToken"]

_CLOSE_WAIT_S = 30.0
"""How long a close frame may wait behind unread data before the socket is dropped."""


class LiveSocket:
    """``GET /live``: a WebSocket carrying subscriptions both ways."""

    def __init__(self, settings: Settings, hub: Hub, guard: Guard) -> None:
        self._settings = settings
        self._hub = hub
        self._guard = guard

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        await self._guard.live(req)  # who asks first, as on the handshake
        raise UpgradeRequired(
            "GET /live is a WebSocket (Upgrade: websocket); where WebSockets are blocked,"
            " GET /live/events streams the same messages as Server-Sent Events"
        )

    async def on_websocket(self, req: falcon.asgi.Request, ws: falcon.asgi.WebSocket) -> None:
        access, expires_s = await self._guard.live(req)
        refusal = self._hub.admit(access.site_id)
        await ws.accept()
        if refusal is not None:
            LIVE_CLOSED.labels("4029").inc()
            await ws.close(4029, refusal[:120])
            return
        conn = Connection(self._hub, self._settings, access.site_id, expires_s)
        closed = asyncio.Event()
        tasks = [
            asyncio.create_task(self._write(conn, ws, closed)),
            asyncio.create_task(self._read(conn, ws)),
            asyncio.create_task(conn.heartbeat(True, lambda: self._guard.still_reads(access))),
        ]
        try:
            conn.welcome()
            waiter = asyncio.create_task(closed.wait())
            await asyncio.wait([*tasks[:2], waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.close()
            self._hub.release(access.site_id)
        if conn.closing is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    ws.close(conn.closing.code, conn.closing.reason[:120]), _CLOSE_WAIT_S
                )

    @staticmethod
    async def _write(conn: Connection, ws: falcon.asgi.WebSocket, closed: asyncio.Event) -> None:
        try:
            while True:
                message = await conn.next_message()
                conn.sending(True)
                await ws.send_text(message.decode())
                conn.sending(False)
        except Closing:
            closed.set()

    @staticmethod
    async def _read(conn: Connection, ws: falcon.asgi.WebSocket) -> None:
        while conn.closing is None:
            try:
                text = await ws.receive_text()
            except falcon.WebSocketDisconnected:
                return
            except falcon.errors.PayloadTypeError:
                conn.receive(b"")  # a binary frame: answered as a message that is not JSON
                continue
            conn.receive(text)


class LiveEvents:
    """``GET /live/events?s=<subscription>&s=...``: the same pushes as Server-Sent Events,
    for networks that block WebSockets. Each ``s`` is a ``subscribe`` message's JSON (its
    ``type`` may be left out); to change them, reconnect."""

    def __init__(self, settings: Settings, hub: Hub, guard: Guard) -> None:
        self._settings = settings
        self._hub = hub
        self._guard = guard

    def _subscriptions(self, req: falcon.asgi.Request) -> list[Subscribe]:
        raw = req.params.get("s")
        values = [] if raw is None else [raw] if isinstance(raw, str) else list(raw)
        if not values:
            raise InvalidParameter(
                'name at least one subscription: ?s={"id": ..., "query": {...},'
                ' "frequency": "high"}',
                parameter="s",
            )
        limit = self._settings.live_max_subscriptions
        if len(values) > limit:
            raise LimitExceeded(
                f"a connection holds at most {limit} subscriptions", parameter="s", limit=limit
            )
        out: list[Subscribe] = []
        for index, value in enumerate(values):
            if len(value) > self._settings.live_max_message_bytes:
                raise LimitExceeded(
                    f"s[{index}] is over {self._settings.live_max_message_bytes} bytes",
                    parameter="s",
                )
            try:
                body = orjson.loads(value)
                subscription = parse_subscription(body, self._settings.live_min_frequency_ms)
                self._hub.check(subscription.query)
            except orjson.JSONDecodeError:
                raise InvalidParameter(f"s[{index}] is not JSON", parameter="s") from None
            except (InvalidField, MetronomeError) as exc:
                raise type(exc)(f"s[{index}]: {exc.message}", **exc.details) from None
            out.append(subscription)
        if len({s.id for s in out}) < len(out):
            raise InvalidParameter("two subscriptions have the same id", parameter="s")
        return out

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access, expires_s = await self._guard.live(req)
        subscriptions = self._subscriptions(req)
        refusal = self._hub.admit(access.site_id)
        if refusal is not None:
            raise TooManyConnections(refusal)
        conn = Connection(self._hub, self._settings, access.site_id, expires_s)
        conn.welcome()
        conn.subscribe_all(subscriptions)
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Accel-Buffering", "no")  # NGINX: pass events on as they come
        resp.sse = self._stream(conn, access)

    async def _stream(self, conn: Connection, access: Access) -> AsyncIterator[falcon.asgi.SSEvent]:
        site_id = access.site_id
        beat = asyncio.create_task(conn.heartbeat(False, lambda: self._guard.still_reads(access)))
        try:
            while True:
                try:
                    message = await conn.next_message()
                except Closing as closing:
                    yield falcon.asgi.SSEvent(
                        event="close",
                        data=orjson.dumps(
                            {"type": "close", "code": closing.code, "reason": closing.reason}
                        ),
                    )
                    return
                conn.sending(True)
                yield falcon.asgi.SSEvent(data=message)
                conn.sending(False)
        finally:
            beat.cancel()
            conn.close()
            self._hub.release(site_id)


class LiveToken:
    """``POST /live/token``: a short-lived token for browsers, minted with a key."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = await self._guard.mint_token(req)
        resp.set_header("Cache-Control", "no-store")
