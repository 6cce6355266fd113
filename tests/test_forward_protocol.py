"""The Fluentd forward input: frames built from the Forward Protocol Specification v1 and
frames sent by the real fluent-logger client, against a real ForwardServer on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import logging
import queue
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fluent import asyncsender, sender

from metronome.errors import SpoolFull
from metronome.pipeline.forward_server import (
    ACCESS_TAG,
    TICK_TAG,
    ForwardAuth,
    ForwardProtocolError,
    ForwardServer,
    decode_entries,
)
from metronome.pipeline.spool import SpoolWriter
from tests.support.forward_client import ping_for

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
T0_MS = T0 * 1000
WAIT_S = 5.0

Entries = list[tuple[int, dict[str, Any]]]


# -- helpers ---------------------------------------------------------------------------


def event_time(seconds: int, nanoseconds: int) -> msgpack.ExtType:
    """Fluentd's EventTime, by the spec: ext type 0, uint32 seconds + uint32 nanoseconds."""
    return msgpack.ExtType(0, struct.pack(">II", seconds, nanoseconds))


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)  # str as msgpack str, bytes as msgpack bin


def ack(chunk: str) -> bytes:
    return msgpack.packb({"ack": chunk})


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(bounded())


class Collector:
    """A handler that records frames; it raises for its first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.frames: list[tuple[str, Entries]] = []
        self.sites: list[str | None] = []  # the site each call's connection sends for
        self.failures = failures
        self.calls = 0

    async def __call__(
        self, tag: str, entries: Entries, chunk: str | None, site: str | None = None
    ) -> None:
        self.calls += 1
        self.sites.append(site)
        if self.calls <= self.failures:
            raise RuntimeError("store is down")
        self.frames.append((tag, entries))

    async def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames arrived"
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def serving(handler: Any, **options: Any) -> AsyncIterator[ForwardServer]:
    server = ForwardServer("127.0.0.1", 0, handler, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class Peer:
    """A raw TCP client of the forward port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def expect(self, answer: bytes) -> None:
        got = await asyncio.wait_for(self.reader.readexactly(len(answer)), WAIT_S)
        assert got == answer

    async def expect_closed_without_answer(self) -> None:
        """The server closed the connection and sent nothing (no ack)."""
        received = b""
        with contextlib.suppress(ConnectionError):  # reset, or a write after the close
            while chunk := await asyncio.wait_for(self.reader.read(4096), WAIT_S):
                received += chunk
        assert received == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def peer(port: int) -> AsyncIterator[Peer]:
    client = await Peer.connect(port)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def forward_log() -> Iterator[list[logging.LogRecord]]:
    """Records logged by the forward server (whatever the process's logging setup)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("metronome.forward")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


# -- the four modes, acknowledged --------------------------------------------------------


def test_message_mode_with_integer_time_is_decoded_and_acknowledged() -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(
                pack([TICK_TAG, T0, {"id": "parks", "event": "view"}, {"chunk": "chunk-message"}])
            )
            await client.expect(ack("chunk-message"))
        assert collector.frames == [(TICK_TAG, [(T0_MS, {"id": "parks", "event": "view"})])]

    run(scenario())


def test_message_mode_with_event_time_keeps_milliseconds() -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(
                pack(
                    [
                        TICK_TAG,
                        event_time(T0, 123_456_789),
                        {"id": "parks"},
                        {"chunk": "chunk-event-time"},
                    ]
                )
            )
            await client.expect(ack("chunk-event-time"))
        assert collector.frames == [(TICK_TAG, [(T0_MS + 123, {"id": "parks"})])]

    run(scenario())


def test_forward_mode_entries_are_decoded_and_acknowledged() -> None:
    async def scenario() -> None:
        collector = Collector()
        entries = [[T0, {"id": "a"}], [event_time(T0 + 1, 500_000_000), {"id": "b"}]]
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(pack([TICK_TAG, entries, {"chunk": "chunk-forward", "size": 2}]))
            await client.expect(ack("chunk-forward"))
        assert collector.frames == [(TICK_TAG, [(T0_MS, {"id": "a"}), (T0_MS + 1500, {"id": "b"})])]

    run(scenario())


def test_packed_forward_entries_are_decoded_and_acknowledged() -> None:
    async def scenario() -> None:
        collector = Collector()
        payload = pack([T0, {"message": "GET /a HTTP/1.1"}]) + pack(
            [event_time(T0, 7_000_000), {"message": "GET /b HTTP/1.1"}]
        )
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(pack([ACCESS_TAG, payload, {"chunk": "chunk-packed", "size": 2}]))
            await client.expect(ack("chunk-packed"))
        assert collector.frames == [
            (
                ACCESS_TAG,
                [
                    (T0_MS, {"message": "GET /a HTTP/1.1"}),
                    (T0_MS + 7, {"message": "GET /b HTTP/1.1"}),
                ],
            )
        ]

    run(scenario())


def test_packed_forward_sent_as_msgpack_str_by_older_clients_is_decoded() -> None:
    async def scenario() -> None:
        collector = Collector()
        payload = pack([event_time(T0, 0), {"id": "a"}]) + pack([T0 + 2, {"id": "b"}])
        # use_bin_type=False: the payload (not valid UTF-8) travels as a msgpack str
        frame = msgpack.packb([TICK_TAG, payload, {"chunk": "chunk-str"}], use_bin_type=False)
        assert frame[len(TICK_TAG) + 2] in (0xDA, 0xDB) or frame[len(TICK_TAG) + 2] >> 5 == 5
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(frame)
            await client.expect(ack("chunk-str"))
        assert collector.frames == [(TICK_TAG, [(T0_MS, {"id": "a"}), (T0_MS + 2000, {"id": "b"})])]

    run(scenario())


def test_compressed_packed_forward_entries_are_decoded_and_acknowledged() -> None:
    async def scenario() -> None:
        collector = Collector()
        # Fluentd appends one gzip member per write to a chunk: send two members
        payload = gzip.compress(pack([T0, {"id": "a", "format": "csv"}])) + gzip.compress(
            pack([event_time(T0, 999_999_999), {"id": "b"}])
        )
        option = {"chunk": "chunk-gzip", "size": 2, "compressed": "gzip"}
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(pack([TICK_TAG, payload, option]))
            await client.expect(ack("chunk-gzip"))
        assert collector.frames == [
            (TICK_TAG, [(T0_MS, {"id": "a", "format": "csv"}), (T0_MS + 999, {"id": "b"})])
        ]

    run(scenario())


def test_ack_answer_is_exactly_a_msgpack_map_of_ack_to_the_chunk() -> None:
    async def scenario() -> None:
        async with serving(Collector()) as server, peer(server.port) as client:
            await client.send(pack([TICK_TAG, T0, {"id": "a"}, {"chunk": "Y2h1bmstaWQ="}]))
            # fixmap of 1, fixstr "ack", fixstr of 12: the chunk id echoed unchanged
            await client.expect(b"\x81\xa3ack\xacY2h1bmstaWQ=")

    run(scenario())


def test_frame_without_chunk_is_handled_and_gets_no_answer() -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(pack([TICK_TAG, T0, {"id": "a"}]))
            await client.send(pack([TICK_TAG, [[T0, {"id": "b"}]], {"size": 1}]))
            await collector.wait_for(2)
            await client.send(pack([TICK_TAG, T0, {"id": "c"}, {"chunk": "later"}]))
            # the first bytes back are this ack: no answer came for the frames before it,
            # and the connection stayed open
            await client.expect(ack("later"))
        assert [e[0][1]["id"] for _, e in collector.frames] == ["a", "b", "c"]

    run(scenario())


def test_frame_with_no_entries_is_acknowledged_without_calling_the_handler() -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(pack([TICK_TAG, [], {"chunk": "empty-forward"}]))
            await client.expect(ack("empty-forward"))
            await client.send(pack([TICK_TAG, b"", {"chunk": "empty-packed"}]))
            await client.expect(ack("empty-packed"))
        assert collector.calls == 0

    run(scenario())


# -- framing on the wire -----------------------------------------------------------------


def test_frame_split_across_many_small_writes_is_reassembled() -> None:
    async def scenario() -> None:
        collector = Collector()
        frame = pack(
            [
                TICK_TAG,
                [[event_time(T0, 0), {"id": f"item-{i}", "n": i}] for i in range(5)],
                {"chunk": "split"},
            ]
        )
        async with serving(collector) as server, peer(server.port) as client:
            for offset in range(len(frame) - 1):
                await client.send(frame[offset : offset + 1])
                await asyncio.sleep(0.001)
            await client.send(frame[-1:])
            await client.expect(ack("split"))
        # the ack follows the hand-off of the whole frame: one sent before it was whole
        # would be a call of its own
        assert collector.calls == 1
        assert collector.frames == [
            (TICK_TAG, [(T0_MS, {"id": f"item-{i}", "n": i}) for i in range(5)])
        ]

    run(scenario())


def test_several_frames_in_one_write_are_each_handled_and_acknowledged_in_order() -> None:
    async def scenario() -> None:
        collector = Collector()
        frames = (
            pack([TICK_TAG, T0, {"id": "one"}, {"chunk": "c1"}])
            + pack([ACCESS_TAG, [[T0, {"message": "two"}]], {"chunk": "c2"}])
            + pack([TICK_TAG, pack([T0, {"id": "three"}]), {"chunk": "c3"}])
            + pack([TICK_TAG, T0, {"id": "four"}])
        )  # no chunk: handled, no answer
        async with serving(collector) as server, peer(server.port) as client:
            await client.send(frames)
            await client.expect(ack("c1") + ack("c2") + ack("c3"))
            await collector.wait_for(4)
        assert [(tag, entries[0][1]) for tag, entries in collector.frames] == [
            (TICK_TAG, {"id": "one"}),
            (ACCESS_TAG, {"message": "two"}),
            (TICK_TAG, {"id": "three"}),
            (TICK_TAG, {"id": "four"}),
        ]

    run(scenario())


MALFORMED = {
    "not msgpack": b"\xc1",
    "not an array": pack({"tag": TICK_TAG, "time": T0}),
    "array too short": pack([TICK_TAG]),
    "tag not a string": pack([42, T0, {"id": "a"}]),
    "record not a map": pack([TICK_TAG, T0, "GET / HTTP/1.1"]),
    "time not a number": pack([TICK_TAG, {"when": "now"}, {"id": "a"}]),
    "event time not 8 bytes": pack([TICK_TAG, msgpack.ExtType(0, b"\0" * 4), {"id": "a"}]),
    "forward entry not a pair": pack([TICK_TAG, [[T0, {"id": "a"}, "extra"]]]),
    "option not a map": pack([TICK_TAG, T0, {"id": "a"}, "chunk-1"]),
    "packed entries truncated": pack([TICK_TAG, pack([T0, {"id": "a"}])[:-1]]),
    "packed entry record not a map": pack([TICK_TAG, pack([T0, [1, 2]])]),
    "bad gzip": pack([TICK_TAG, b"this is not gzip", {"compressed": "gzip"}]),
    "truncated gzip": pack(
        [TICK_TAG, gzip.compress(pack([T0, {"id": "a"}]))[:-6], {"compressed": "gzip"}]
    ),
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frame_closes_that_connection_but_the_server_keeps_serving(
    frame: bytes, forward_log: list[logging.LogRecord]
) -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector) as server:
            async with peer(server.port) as bystander, peer(server.port) as offender:
                await offender.send(
                    frame + pack([TICK_TAG, T0, {"id": "after"}, {"chunk": "never"}])
                )
                await offender.expect_closed_without_answer()
                await bystander.send(pack([TICK_TAG, T0, {"id": "ok"}, {"chunk": "c1"}]))
                await bystander.expect(ack("c1"))
            async with peer(server.port) as newcomer:
                await newcomer.send(pack([TICK_TAG, T0, {"id": "new"}, {"chunk": "c2"}]))
                await newcomer.expect(ack("c2"))
        assert [entries[0][1]["id"] for _, entries in collector.frames] == ["ok", "new"]
        assert any("forward_protocol_error" in m for m in _warnings(forward_log))

    run(scenario())


@pytest.mark.parametrize("shape", ["one large record", "many small entries in small writes"])
def test_frame_larger_than_max_frame_bytes_closes_the_connection(
    shape: str, forward_log: list[logging.LogRecord]
) -> None:
    async def scenario() -> None:
        collector = Collector()
        if shape == "one large record":
            frame = pack([TICK_TAG, T0, {"id": "a", "blob": "x" * 5000}, {"chunk": "big"}])
        else:
            frame = pack([TICK_TAG, [[T0, {"n": i}] for i in range(2000)], {"chunk": "big"}])
        async with serving(collector, max_frame_bytes=1024) as server:
            async with peer(server.port) as client:
                await client.send(pack([TICK_TAG, T0, {"id": "small"}, {"chunk": "small"}]))
                await client.expect(ack("small"))
                pieces = (
                    [frame]
                    if shape == "one large record"
                    else [frame[i : i + 200] for i in range(0, len(frame), 200)]
                )
                with contextlib.suppress(ConnectionError):
                    for piece in pieces:
                        await client.send(piece)
                        await asyncio.sleep(0.001)
                await client.expect_closed_without_answer()
            async with peer(server.port) as client:
                await client.send(pack([TICK_TAG, T0, {"id": "again"}, {"chunk": "again"}]))
                await client.expect(ack("again"))
        assert [entries[0][1]["id"] for _, entries in collector.frames] == ["small", "again"]
        assert any("larger than 1024 bytes" in m for m in _warnings(forward_log))

    run(scenario())


def test_compressed_payload_bigger_than_max_frame_bytes_once_inflated_is_refused() -> None:
    async def scenario() -> None:
        collector = Collector()
        payload = gzip.compress(pack([T0, {"blob": "z" * 100_000}]))
        assert len(payload) < 1024
        async with serving(collector, max_frame_bytes=4096) as server:
            async with peer(server.port) as client:
                await client.send(
                    pack([TICK_TAG, payload, {"compressed": "gzip", "chunk": "bomb"}])
                )
                await client.expect_closed_without_answer()
        assert collector.calls == 0

    run(scenario())


# -- failures and lifecycle --------------------------------------------------------------


def test_handler_failure_sends_no_ack_and_the_client_retry_is_acknowledged(
    forward_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        collector = Collector(failures=1)
        frame = pack([TICK_TAG, [[T0, {"id": "a"}]], {"chunk": "retry-me"}])
        async with serving(collector) as server:
            async with peer(server.port) as client:
                await client.send(frame)
                await client.expect_closed_without_answer()
            async with peer(server.port) as client:  # what Fluentd does: send the chunk again
                await client.send(frame)
                await client.expect(ack("retry-me"))
        assert collector.calls == 2
        assert collector.frames == [(TICK_TAG, [(T0_MS, {"id": "a"})])]
        failed = [r for r in forward_log if "forward_handler_failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.ERROR
        assert failed[0].exc_info is not None and "store is down" in str(failed[0].exc_info[1])

    run(scenario())


def test_tcp_heartbeat_connection_without_data_is_harmless(
    forward_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector) as server:
            for _ in range(3):  # Fluentd's heartbeat_type tcp: connect, then close
                async with peer(server.port):
                    pass
            async with peer(server.port) as client:
                await client.send(pack([TICK_TAG, T0, {"id": "a"}, {"chunk": "c"}]))
                await client.expect(ack("c"))
        assert collector.calls == 1
        assert _warnings(forward_log) == []

    run(scenario())


def test_client_closing_mid_frame_hands_off_nothing(forward_log: list[logging.LogRecord]) -> None:
    async def scenario() -> None:
        collector = Collector()
        frame = pack([TICK_TAG, T0, {"id": "a"}, {"chunk": "c"}])
        async with serving(collector) as server:
            async with peer(server.port) as client:
                await client.send(frame[:-3])
            deadline = time.monotonic() + WAIT_S
            while not any("forward_truncated_frame" in m for m in _warnings(forward_log)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        assert collector.calls == 0

    run(scenario())


def test_port_zero_binds_a_free_port_reported_by_the_port_property() -> None:
    async def scenario() -> None:
        first = ForwardServer("127.0.0.1", 0, Collector())
        with pytest.raises(RuntimeError):
            _ = first.port
        async with serving(Collector()) as one, serving(Collector()) as two:
            assert one.port > 0 and two.port > 0 and one.port != two.port

    run(scenario())


def test_close_ends_idle_connections_and_stops_listening() -> None:
    async def scenario() -> None:
        server = ForwardServer("127.0.0.1", 0, Collector())
        await server.start()
        port = server.port
        async with peer(port) as client:
            await server.close()
            await client.expect_closed_without_answer()
        with pytest.raises(OSError):
            await Peer.connect(port)
        await server.close()  # closing twice is harmless

    run(scenario())


def test_close_lets_a_running_handler_finish_and_acknowledge() -> None:
    async def scenario() -> None:
        started, release = asyncio.Event(), asyncio.Event()
        handed_off: list[Entries] = []

        async def slow_handler(
            tag: str, entries: Entries, chunk: str | None, site: str | None
        ) -> None:
            started.set()
            await release.wait()
            handed_off.append(entries)

        server = ForwardServer("127.0.0.1", 0, slow_handler)
        await server.start()
        async with peer(server.port) as client:
            await client.send(pack([TICK_TAG, T0, {"id": "a"}, {"chunk": "in-flight"}]))
            await asyncio.wait_for(started.wait(), WAIT_S)
            port = server.port
            closing = asyncio.create_task(server.close())
            while True:  # close stops listening first, then waits for the running handler
                try:
                    await (await Peer.connect(port)).close()
                except OSError:
                    break
            assert not closing.done()
            release.set()
            await client.expect(ack("in-flight"))
            await client.expect_closed_without_answer()
            await asyncio.wait_for(closing, WAIT_S)
        assert handed_off == [[(T0_MS, {"id": "a"})]]

    run(scenario())


# -- decode_entries on its own -----------------------------------------------------------


def _unpacked(frame: Any) -> Any:
    """A frame as msgpack hands it over (lists, str, bytes, ExtType)."""
    return msgpack.unpackb(pack(frame), raw=False, strict_map_key=False)


@pytest.mark.parametrize(
    "frame, expected",
    [
        pytest.param(
            [TICK_TAG, T0, {"id": "a"}], (TICK_TAG, [(T0_MS, {"id": "a"})], None), id="message"
        ),
        pytest.param(
            [TICK_TAG, event_time(T0, 1_000_000), {"id": "a"}, {"chunk": "x"}],
            (TICK_TAG, [(T0_MS + 1, {"id": "a"})], {"chunk": "x"}),
            id="message+option",
        ),
        pytest.param(
            [ACCESS_TAG, [[T0, {"message": "l1"}], [T0 + 1, {"message": "l2"}]]],
            (ACCESS_TAG, [(T0_MS, {"message": "l1"}), (T0_MS + 1000, {"message": "l2"})], None),
            id="forward",
        ),
        pytest.param(
            [TICK_TAG, pack([T0, {"id": "a"}]) + pack([T0, {"id": "b"}]), {"size": 2}],
            (TICK_TAG, [(T0_MS, {"id": "a"}), (T0_MS, {"id": "b"})], {"size": 2}),
            id="packed-forward",
        ),
        pytest.param(
            [TICK_TAG, gzip.compress(pack([T0, {"id": "a"}])), {"compressed": "gzip"}],
            (TICK_TAG, [(T0_MS, {"id": "a"})], {"compressed": "gzip"}),
            id="compressed-packed-forward",
        ),
        pytest.param(
            [TICK_TAG, pack([T0, {"id": "a"}]), {"compressed": "text"}],
            (TICK_TAG, [(T0_MS, {"id": "a"})], {"compressed": "text"}),
            id="packed-forward-compressed-text",
        ),
    ],
)
def test_decode_entries_returns_tag_entries_in_milliseconds_and_option(
    frame: list[Any], expected: tuple[Any, ...]
) -> None:
    assert decode_entries(_unpacked(frame)) == expected


def test_zero_or_nil_time_means_now_as_in_fluentd() -> None:
    now_ms = T0_MS + 42
    frame = [TICK_TAG, [[0, {"id": "a"}], [None, {"id": "b"}], [event_time(0, 0), {"id": "c"}]]]
    _, entries, _ = decode_entries(_unpacked(frame), now_ms=now_ms)
    assert [t for t, _ in entries] == [now_ms] * 3
    before = time.time_ns() // 1_000_000
    _, [(t, _)], _ = decode_entries(_unpacked([TICK_TAG, 0, {"id": "a"}]))
    assert before <= t <= time.time_ns() // 1_000_000


def test_float_time_is_taken_as_seconds() -> None:
    _, entries, _ = decode_entries(_unpacked([TICK_TAG, T0 + 0.25, {"id": "a"}]))
    assert entries == [(T0_MS + 250, {"id": "a"})]


def test_bin_and_non_utf8_text_in_records_become_str() -> None:
    raw = msgpack.packb([TICK_TAG, T0, {"id": b"parks", "nested": {"k": [b"v"]}}])
    _, entries, _ = decode_entries(msgpack.unpackb(raw, raw=False))
    assert entries == [(T0_MS, {"id": "parks", "nested": {"k": ["v"]}})]
    # a str whose bytes are not UTF-8, inside a PackedForward payload
    bad_str = b"\xa3" + b"a\xffb"  # fixstr of 3 bytes, the middle one invalid
    payload = b"\x92" + msgpack.packb(T0) + b"\x81\xa2id" + bad_str  # [T0, {"id": bad}]
    _, entries, _ = decode_entries([TICK_TAG, payload])
    assert entries == [(T0_MS, {"id": "a\ufffdb"})]


@pytest.mark.parametrize(
    "message, error",
    [
        (b"bytes", "must be a msgpack array"),
        ([TICK_TAG], "2 to 4 items"),
        ([TICK_TAG, T0, {}, {}, {}], "2 to 4 items"),
        (["", T0, {"id": "a"}], "tag must not be empty"),
        ([None, T0, {"id": "a"}], "tag must be a string, got nil"),
        ([TICK_TAG, T0], r"got \[tag, int\]"),
        ([TICK_TAG, True, {"id": "a"}], "time must be seconds or EventTime, got bool"),
        ([TICK_TAG, -5, {"id": "a"}], "non-negative"),
        ([TICK_TAG, msgpack.ExtType(1, b"\0" * 8), {"id": "a"}], "ext type 1"),
        ([TICK_TAG, event_time(T0, 1_000_000_000), {"id": "a"}], "nanoseconds"),
        ([TICK_TAG, T0, ["not", "a", "map"]], "record must be a map, got array"),
        ([TICK_TAG, T0, {1: "int key"}], "record keys must be strings"),
        ([TICK_TAG, T0, {"id": "a"}, ["opt"]], "option must be a map"),
        ([TICK_TAG, T0, {"id": "a"}, {"chunk": 7}], "'chunk' must be a string"),
        ([TICK_TAG, T0, {"id": "a"}, {"chunk": "\udcff"}], "'chunk' is not UTF-8"),
        ([b"\xfftag", T0, {"id": "a"}], "tag is not UTF-8"),
        ([TICK_TAG, [[T0, {"id": "a"}]], {}, {}], "Forward mode is"),
        ([TICK_TAG, [{"id": "a"}]], r"Forward entry 0: entry must be \[time, record\], got map"),
        ([TICK_TAG, [[T0, None]]], "Forward entry 0: record must be a map, got nil"),
        ([TICK_TAG, b"\x92\xce"], "incomplete msgpack object"),
        ([TICK_TAG, b"\xc1"], "not valid msgpack"),
        ([TICK_TAG, pack([T0, "line"])], "PackedForward entry 0: record must be a map"),
        ([TICK_TAG, b"junk", {"compressed": "gzip"}], "bad gzip"),
        ([TICK_TAG, gzip.compress(pack([T0, {}]))[:-4], {"compressed": "gzip"}], "truncated"),
        ([TICK_TAG, pack([T0, {}]), {"compressed": "zstd"}], "'gzip' or 'text'"),
    ],
)
def test_decode_entries_rejects_malformed_frames_with_a_clear_message(
    message: Any, error: str
) -> None:
    with pytest.raises(ForwardProtocolError, match=error):
        decode_entries(message)


def test_decode_entries_bounds_the_inflated_size() -> None:
    frame = [TICK_TAG, gzip.compress(pack([T0, {"blob": "z" * 10_000}])), {"compressed": "gzip"}]
    with pytest.raises(ForwardProtocolError, match="more than 1000 bytes once decompressed"):
        decode_entries(frame, max_decompressed_bytes=1000)
    assert len(decode_entries(frame, max_decompressed_bytes=20_000)[1]) == 1


def test_deeply_nested_record_is_refused_rather_than_crashing() -> None:
    record: dict[str, Any] = {}
    inner = record
    for _ in range(500):
        inner["n"] = {}
        inner = inner["n"]
    with pytest.raises(ForwardProtocolError, match="nested deeper"):
        decode_entries([TICK_TAG, T0, record])


# -- the real fluent-logger client -------------------------------------------------------


class ThreadedForwardServer:
    """A ForwardServer on its own event loop in a background thread (fluent-logger is
    synchronous); frames arrive in a thread-safe queue."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, Entries]] = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

        async def handler(tag: str, entries: Entries, chunk: str | None, site: str | None) -> None:
            self.received.put((tag, entries))

        self.server = ForwardServer("127.0.0.1", 0, handler)

    def __enter__(self) -> ThreadedForwardServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(WAIT_S)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(WAIT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT_S)
            self._loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    def next_frame(self) -> tuple[str, Entries]:
        return self.received.get(timeout=WAIT_S)


