"""The spool's framing, group commit and the `metronome status` view of it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from metronome.errors import StoreUnavailable
from metronome.events.document import Document
from metronome.pipeline import spool
from metronome.pipeline.records import HEADER, encode, scan
from metronome.pipeline.spool import (
    SpoolWriter,
    backlog,
    segment_size,
    segments,
    spool_bytes,
)
from tests.support.metronome_server import MetronomeServer


def _doc(n: int) -> Document:
    return Document(
        f"{1700000000000 + n:012x}{'0' * 20}", 1700000000000 + n, "ticks", {"n": n, "text": "ünï"}
    )


def test_records_round_trip_and_stop_at_an_incomplete_tail() -> None:
    data = b"".join(encode(_doc(n)) for n in range(3))
    whole = scan(data)
    assert [d.source["n"] for d in whole.documents] == [0, 1, 2]
    assert whole.end == len(data) and not whole.damaged
    partial = scan(data[:-5])
    assert len(partial.documents) == 2 and not partial.damaged
    assert partial.end == len(encode(_doc(0))) + len(encode(_doc(1)))


def test_a_flipped_byte_is_detected_by_the_checksum() -> None:
    first, second = encode(_doc(0)), bytearray(encode(_doc(1)))
    second[HEADER.size + 3] ^= 0x01
    result = scan(first + bytes(second))
    assert len(result.documents) == 1 and result.damaged and result.end == len(first)


class _CountingWriter(SpoolWriter):
    writes = 0

    def _write(self, data: bytes) -> None:
        self.writes += 1
        super()._write(data)


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    writer = _CountingWriter(tmp_path, segment_max_bytes=1 << 20, max_total_bytes=1 << 30)

    async def burst() -> None:
        await asyncio.gather(*(writer.append([encode(_doc(n))]) for n in range(300)))

    asyncio.run(burst())
    writer.close()
    assert writer.writes < 30, f"{writer.writes} fsyncs for 300 appends"
    (segment,) = segments(tmp_path)
    assert len(scan(segment.read_bytes()).documents) == 300


def test_clients_answered_together_come_back_in_one_group(tmp_path: Path) -> None:
    """Under load the requests one sync answered send their next ones together: they are
    synced as one group, not as one sync for the first of them and another for the rest."""
    writer = _CountingWriter(tmp_path, segment_max_bytes=1 << 20, max_total_bytes=1 << 30)
    clients, rounds = 16, 20

    async def client(c: int) -> None:
        for r in range(rounds):
            await writer.append([encode(_doc(c * rounds + r))])

    async def load() -> None:
        await asyncio.gather(*(client(c) for c in range(clients)))

    asyncio.run(load())
    writer.close()
    assert writer.writes <= rounds + 1, f"{writer.writes} fsyncs for {rounds} rounds"
    (segment,) = segments(tmp_path)
    assert len(scan(segment.read_bytes()).documents) == clients * rounds


def test_status_shows_backlog_lag_and_store_health(tmp_path: Path) -> None:
    server = MetronomeServer({}, data_dir=tmp_path / "data", args=("--no-shipper",))
    server.start()
    try:
        resp = httpx.post(server.url + "/ticks", json=[{"id": "s", "n": n} for n in range(40)])
        assert resp.status_code == 202
        metrics = httpx.get(server.url + "/metrics").text
        assert 'metronome_events_accepted_total{route="/ticks"} 40.0' in metrics
        assert "metronome_request_duration_seconds_bucket" in metrics
        assert re.search(r"^metronome_spool_unshipped_bytes [1-9]", metrics, re.M)
        # POST /tick (the fast path) counts in each worker and publishes once a second
        for n in range(6):
            assert httpx.post(server.url + "/tick", json={"id": "s", "n": n}).status_code == 202
        deadline = time.monotonic() + 5
        while True:
            metrics = httpx.get(server.url + "/metrics").text
            if (
                'metronome_events_accepted_total{route="/tick"} 6.0' in metrics
                and 'duration_seconds_count{method="POST",route="/tick"} 6.0' in metrics
            ):
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
    finally:
        assert server.stop() == 0
    unshipped = backlog(tmp_path / "data" / "spool").bytes_unshipped
    result = server.run_cli("status")
    assert result.returncode == 0, result.stderr
    assert f"backlog:      {unshipped} bytes unshipped" in result.stdout
    assert re.search(r"lag:\s+\d+\.\ds", result.stdout)
    assert "store:        embedded" in result.stdout and ": ready" in result.stdout
    assert "dead letters: 0" in result.stdout


def test_an_active_segment_is_prepared_with_zeros_and_readers_see_only_its_records(
    tmp_path: Path,
) -> None:
    """The writer overwrites zeros it wrote ahead (a sync then commits no new file size);
    the backlog counts the records only, and a closed segment is its records again."""
    writer = SpoolWriter(tmp_path, segment_max_bytes=1 << 20, max_total_bytes=1 << 30)
    records = [encode(_doc(n)) for n in range(20)]
    asyncio.run(writer.append(records))
    (segment,) = segments(tmp_path)
    written = sum(len(r) for r in records)
    assert segment.stat().st_size == 1 << 20  # prepared up to the segment's size
    assert segment_size(segment) == written
    assert backlog(tmp_path, with_age=False).bytes_unshipped == written
    assert spool_bytes(tmp_path) == written  # the spool's limit counts records, not zeros
    writer.close()
    assert segment.stat().st_size == written
    assert len(scan(segment.read_bytes()).documents) == 20


_DIES_AFTER_SPOOLING = """
import asyncio, os, sys
from pathlib import Path
from metronome.events.document import Document
from metronome.pipeline.records import encode
from metronome.pipeline.spool import SpoolWriter

