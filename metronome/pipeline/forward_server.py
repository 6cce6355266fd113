"""A Fluentd forward-protocol input: Fluentd, Fluent Bit and fluent-logger clients send here.

The server speaks the TCP part of Fluentd's *Forward Protocol Specification v1*. Every
frame is one msgpack array, in one of four modes::

    Message                  [tag, time, record, option?]
    Forward                  [tag, [[time, record], ...], option?]
    PackedForward            [tag, <bin or str: [time, record] entries packed back to back>,
                              option?]
    CompressedPackedForward  the same, gzip-compressed, with option {"compressed": "gzip"}

``time`` is whole seconds or the EventTime extension (msgpack ext type 0, 8 bytes: uint32
seconds and uint32 nanoseconds, big-endian); entries are handed on with epoch
milliseconds. As in Fluentd, a time of ``0`` (or nil) means "now". A float time (some
clients send one) is taken as seconds too.

Delivery: each frame's entries go to the ``handler`` given to :class:`ForwardServer`, one
frame at a time per connection, in order, with the frame's ``chunk`` id (if any). Only
after the handler returns, and only when the frame's option carried ``chunk``, the server
answers ``{"ack": <chunk>}``, so a client that asks for acknowledgements (Fluentd
``require_ack_response``) sends a chunk again unless it was handed off. When the handler
raises, nothing is acknowledged and the connection is closed: Fluentd then rolls the
chunk back and retries it at once (instead of waiting ``ack_response_timeout`` for an
answer that never comes). A malformed frame (:class:`ForwardProtocolError`, undecodable
msgpack, a frame over ``max_frame_bytes``) is logged and closes that connection; other
connections and the server carry on.

Routing convention (applied by the handler, not here):

- tag ``metronome.tick`` (:data:`TICK_TAG`): the record is a tick object, exactly as one
  body of ``POST /tick``. ``metronome.client.FluentClient`` and fluent-logger's
  ``FluentSender("metronome").emit("tick", {...})`` send these.
- tag ``metronome.access`` (:data:`ACCESS_TAG`): the record is one access-log line, either
  ``{"message": "<the raw line>"}`` (Fluentd ``in_tail`` with ``<parse> @type none``) or
  the fields a Fluentd parser already extracted.

Authentication (:class:`ForwardAuth`): the handshake of Fluentd's ``<security>`` section.
The server opens every connection with ``["HELO", {"nonce", "auth", "keepalive"}]``; the
client answers ``["PING", hostname, salt, sha512_hex(salt + hostname + nonce + shared_key),
"", ""]``, and the server accepts it with ``["PONG", true, "", its hostname,
sha512_hex(salt + its hostname + nonce + shared_key)]`` or refuses it with ``["PONG",
false, reason, ...]`` and closes. Several keys may be accepted, each naming the site its
connections send for (the handler's ``site``). With users, the HELO's ``auth`` salt asks
the client for a user name and ``sha512_hex(auth salt + user + password)`` too, and a
user may name the site instead of the key.

Cost before work: a frame is checked against ``admit`` (the spool has room) before it is
decoded; it is bounded in bytes (``max_frame_bytes``, as received and once inflated) and in
entries (``max_frame_entries``, counted while decoding: a compressed payload is inflated a
piece at a time and abandoned at the first entry past the limit); a connection's entries
are handed off at most ``connection_entries_per_s`` per second (a faster sender waits, and
TCP makes it wait in turn); and at most ``max_connections`` connections are open at once.
A refused frame is never acknowledged; the reason is logged and the connection closed.

What is not supported: TLS; UDP heartbeats (use Fluentd's default ``heartbeat_type
transport``, or ``tcp``: a TCP heartbeat is a connection opened and closed, which is
harmless here); the JSON variant of the protocol. Keep Fluentd's ``chunk_limit_size``
below ``max_frame_bytes`` and ``chunk_limit_records`` below ``max_frame_entries``: a larger
chunk is refused every time it is sent.

Text: msgpack ``str`` and ``bin`` values in records both become Python ``str`` (to Fluentd
both are Ruby Strings); bytes that are not UTF-8 become U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import socket
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from metronome.errors import SpoolFull

__all__ = [
    "ACCESS_TAG",
    "TICK_TAG",
    "EventTime",
    "ForwardAuth",
    "ForwardHandler",
    "ForwardProtocolError",
    "ForwardServer",
    "decode_entries",
]

log = logging.getLogger("metronome.forward")

TICK_TAG = "metronome.tick"
ACCESS_TAG = "metronome.access"

ForwardHandler = Callable[
    [str, list[tuple[int, dict[str, Any]]], str | None, str | None], Awaitable[None]
]
"""``await handler(tag, [(time_ms, record), ...], chunk, site)``: ``chunk`` is the frame's
``chunk`` option (Fluentd's id of the buffer chunk, the same when a chunk is sent again;
bin as Latin-1 text), or None; ``site`` is the site the connection's shared key names, or
None (no handshake, or a key that names no site)."""

_EVENT_TIME_EXT = 0
_MAX_RECORD_DEPTH = 200  # msgpack's own limit is 1024; Python's recursion limit is lower
_READ_SIZE = 64 * 1024
_PING_MAX_BYTES = 8192  # a PING is a few hundred bytes


class ForwardProtocolError(Exception):
    """A frame that is not valid Fluentd forward protocol."""


@dataclass(frozen=True, slots=True)
class EventTime:
    """Fluentd's EventTime (msgpack ext type 0): seconds and nanoseconds.

    Not a tuple on purpose: a frame's second item tells the modes apart, and an array
    there means Forward mode.
    """

    seconds: int
    nanoseconds: int


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EVENT_TIME_EXT:
        if len(data) != 8:
            raise ForwardProtocolError(f"EventTime must be 8 bytes, got {len(data)}")
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def _is_array(value: Any) -> bool:
    # msgpack.ExtType is a namedtuple: never take it for an array
    return isinstance(value, list) or (
        isinstance(value, tuple) and not isinstance(value, msgpack.ExtType)
    )


def _unpacker(max_buffer_size: int, max_array_len: int = -1) -> msgpack.Unpacker:
    # surrogateescape keeps a PackedForward payload sent as msgpack str (older clients)
    # byte-exact; _clean() turns any undecodable text in records into U+FFFD.
    # max_array_len: a Forward frame's entries are counted by the decoder, before any
    # of them is built (-1: msgpack's default, bounded by the buffer)
    return msgpack.Unpacker(
        raw=False,
        ext_hook=_ext_hook,
        strict_map_key=False,
        unicode_errors="surrogateescape",
        max_buffer_size=max(max_buffer_size, 1),
        max_array_len=max_array_len,
    )


# -- decoding ---------------------------------------------------------------------------


def _text(value: str) -> str:
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from surrogateescape: not UTF-8 on the wire
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        if depth >= _MAX_RECORD_DEPTH:
            raise ForwardProtocolError(f"record nested deeper than {_MAX_RECORD_DEPTH} levels")
        cleaned = {}
        for key, item in value.items():
            if isinstance(key, bytes):
                key = key.decode("utf-8", "replace")
            elif isinstance(key, str):
                key = _text(key)
            else:
                raise ForwardProtocolError(
                    f"record keys must be strings, got {type(key).__name__} {key!r}"
                )
            cleaned[key] = _clean(item, depth + 1)
        return cleaned
    if _is_array(value):
        if depth >= _MAX_RECORD_DEPTH:
            raise ForwardProtocolError(f"record nested deeper than {_MAX_RECORD_DEPTH} levels")
        return [_clean(item, depth + 1) for item in value]
    return value


def _record(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ForwardProtocolError(f"{where}: record must be a map, got {_kind(value)}")
    return _clean(value, 0)  # type: ignore[no-any-return]  # a map, checked above


def _time_ms(value: Any, now_ms: int, where: str) -> int:
    if isinstance(value, msgpack.ExtType):  # decoded without our ext_hook
        if value.code != _EVENT_TIME_EXT or len(value.data) != 8:
            raise ForwardProtocolError(
                f"{where}: time must be seconds or EventTime (ext 0, 8 bytes), "
                f"got ext type {value.code} of {len(value.data)} bytes"
            )
        value = EventTime(*struct.unpack(">II", value.data))
    if isinstance(value, EventTime):
        if value.nanoseconds >= 1_000_000_000:
            raise ForwardProtocolError(
                f"{where}: EventTime nanoseconds must be below 10^9, got {value.nanoseconds}"
            )
        if value.seconds == 0 and value.nanoseconds == 0:
            return now_ms
        return value.seconds * 1000 + value.nanoseconds // 1_000_000
    if value is None:
        return now_ms
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ForwardProtocolError(
            f"{where}: time must be seconds or EventTime, got {_kind(value)}"
        )
    if not math.isfinite(value) or value < 0:
        raise ForwardProtocolError(f"{where}: time must be a non-negative number, got {value}")
    if value == 0:
        return now_ms
    return int(value * 1000) if isinstance(value, float) else value * 1000


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, msgpack.ExtType):
        return f"ext type {value.code}"
    if _is_array(value):
        return "array"
    if isinstance(value, bytes):
        return "bin"
    return type(value).__name__


def _entry(value: Any, now_ms: int, where: str) -> tuple[int, dict[str, Any]]:
    if not _is_array(value) or len(value) != 2:
        shape = f"array of {len(value)}" if _is_array(value) else _kind(value)
        raise ForwardProtocolError(f"{where}: entry must be [time, record], got {shape}")
    return _time_ms(value[0], now_ms, where), _record(value[1], where)


def _inflated(data: bytes, limit: int | None) -> Iterator[bytes]:
    """Every gzip member of ``data`` (Fluentd appends one per write), inflated a piece of
    at most ``_READ_SIZE`` bytes at a time; raises past ``limit`` bytes in all, having
    inflated no more than one piece beyond it."""
    total = 0
    while data:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = data
        while not inflater.eof:
            try:
                piece = inflater.decompress(pending, _READ_SIZE)
            except zlib.error as exc:
                raise ForwardProtocolError(
                    f"CompressedPackedForward: bad gzip data ({exc})"
                ) from None
            total += len(piece)
            if limit is not None and total > limit:
                raise ForwardProtocolError(
                    f"CompressedPackedForward: more than {limit} bytes once decompressed"
                )
            pending = inflater.unconsumed_tail
            if not piece and not pending and not inflater.eof:
                raise ForwardProtocolError("CompressedPackedForward: gzip data is truncated")
            if piece:
                yield piece
        data = inflater.unused_data


def _packed_entries(
    pieces: Iterable[bytes],
    now_ms: int,
    mode: str,
    *,
    max_entries: int | None,
    buffer_bytes: int,
) -> list[tuple[int, dict[str, Any]]]:
    """The entries packed back to back in ``pieces`` (read one after the other, never
    joined): stops at the first entry past ``max_entries``."""
    unpacker = _unpacker(buffer_bytes)
    entries: list[tuple[int, dict[str, Any]]] = []
    fed = end = 0  # tell() also counts the bytes of an incomplete object: note complete ends
    try:
        for piece in pieces:
            unpacker.feed(piece)
            fed += len(piece)
            for value in unpacker:
                end = unpacker.tell()
                if max_entries is not None and len(entries) >= max_entries:
                    raise ForwardProtocolError(f"{mode}: more than {max_entries} entries")
                entries.append(_entry(value, now_ms, f"{mode} entry {len(entries)}"))
    except ForwardProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - any undecodable byte is a malformed frame
        raise ForwardProtocolError(f"{mode}: entries are not valid msgpack ({exc!r})") from None
    if end != fed:
        raise ForwardProtocolError(
            f"{mode}: entries end in an incomplete msgpack object ({fed - end} bytes left over)"
        )
    return entries


def _option(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ForwardProtocolError(f"option must be a map, got {_kind(value)}")
    chunk = value.get("chunk")
    if chunk is not None and not isinstance(chunk, str | bytes):
        raise ForwardProtocolError(f"option 'chunk' must be a string, got {_kind(chunk)}")
    if isinstance(chunk, str) and not chunk.isascii():
        try:
            chunk.encode("utf-8")  # it is echoed in the ack
        except UnicodeEncodeError:
            raise ForwardProtocolError("option 'chunk' is not UTF-8") from None
    return value


def decode_entries(
    message: Any,
    *,
    now_ms: int | None = None,
    max_decompressed_bytes: int | None = None,
    max_entries: int | None = None,
) -> tuple[str, list[tuple[int, dict[str, Any]]], dict[str, Any] | None]:
    """One decoded forward-protocol frame to ``(tag, [(time_ms, record), ...], option)``.

    ``message`` is the msgpack array as unpacked (EventTime either as :class:`EventTime`
    or as ``msgpack.ExtType(0, ...)``). ``now_ms`` stands in for times of ``0``/nil
    (default: the clock). ``max_decompressed_bytes`` bounds a CompressedPackedForward
    payload after gunzip, ``max_entries`` the entries of any frame (counted as they are
    decoded). Raises :class:`ForwardProtocolError` saying what is wrong.
    """
    if not _is_array(message):
        raise ForwardProtocolError(f"a frame must be a msgpack array, got {_kind(message)}")
    if not 2 <= len(message) <= 4:
        raise ForwardProtocolError(f"a frame must be an array of 2 to 4 items, got {len(message)}")
    tag = message[0]
    if isinstance(tag, bytes):
        try:
            tag = tag.decode("utf-8")
        except UnicodeDecodeError:
            raise ForwardProtocolError("tag is not UTF-8") from None
    if not isinstance(tag, str):
        raise ForwardProtocolError(f"tag must be a string, got {_kind(tag)}")
    try:
        tag.encode("utf-8")
    except UnicodeEncodeError:
        raise ForwardProtocolError("tag is not UTF-8") from None
    if not tag:
        raise ForwardProtocolError("tag must not be empty")
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    body = message[1]

    if _is_array(body):  # Forward
        if len(message) > 3:
            raise ForwardProtocolError(
                f"Forward mode is [tag, entries, option?], got {len(message)} items"
            )
        option = _option(message[2] if len(message) == 3 else None)
        if max_entries is not None and len(body) > max_entries:
            raise ForwardProtocolError(f"Forward: more than {max_entries} entries")
        entries = [_entry(e, now_ms, f"Forward entry {i}") for i, e in enumerate(body)]
        return tag, entries, option

    if isinstance(body, bytes | str):  # PackedForward, CompressedPackedForward
        if len(message) > 3:
            raise ForwardProtocolError(
                f"PackedForward mode is [tag, entries, option?], got {len(message)} items"
            )
        option = _option(message[2] if len(message) == 3 else None)
        payload = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
        compressed = (option or {}).get("compressed", "text")
        if compressed == "gzip":
            entries = _packed_entries(
                _inflated(payload, max_decompressed_bytes),
                now_ms,
                "CompressedPackedForward",
                max_entries=max_entries,
                buffer_bytes=max_decompressed_bytes or (1 << 31) - 1,
            )
            return tag, entries, option
        if compressed != "text":
            raise ForwardProtocolError(
                f"option 'compressed' must be 'gzip' or 'text', got {compressed!r}"
            )
        entries = _packed_entries(
            (payload,),
            now_ms,
            "PackedForward",
            max_entries=max_entries,
            buffer_bytes=len(payload),
        )
        return tag, entries, option

    # Message
    if len(message) < 3:
        raise ForwardProtocolError(
            f"entries must be an array, bin or str (Forward, PackedForward), or a Message "
            f"[tag, time, record, option?]; got [tag, {_kind(body)}]"
        )
    option = _option(message[3] if len(message) == 4 else None)
    entry = (_time_ms(body, now_ms, "Message"), _record(message[2], "Message"))
    return tag, [entry], option


def _chunk_text(chunk: str | bytes | None) -> str | None:
    return chunk.decode("latin-1") if isinstance(chunk, bytes) else chunk


# -- server ----------------------------------------------------------------------------


def _default_hostname() -> str:
    # not the machine's name alone: Fluentd refuses a PONG from its own self_hostname
    return f"metronome@{socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class ForwardAuth:
    """The shared keys the server accepts in Fluentd's handshake (``<security>``), each
    with the site its connections send for (None: the key names no site); and, when
    ``users`` has any, the users one of whom every connection must also be (``<user>``:
    name to password and site, which decides the site unless None)."""

    keys: Mapping[str, str | None]
    users: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    hostname: str = field(default_factory=_default_hostname)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.keys or not all(self.keys):
            raise ValueError("ForwardAuth needs at least one shared key, none of them empty")


def _digest(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def _wire_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


class _Refused(Exception):
    """The connection is closed: ``reason`` says why (logged by the caller)."""

    def __init__(self, reason: str, level: int = logging.WARNING) -> None:
        super().__init__(reason)
        self.reason = reason
        self.level = level


class _Connection:
    __slots__ = (
        "busy",
        "fed",
        "frame_end",
        "peer",
        "refilled",
        "site",
        "task",
        "tokens",
        "unpacker",
        "writer",
    )

    def __init__(
        self,
        task: asyncio.Task[None],
        writer: asyncio.StreamWriter,
        peer: str,
        max_frame_bytes: int,
        max_array_len: int,
        tokens: float,
    ) -> None:
        self.task = task
        self.writer = writer
        self.peer = peer
        self.busy = False  # handing a frame off: close() lets it finish
        # max_buffer_size alone does not bound a frame (msgpack drops what it has parsed),
        # so frames are measured here: bytes received against where the last frame ended.
        self.unpacker = _unpacker(max_frame_bytes + _READ_SIZE, max_array_len)
        self.fed = 0
        self.frame_end = 0
        self.site: str | None = None  # the site the connection's credentials name
        self.tokens = tokens  # entries it may hand off now (refilled with time)
        self.refilled = time.monotonic()


class ForwardServer:
    """Listens for forward-protocol frames and hands their entries to ``handler``.

    ``await handler(tag, [(time_ms, record), ...], chunk, site)`` runs once per frame
    (frames with no entries are acknowledged without calling it). ``max_frame_bytes``
    bounds one frame as received and a compressed payload once decompressed;
    ``max_frame_entries`` its entries. ``connection_entries_per_s`` paces each connection
    (None: no pacing); ``max_connections`` bounds the connections open at once; ``admit``
    returns a reason to refuse frames now (checked before each frame is decoded), or None;
    ``auth`` asks every connection for a shared key first.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler: ForwardHandler,
        *,
        max_frame_bytes: int = 16 << 20,
        max_frame_entries: int = 10_000,
        connection_entries_per_s: float | None = None,
        max_connections: int = 64,
        admit: Callable[[], str | None] | None = None,
        auth: ForwardAuth | None = None,
    ) -> None:
        if max_frame_bytes < 1 or max_frame_entries < 1 or max_connections < 1:
            raise ValueError("max_frame_bytes, max_frame_entries and max_connections: >= 1")
        if connection_entries_per_s is not None and connection_entries_per_s <= 0:
            raise ValueError("connection_entries_per_s must be positive")
        self.host = host
        self._requested_port = port
        self._handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.max_frame_entries = max_frame_entries
        self.connection_entries_per_s = connection_entries_per_s
        self.max_connections = max_connections
        self._admit = admit
        self._auth = auth
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("ForwardServer is not listening; await start() first")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("ForwardServer already started")
        self._closing = False
        self._server = await asyncio.start_server(self._serve, self.host, self._requested_port)
        log.info("forward_listening host=%s port=%d", self.host, self.port)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop listening and end every connection.

        Idle connections end at once; a frame whose handler is running gets up to
        ``timeout_s`` to finish and be acknowledged, then it is cancelled (and, not being
        acknowledged, sent again by the client).
        """
        if self._server is None:
            return
        self._closing = True
        server, self._server = self._server, None
        server.close()
        tasks = []
        for conn in list(self._connections):
            if not conn.busy:
                conn.task.cancel()
            tasks.append(conn.task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def _capacity(self) -> float:
        rate = self.connection_entries_per_s or 0.0
        return max(rate, float(self.max_frame_entries))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if len(self._connections) >= self.max_connections:
            log.warning(
                "forward_refused peer=%s reason=%d connections are open"
                " (METRONOME_FORWARD_MAX_CONNECTIONS): closing",
                peer,
                len(self._connections),
            )
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return
        conn = _Connection(
            task,
            writer,
            peer,
            self.max_frame_bytes,
            max(self.max_frame_entries, 8),
            self._capacity(),
        )
        self._connections.add(conn)
        try:
            if not self._closing:
                first = b""
                if self._auth is not None:
                    first = await self._handshake(reader, conn, self._auth)
                await self._read_frames(reader, conn, first)
        except _Refused as refused:
            log.log(refused.level, "forward_refused peer=%s reason=%s", peer, refused.reason)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, TimeoutError) as exc:
            log.info("forward_connection_lost peer=%s error=%r", peer, exc)
        except Exception:  # a bug here must end one connection, never the server
            log.exception("forward_connection_failed peer=%s", peer)
        finally:
            self._connections.discard(conn)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _handshake(
        self, reader: asyncio.StreamReader, conn: _Connection, auth: ForwardAuth
    ) -> bytes:
        """HELO, PING, PONG: sets ``conn.site``; returns the bytes read after the PING."""
        nonce = secrets.token_bytes(16)
        auth_salt = secrets.token_bytes(16) if auth.users else b""  # b"": no users asked
        helo = {"nonce": nonce, "auth": auth_salt, "keepalive": True}
        conn.writer.write(msgpack.packb(["HELO", helo]))
        await conn.writer.drain()
        received = bytearray()
        unpacker = msgpack.Unpacker(
            raw=False, unicode_errors="surrogateescape", max_buffer_size=_PING_MAX_BYTES
        )
        deadline = time.monotonic() + auth.timeout_s
        ping: Any = None
        while ping is None:
            remaining = deadline - time.monotonic()
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), max(remaining, 0.0))
            except TimeoutError:
                raise _Refused(f"no PING within {auth.timeout_s:g}s of the HELO") from None
            if not data:  # a TCP heartbeat, or a client that gave up
                raise _Refused("closed before the handshake", logging.INFO)
            received += data
            if len(received) > _PING_MAX_BYTES:
                raise _Refused(f"handshake: a PING longer than {_PING_MAX_BYTES} bytes")
            unpacker.feed(data)
            try:
                ping = unpacker.unpack()
            except msgpack.OutOfData:
                continue
            except Exception as exc:  # noqa: BLE001 - undecodable bytes
                raise _Refused(f"handshake: not a msgpack PING ({exc!r})") from None
        rest = bytes(received[unpacker.tell() :])
        if not (_is_array(ping) and len(ping) == 6 and ping[0] == "PING"):
            raise _Refused(
                "handshake: expected [PING, hostname, salt, digest, user, password digest]"
                " (Fluentd <security> with a shared_key)"
            )
        hostname, salt, digest = (_wire_bytes(v) for v in ping[1:4])
        if hostname is None or salt is None or digest is None:
            raise _Refused("handshake: PING hostname, salt and digest must be strings")
        matched: tuple[str, str | None] | None = None
        for key, site in auth.keys.items():
            expected = _digest(salt, hostname, nonce, key.encode()).encode()
            if hmac.compare_digest(expected, digest) and matched is None:
                matched = (key, site)
        ours = auth.hostname.encode()
        sender = hostname.decode("utf-8", "replace")[:64]
        if matched is None:
            await self._pong_refusal(conn, auth, "shared key mismatch")
            raise _Refused(f"wrong shared key from {sender!r}")
        key, conn.site = matched
        if auth.users:
            name = _wire_bytes(ping[4]) or b""
            user = name.decode("utf-8", "replace")
            known = auth.users.get(user)
            given = _wire_bytes(ping[5]) or b""
            if known is None or not hmac.compare_digest(
                _digest(auth_salt, name, known[0].encode()).encode(), given
            ):
                await self._pong_refusal(conn, auth, "username/password mismatch")
                raise _Refused(f"wrong user or password {user[:64]!r} from {sender!r}")
            user_site = known[1]
            if user_site is not None and conn.site not in (None, user_site):
                await self._pong_refusal(conn, auth, "the user and the key name other sites")
                raise _Refused(f"user {user!r} is for site {user_site!r}, the key another")
            conn.site = user_site or conn.site
        pong = ["PONG", True, "", auth.hostname, _digest(salt, ours, nonce, key.encode())]
        conn.writer.write(msgpack.packb(pong))
        await conn.writer.drain()
        return rest

    @staticmethod
    async def _pong_refusal(conn: _Connection, auth: ForwardAuth, reason: str) -> None:
        conn.writer.write(msgpack.packb(["PONG", False, reason, auth.hostname, ""]))
        with contextlib.suppress(ConnectionError):
            await conn.writer.drain()

    async def _read_frames(
        self, reader: asyncio.StreamReader, conn: _Connection, first: bytes = b""
    ) -> None:
        data = first
        while not self._closing:
            if not data:
                data = await reader.read(_READ_SIZE)
            if not data:
                if conn.fed > conn.frame_end:
                    log.warning(
                        "forward_truncated_frame peer=%s: closed %d bytes into a frame",
                        conn.peer,
                        conn.fed - conn.frame_end,
                    )
                return
            conn.busy = True
            try:
                if not await self._feed(conn, data):
                    return
            finally:
                conn.busy = False
            data = b""

    async def _pace(self, conn: _Connection, entries: int) -> None:
        """Wait until ``conn`` may hand off ``entries`` more (``connection_entries_per_s``)."""
        rate = self.connection_entries_per_s
        if rate is None:
            return
        now = time.monotonic()
        conn.tokens = min(self._capacity(), conn.tokens + (now - conn.refilled) * rate)
        conn.refilled = now
        if conn.tokens >= entries:
            conn.tokens -= entries
            return
        await asyncio.sleep((entries - conn.tokens) / rate)
        conn.tokens, conn.refilled = 0.0, time.monotonic()

    async def _feed(self, conn: _Connection, data: bytes) -> bool:
        """Decode and hand off every complete frame; False when the connection must end."""
        unpacker = conn.unpacker
        try:
            unpacker.feed(data)
        except msgpack.BufferFull:
            return self._too_large(conn)
        conn.fed += len(data)
        while not self._closing:
            if self._admit is not None and (reason := self._admit()) is not None:
                raise _Refused(f"{reason}: closing without an ack")
            try:
                message = unpacker.unpack()
            except msgpack.OutOfData:
                return conn.fed - conn.frame_end <= self.max_frame_bytes or self._too_large(conn)
            except ForwardProtocolError as exc:  # from the EventTime ext hook
                log.warning("forward_protocol_error peer=%s: %s", conn.peer, exc)
                return False
            except ValueError as exc:
                if "max_array_len" not in str(exc):
                    log.warning(
                        "forward_protocol_error peer=%s: not valid msgpack (%r)", conn.peer, exc
                    )
                    return False
                raise _Refused(
                    f"an array of more than {self.max_frame_entries} items (entries per"
                    " frame: METRONOME_FORWARD_MAX_FRAME_ENTRIES)"
                ) from None
            except Exception as exc:  # noqa: BLE001 - undecodable bytes: a protocol error
                log.warning(
                    "forward_protocol_error peer=%s: not valid msgpack (%r)", conn.peer, exc
                )
                return False
            frame_start, conn.frame_end = conn.frame_end, unpacker.tell()
            if conn.frame_end - frame_start > self.max_frame_bytes:
                return self._too_large(conn)
            try:
                tag, entries, option = decode_entries(
                    message,
                    max_decompressed_bytes=self.max_frame_bytes,
                    max_entries=self.max_frame_entries,
                )
            except ForwardProtocolError as exc:
                log.warning("forward_protocol_error peer=%s: %s", conn.peer, exc)
                return False
            del message  # the decoded entries are what is kept
            chunk = option.get("chunk") if option else None
            if entries:
                await self._pace(conn, len(entries))
                try:
                    await self._handler(tag, entries, _chunk_text(chunk), conn.site)
                except SpoolFull as exc:  # filled up since admit() looked: a reason, no bug
                    raise _Refused(f"{exc.message}: closing without an ack") from None
                except Exception:
                    log.exception(
                        "forward_handler_failed peer=%s tag=%s entries=%d: not "
                        "acknowledged, closing the connection",
                        conn.peer,
                        tag,
                        len(entries),
                    )
                    return False
            if chunk is not None:
                conn.writer.write(msgpack.packb({"ack": chunk}))
                await conn.writer.drain()
        return False

    def _too_large(self, conn: _Connection) -> bool:
        log.warning(
            "forward_protocol_error peer=%s: frame larger than %d bytes",
            conn.peer,
            self.max_frame_bytes,
        )
        return False