@pytest.fixture
def threaded_server() -> Iterator[ThreadedForwardServer]:
    with ThreadedForwardServer() as server:
        yield server


def test_fluent_logger_emit_arrives_with_prefixed_tag_time_and_record(
    threaded_server: ThreadedForwardServer,
) -> None:
    client = sender.FluentSender("metronome", host="127.0.0.1", port=threaded_server.port)
    tick = {"id": "parks-dataset", "event": "download", "format": "csv", "plan": "pro"}
    try:
        before_s = int(time.time())
        assert client.emit("tick", tick), client.last_error
        after_s = int(time.time())
    finally:
        client.close()
    tag, [(time_ms, record)] = threaded_server.next_frame()
    assert tag == TICK_TAG == "metronome.tick"
    assert before_s * 1000 <= time_ms <= after_s * 1000 and time_ms % 1000 == 0
    assert record == tick


def test_fluent_logger_emit_with_time_keeps_the_given_time(
    threaded_server: ThreadedForwardServer,
) -> None:
    client = sender.FluentSender("metronome", host="127.0.0.1", port=threaded_server.port)
    try:
        assert client.emit_with_time("access", T0, {"message": "GET /parks HTTP/1.1"})
        assert client.emit_with_time("tick", T0 + 60, {"id": "parks"})
    finally:
        client.close()
    assert threaded_server.next_frame() == (
        ACCESS_TAG,
        [(T0_MS, {"message": "GET /parks HTTP/1.1"})],
    )
    assert threaded_server.next_frame() == (TICK_TAG, [(T0_MS + 60_000, {"id": "parks"})])