writer = SpoolWriter(Path(sys.argv[1]), segment_max_bytes=1 << 22, max_total_bytes=1 << 30)
docs = [Document(f"{1700000000000 + n:012x}{'0' * 20}", 1700000000000 + n, "ticks", {"n": n})
        for n in range(50)]
asyncio.run(writer.append([encode(d) for d in docs]))
os._exit(0)  # dies without closing: its segment keeps the zeros
"""


def test_a_writer_that_dies_leaves_zeros_the_shipper_neither_ships_nor_counts_as_torn(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    subprocess.run(
        [sys.executable, "-c", _DIES_AFTER_SPOOLING, str(spool)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    (segment,) = segments(spool)
    assert segment.stat().st_size == 1 << 22
    assert len(scan(segment.read_bytes()).documents) == 50
    assert backlog(spool, with_age=False).bytes_unshipped == segment_size(segment) > 0
    server = MetronomeServer({}, data_dir=data)  # not started: its settings for the CLI
    drained = server.run_cli("worker", "--drain")
    assert drained.returncode == 0, drained.stderr
    assert "shipped 50 events" in drained.stderr
    assert "0 torn bytes cut" in drained.stderr
    assert not segment.exists()


class _OverlapWriter(SpoolWriter):
    """Counts the most groups that were syncing at once."""

    most_in_flight = 0

    def _commit(self, loop: asyncio.AbstractEventLoop) -> None:
        super()._commit(loop)
        self.most_in_flight = max(self.most_in_flight, len(self._in_flight))


def test_groups_sync_concurrently_and_each_client_is_answered_once_synced(
    tmp_path: Path,
) -> None:
    """Requests that arrive while a sync runs start their own group and sync (up to the
    writer's limit) instead of waiting for the running one to end."""
    writer = _OverlapWriter(
        tmp_path, segment_max_bytes=1 << 22, max_total_bytes=1 << 30, syncs_in_flight=4
    )
    clients, rounds = 16, 20

    async def client(c: int) -> None:
        for r in range(rounds):
            await asyncio.sleep(0.0002 * ((c * 7 + r) % 5))  # arrive in different passes
            await writer.append([encode(_doc(c * rounds + r))])

    async def load() -> None:
        await asyncio.gather(*(client(c) for c in range(clients)))

    asyncio.run(load())
    writer.close()
    assert 1 < writer.most_in_flight <= 4
    (segment,) = segments(tmp_path)
    found = sorted(d.source["n"] for d in scan(segment.read_bytes()).documents)
    assert found == list(range(clients * rounds))


class _SlowSecondSync(SpoolWriter):
    """The second group's sync takes 0.3 s (after a real ``fdatasync``), and fails when
    ``fail`` is set: it syncs a pipe instead, which the kernel refuses (EINVAL)."""

    fail = False

    def __init__(self, directory: Path) -> None:
        super().__init__(
            directory, segment_max_bytes=1 << 22, max_total_bytes=1 << 30, syncs_in_flight=4
        )
        self.syncs = 0

    def _sync(self, loop: asyncio.AbstractEventLoop, group: Any) -> None:
        self.syncs += 1
        if self.syncs != 2:
            super()._sync(loop, group)
            return
        time.sleep(0.3)
        if not self.fail:
            super()._sync(loop, group)
            return
        read, write = os.pipe()
        try:
            group.error = spool._fdatasync(read)
        finally:
            os.close(read)
            os.close(write)
        assert group.error is not None
        group.synced = True
        loop.call_soon_threadsafe(self._synced, loop)


async def _first_second_third(writer: SpoolWriter) -> tuple[Any, Any]:
    """Group 1 answered; group 2 syncing (slowly) while group 3 is written and synced:
    group 3 is not answered before group 2. Returns groups 2 and 3, finished."""
    await writer.append([encode(_doc(1))])
    second = asyncio.ensure_future(writer.append([encode(_doc(2))]))
    await asyncio.sleep(0.05)
    third = asyncio.ensure_future(writer.append([encode(_doc(3))]))
    await asyncio.sleep(0.15)  # the third group's own sync has long ended
    assert writer.syncs == 3 and not second.done() and not third.done()  # type: ignore[attr-defined]
    await asyncio.wait([second, third])
    return second, third


def test_groups_are_answered_in_the_order_they_were_written(tmp_path: Path) -> None:
    writer = _SlowSecondSync(tmp_path)

    async def run() -> None:
        second, third = await _first_second_third(writer)
        assert second.result() is None and third.result() is None

    asyncio.run(run())
    writer.close()
    (segment,) = segments(tmp_path)
    assert [d.source["n"] for d in scan(segment.read_bytes()).documents] == [1, 2, 3]


def test_a_failed_sync_fails_every_group_written_after_it_and_keeps_those_before(
    tmp_path: Path,
) -> None:
    """Group 3 synced without an error, but was written after group 2, whose sync failed:
    neither is acknowledged, the segment is cut back to where group 2 began, and the
    writer goes on after it."""
    writer = _SlowSecondSync(tmp_path)
    writer.fail = True

    async def run() -> None:
        second, third = await _first_second_third(writer)
        for refused in (second, third):
            assert isinstance(refused.exception(), StoreUnavailable)
        await writer.append([encode(_doc(4))])

    asyncio.run(run())
    writer.close()
    (segment,) = segments(tmp_path)
    assert [d.source["n"] for d in scan(segment.read_bytes()).documents] == [1, 4]


_ACKNOWLEDGES_UNTIL_KILLED = """
import asyncio, random, sys
from pathlib import Path
from metronome.events.document import Document
from metronome.pipeline.records import encode
from metronome.pipeline.spool import SpoolWriter

writer = SpoolWriter(Path(sys.argv[1]), segment_max_bytes=1 << 16, max_total_bytes=1 << 30)

async def client(c):
    for r in range(10**6):
        n = c * 10**6 + r
        await asyncio.sleep(random.random() * 0.002)
        await writer.append([encode(Document(f"{n:032x}", 1700000000000, "ticks", {"n": n}))])
        sys.stdout.write(f"{n}\\n")
        sys.stdout.flush()

async def main():
    await asyncio.gather(*(client(c) for c in range(16)))

asyncio.run(main())
"""


def test_every_acknowledged_record_is_in_the_spool_after_a_sigkill(tmp_path: Path) -> None:
    """Groups sync concurrently and segments fill and change (64 KiB each) while the
    writer is killed: every record it acknowledged is in a segment, once."""
    spool = tmp_path / "spool"
    acknowledged: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", _ACKNOWLEDGES_UNTIL_KILLED, str(spool)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    ) as writer:
        assert writer.stdout is not None
        while len(acknowledged) < 3000:
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            acknowledged.append(int(line))
        writer.send_signal(signal.SIGKILL)
        acknowledged.extend(int(line) for line in writer.stdout.read().split())
    found: list[int] = []
    for segment in segments(spool):
        with open(segment, "rb") as handle:
            end = segment_size(segment)
            found.extend(d.source["n"] for d in scan(handle.read(end)).documents)
    assert len(segments(spool)) > 1
    assert len(found) == len(set(found))
    assert not set(acknowledged) - set(found)
