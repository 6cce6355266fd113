"""One live connection (a WebSocket or an event stream): its subscriptions, what waits to
be written, its heartbeat and its limits. Transport-neutral: ``api/live.py`` feeds it the
client's messages and writes what :meth:`Connection.next_message` gives.

Backpressure: pushes wait in a dict keyed by subscription, so a newer answer replaces one
not yet written (coalescing) and a slow reader holds at most one answer per subscription.
The connection is closed (4008) when, while a write is blocked, more than
``METRONOME_LIVE_BUFFER_BYTES`` wait behind it, or one write stays blocked for two ping
intervals. Evaluations only ever call :meth:`Connection.offer`, which never waits: a slow
reader slows no one else, and ingestion never waits for anyone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from metronome.config import Settings
from metronome.errors import MetronomeError
from metronome.live.hub import Evaluation, Hub
from metronome.live.protocol import Subscribe, Unsubscribe, parse_client_message
from metronome.pipeline.metrics import LIVE_CLOSED

__all__ = ["Closing", "Connection"]

_PING = b'{"type":"ping"}'


class Closing(Exception):
    """The connection is to be closed with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Connection:
    def __init__(
        self, hub: Hub, settings: Settings, site_id: str, expires_s: int | None = None
    ) -> None:
        self.hub = hub
        self.site_id = site_id
        self._settings = settings
        self._expires_s = expires_s
        self._subs: dict[str, Evaluation] = {}
        self._pending: dict[Any, bytes] = {}  # subscription id, or a control message's number
        self._pending_bytes = 0
        self._control = 0
        self._wake = asyncio.Event()
        self._sending_since: float | None = None
        self._unanswered = 0
        self.closing: Closing | None = None

    # -- what evaluations and the protocol push ----------------------------------------

    def offer(self, sub_id: str, message: bytes) -> None:
        """Queue ``message`` for subscription ``sub_id``, replacing one not yet written."""
        if self.closing is not None or sub_id not in self._subs:
            return
        old = self._pending.pop(sub_id, None)
        if old is not None:
            self._pending_bytes -= len(old)
        self._queue(sub_id, message)

    def push(self, message: bytes) -> None:
        """Queue a control message (never coalesced)."""
        if self.closing is None:
            self._control += 1
            self._queue(self._control, message)

    def _queue(self, key: Any, message: bytes) -> None:
        self._pending[key] = message
        self._pending_bytes += len(message)
        limit = self._settings.live_buffer_bytes
        if self._sending_since is not None and self._pending_bytes > limit:
            self.fail(
                4008,
                f"the client reads too slowly: over {limit} bytes wait to be written",
            )
        self._wake.set()

    def fail(self, code: int, reason: str) -> None:
        if self.closing is None:
            LIVE_CLOSED.labels(str(code)).inc()
            self.closing = Closing(code, reason)
            self._pending.clear()
            self._pending_bytes = 0
            self._wake.set()

    # -- the transport's side -----------------------------------------------------------

    def welcome(self) -> None:
        s = self._settings
        self.push(
            orjson.dumps(
                {
                    "type": "welcome",
                    "site": self.site_id,
                    "ping_s": s.live_ping_s,
                    "limits": {
                        "subscriptions": s.live_max_subscriptions,
                        "message_bytes": s.live_max_message_bytes,
                        "min_frequency_ms": s.live_min_frequency_ms,
                    },
                    "expires_s": self._expires_s,
                }
            )
        )

    async def next_message(self) -> bytes:
        """The next message to write (oldest first); raises :class:`Closing` when the
        connection is to close. Call :meth:`sending` around each write."""
        while True:
            if self.closing is not None:
                raise self.closing
            if self._pending:
                key = next(iter(self._pending))
                message = self._pending.pop(key)
                self._pending_bytes -= len(message)
                return message
            self._wake.clear()
            await self._wake.wait()

    def sending(self, busy: bool) -> None:
        self._sending_since = time.monotonic() if busy else None

    def receive(self, text: str | bytes) -> None:
        """Handle one client message: any message answers the pings."""
        self._unanswered = 0
        try:
            message = parse_client_message(text, self._settings.live_min_frequency_ms)
            if isinstance(message, Subscribe):
                self._subscribe(message)
            elif isinstance(message, Unsubscribe):
                self._unsubscribe(message.id)
        except MetronomeError as exc:
            raw: Any = None
            try:
                raw = orjson.loads(text)
            except orjson.JSONDecodeError:
                pass
            sub_id = raw.get("id") if isinstance(raw, dict) else None
            self.push(
                orjson.dumps(
                    {"type": "error", "id": sub_id if isinstance(sub_id, str) else None}
                    | exc.to_dict()
                )
            )

    def subscribe_all(self, subscriptions: list[Subscribe]) -> None:
        """Subscriptions given up front (an event stream's); raises on the first bad one."""
        for subscription in subscriptions:
            self._subscribe(subscription)

    def _subscribe(self, message: Subscribe) -> None:
        limit = self._settings.live_max_subscriptions
        if message.id not in self._subs and len(self._subs) >= limit:
            self.fail(4030, f"a connection holds at most {limit} subscriptions")
            return
        self.hub.check(message.query)
        if message.id in self._subs:
            self._unsubscribe(message.id, answer=False)
        self.push(
            orjson.dumps(
                {"type": "subscribed", "id": message.id, "interval_ms": message.interval_ms}
            )
        )
        evaluation = self.hub.subscribe(
            self.site_id, message.query, message.interval_ms, self, message.id
        )
        self._subs[message.id] = evaluation
        latest = evaluation.message_for(message.id)  # a shared evaluation's latest answer
        if latest is not None:
            self.offer(message.id, latest)

    def _unsubscribe(self, sub_id: str, answer: bool = True) -> None:
        evaluation = self._subs.pop(sub_id, None)
        if evaluation is not None:
            self.hub.unsubscribe(evaluation, self, sub_id)
        old = self._pending.pop(sub_id, None)
        if old is not None:
            self._pending_bytes -= len(old)
        if answer:
            self.push(orjson.dumps({"type": "unsubscribed", "id": sub_id}))

    async def heartbeat(
        self, answers: bool, still_reads: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Every ``METRONOME_LIVE_PING_S``: close an expired token's connection or one whose
        key was revoked (``still_reads``; 4001), a stuck reader's (4008) and, when the
        client ``answers`` pings (WebSocket), one that left two unanswered (4000); then
        ping."""
        ping_s = self._settings.live_ping_s
        while self.closing is None:
            await asyncio.sleep(ping_s)
            if self._expires_s is not None and time.time() >= self._expires_s:
                self.fail(4001, "the token expired; mint a new one with POST /live/token")
            elif still_reads is not None and not await still_reads():
                self.fail(4001, "the key was revoked or its site removed; sign in again")
            elif (
                self._sending_since is not None
                and time.monotonic() - self._sending_since > 2 * ping_s
            ):
                self.fail(4008, f"the client read nothing for {2 * ping_s} s")
            elif answers and self._unanswered >= 2:
                self.fail(4000, "two pings went unanswered")
            else:
                self._unanswered += 1
                self.push(_PING)

    def close(self) -> None:
        """Free everything: the subscriptions (and evaluations no one else holds)."""
        for sub_id in list(self._subs):
            self._unsubscribe(sub_id, answer=False)
        self._pending.clear()
        self._pending_bytes = 0