def test_fluent_logger_nanosecond_precision_sends_event_time_kept_to_the_millisecond(
    threaded_server: ThreadedForwardServer,
) -> None:
    client = sender.FluentSender(
        "metronome", host="127.0.0.1", port=threaded_server.port, nanosecond_precision=True
    )
    try:
        assert client.emit_with_time("tick", T0 + 0.375, {"id": "parks"})
        before_ms = time.time_ns() // 1_000_000
        assert client.emit("tick", {"id": "now"})
        after_ms = time.time_ns() // 1_000_000
    finally:
        client.close()
    assert threaded_server.next_frame() == (TICK_TAG, [(T0_MS + 375, {"id": "parks"})])
    tag, [(time_ms, record)] = threaded_server.next_frame()
    assert (tag, record) == (TICK_TAG, {"id": "now"})
    assert before_ms - 1 <= time_ms <= after_ms


def test_fluent_logger_async_sender_delivers_every_record_in_order(
    threaded_server: ThreadedForwardServer,
) -> None:
    client = asyncsender.FluentSender("metronome", host="127.0.0.1", port=threaded_server.port)
    try:
        for n in range(50):
            assert client.emit_with_time("tick", T0 + n, {"id": f"item-{n}"})
    finally:
        client.close()  # flushes the queue
    frames = [threaded_server.next_frame() for _ in range(50)]
    assert frames == [(TICK_TAG, [(T0_MS + n * 1000, {"id": f"item-{n}"})]) for n in range(50)]


def test_metronome_fluent_client_ticks_arrive_as_metronome_tick(
    threaded_server: ThreadedForwardServer,
) -> None:
    from metronome.client import FluentClient

    client = FluentClient("127.0.0.1", threaded_server.port)
    try:
        assert client.tick("parks-dataset", "download", format="csv")
    finally:
        client.close()
    tag, [(_, record)] = threaded_server.next_frame()
    assert tag == TICK_TAG
    assert record["id"] == "parks-dataset" and record["event"] == "download"
    assert record["format"] == "csv" and isinstance(record["ts"], int)


# -- cost before work: entries, spool, connections, credentials ----------------------------


def _bomb(entries: int) -> bytes:
    """A CompressedPackedForward payload of ``entries`` tiny entries (8 bytes each)."""
    one = pack([0, {"id": "x"}])
    return gzip.compress(one * entries, compresslevel=9)


@pytest.mark.parametrize("mode", ["Forward", "PackedForward", "CompressedPackedForward"])
def test_a_frame_with_more_entries_than_the_limit_is_refused_without_an_ack(
    mode: str, forward_log: list[logging.LogRecord]
) -> None:
    async def scenario() -> None:
        collector = Collector()
        entries = [[T0, {"n": i}] for i in range(101)]
        packed = b"".join(pack(e) for e in entries)
        bodies = {
            "Forward": (entries, {}),
            "PackedForward": (packed, {}),
            "CompressedPackedForward": (gzip.compress(packed), {"compressed": "gzip"}),
        }
        body, option = bodies[mode]
        async with serving(collector, max_frame_entries=100) as server:
            async with peer(server.port) as client:
                fits = [entries[:100], {"chunk": "fits"}]
                await client.send(pack([TICK_TAG, *fits]))
                await client.expect(ack("fits"))
                await client.send(pack([TICK_TAG, body, {**option, "chunk": "too-many"}]))
                await client.expect_closed_without_answer()
        assert [len(e) for _, e in collector.frames] == [100]
        assert any("more than 100" in m for m in _warnings(forward_log)), forward_log

    run(scenario())


def test_a_compressed_bomb_is_abandoned_at_the_entry_limit_without_inflating_it_all() -> None:
    payload = _bomb(2_000_000)  # 16 MB of entries once inflated, under the default frame size
    assert len(payload) < 24_000
    tracemalloc.start()
    try:
        with pytest.raises(ForwardProtocolError, match="more than 10000 entries"):
            decode_entries(
                [TICK_TAG, payload, {"compressed": "gzip"}],
                max_decompressed_bytes=16 << 20,
                max_entries=10_000,
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # less than the inflated payload alone: it was never inflated whole (nor decoded)
    assert peak < 8 << 20, peak


def test_frames_are_refused_unacknowledged_while_the_spool_is_over_its_limit(
    tmp_path: Path, forward_log: list[logging.LogRecord]
) -> None:
    async def scenario() -> None:
        writer = SpoolWriter(tmp_path / "spool", segment_max_bytes=1 << 20, max_total_bytes=4096)
        collector = Collector()

        async def spooling(tag: str, entries: Entries, chunk: str | None, site: str | None) -> None:
            await collector(tag, entries, chunk, site)
            await writer.append([b"x" * 3000])

        def admit() -> str | None:
            return None if writer.has_room() else "the spool is full"

        async with serving(spooling, admit=admit) as server:
            async with peer(server.port) as client:
                for chunk in ("one", "two"):  # under the limit before each: both spooled
                    await client.send(pack([TICK_TAG, [[T0, {"id": chunk}]], {"chunk": chunk}]))
                    await client.expect(ack(chunk))
            await asyncio.sleep(0.3)  # the writer re-reads the spool's size at most every 0.25 s
            async with peer(server.port) as client:
                await client.send(pack([TICK_TAG, [[T0, {"id": "three"}]], {"chunk": "three"}]))
                await client.expect_closed_without_answer()
        writer.close()
        assert collector.calls == 2
        assert any(
            "forward_refused" in m and "the spool is full: closing without an ack" in m
            for m in _warnings(forward_log)
        )

    run(scenario())


def test_connections_past_the_limit_are_closed_and_the_open_ones_keep_working(
    forward_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        collector = Collector()
        async with serving(collector, max_connections=2) as server:
            async with peer(server.port) as first, peer(server.port) as second:
                await asyncio.sleep(0.05)
                async with peer(server.port) as third:
                    await third.expect_closed_without_answer()
                await second.send(pack([TICK_TAG, T0, {"id": "b"}, {"chunk": "b"}]))
                await second.expect(ack("b"))
                await first.send(pack([TICK_TAG, T0, {"id": "a"}, {"chunk": "a"}]))
                await first.expect(ack("a"))
        assert any("2 connections are open" in m for m in _warnings(forward_log))

    run(scenario())


def test_a_connection_faster_than_its_entries_per_second_is_made_to_wait() -> None:
    async def scenario() -> None:
        collector = Collector()
        frame = [[T0, {"n": i}] for i in range(500)]
        async with serving(
            collector, max_frame_entries=500, connection_entries_per_s=1000
        ) as server:
            async with peer(server.port) as client:
                started = time.monotonic()
                # 2 000 entries: a burst of one second's worth (1 000), then 1 000 a second
                for n in range(4):
                    await client.send(pack([TICK_TAG, frame, {"chunk": f"c{n}"}]))
                    await client.expect(ack(f"c{n}"))
                elapsed = time.monotonic() - started
        assert elapsed >= 0.9, elapsed
        assert len(collector.frames) == 4

    run(scenario())


async def _handshake(
    client: Peer, shared_key: str, user: str = "", password: str = ""
) -> list[Any]:
    """Answer the server's HELO with a PING for ``shared_key`` (and ``user``); return
    its PONG."""
    unpacker = msgpack.Unpacker(raw=False)

    async def receive() -> Any:
        while True:
            for message in unpacker:
                return message
            data = await asyncio.wait_for(client.reader.read(4096), WAIT_S)
            assert data, "closed during the handshake"
            unpacker.feed(data)

    ping, nonce = ping_for(await receive(), shared_key, "test-client", user, password)
    await client.send(pack(ping))
    pong = await receive()
    assert isinstance(pong, list) and pong[0] == "PONG"
    if pong[1]:
        digest = hashlib.sha512(
            ping[2].encode() + pong[3].encode() + nonce + shared_key.encode()
        ).hexdigest()
        assert pong[4] == digest  # the server proves it knows the key too
    return pong


def test_the_shared_key_handshake_admits_the_right_keys_and_names_their_sites(
    forward_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        collector = Collector()
        auth = ForwardAuth({"all-sites-key": None, "shop-key": "shop"})
        async with serving(collector, auth=auth) as server:
            for key, chunk in (("all-sites-key", "k1"), ("shop-key", "k2")):
                async with peer(server.port) as client:
                    pong = await _handshake(client, key)
                    assert pong[1] is True and pong[3] != "test-client"
                    await client.send(pack([TICK_TAG, T0, {"id": "a"}, {"chunk": chunk}]))
                    await client.expect(ack(chunk))
            async with peer(server.port) as client:
                pong = await _handshake(client, "guessed")
                assert pong[1] is False and "shared key" in pong[2]
                await client.expect_closed_without_answer()
            async with peer(server.port) as client:  # no handshake: a frame at once
                helo = msgpack.unpackb(await client.reader.read(4096), raw=False)
                assert helo[0] == "HELO" and len(helo[1]["nonce"]) == 16
                await client.send(pack([TICK_TAG, T0, {"id": "b"}, {"chunk": "b"}]))
                await client.expect_closed_without_answer()
        assert collector.sites == [None, "shop"]
        warnings = _warnings(forward_log)
        assert any("wrong shared key from 'test-client'" in m for m in warnings), warnings
        assert any("expected [PING" in m for m in warnings), warnings
        assert not any("guessed" in m for m in warnings)

    run(scenario())


def test_users_are_asked_for_when_configured_and_a_users_site_decides(
    forward_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        collector = Collector()
        auth = ForwardAuth(
            {"all-sites-key": None, "blog-key": "blog"},
            users={"shop-fluentd": ("s3cret", "shop"), "ops": ("0ps", None)},
        )
        async with serving(collector, auth=auth) as server:
            for key, user, password, chunk in (
                ("all-sites-key", "shop-fluentd", "s3cret", "u1"),
                ("all-sites-key", "ops", "0ps", "u2"),
                ("blog-key", "ops", "0ps", "u3"),
            ):
                async with peer(server.port) as client:
                    assert (await _handshake(client, key, user, password))[1] is True
                    await client.send(pack([TICK_TAG, T0, {"id": "a"}, {"chunk": chunk}]))
                    await client.expect(ack(chunk))
            for key, user, password in (
                ("all-sites-key", "shop-fluentd", "guessed"),
                ("all-sites-key", "nobody", "s3cret"),
                ("all-sites-key", "", ""),
                ("blog-key", "shop-fluentd", "s3cret"),  # the key's site is not the user's
            ):
                async with peer(server.port) as client:
                    pong = await _handshake(client, key, user, password)
                    assert pong[1] is False, (key, user)
                    await client.expect_closed_without_answer()
        assert collector.sites == ["shop", None, "blog"]
        warnings = _warnings(forward_log)
        assert sum("wrong user or password" in m for m in warnings) == 3, warnings
        assert not any("s3cret" in m or "guessed" in m for m in warnings)

    run(scenario())


def test_a_spool_that_fills_up_during_a_frame_refuses_it_with_a_reason_not_a_traceback(
    forward_log: list[logging.LogRecord],
) -> None:
    async def scenario() -> None:
        async def full(tag: str, entries: Entries, chunk: str | None, site: str | None) -> None:
            raise SpoolFull("the spool holds 5000 bytes, its limit")

        async with serving(full) as server:
            async with peer(server.port) as client:
                await client.send(pack([TICK_TAG, [[T0, {"id": "x"}]], {"chunk": "late"}]))
                await client.expect_closed_without_answer()
        refused = [r for r in forward_log if "forward_refused" in r.getMessage()]
        assert len(refused) == 1 and refused[0].exc_info is None
        assert "the spool holds 5000 bytes" in refused[0].getMessage()

    run(scenario())
