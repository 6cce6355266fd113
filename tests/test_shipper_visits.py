"""The shipper with the embedded store: a batch's events, its visits and its spool position
are committed in one transaction, so a crash anywhere leaves a restart that stores every
spooled event once and assigns the visits an uninterrupted run would have."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from metronome.config import Settings
from metronome.events.document import Document, format_timestamp
from metronome.pipeline.records import encode, scan
from metronome.pipeline.shipper import Shipper
from metronome.pipeline.spool import SpoolWriter, segment_size, segments, spool_dir
from metronome.pipeline.visits import VisitBook, VisitState
from metronome.store.sqlite import DB_NAME, SQLiteStore

_START_MS = 1_700_000_000_000
_VISITORS = ("ann", "bob", "cy")


def _tick(n: int) -> Document:
    """The n-th tick: three visitors taking turns, a minute apart, over ten pages; bob
    pauses past the visit gap halfway, so he has two visits."""
    visitor = _VISITORS[n % 3]
    at = _START_MS + n * 60_000 + (3_600_000 if visitor == "bob" and n >= 30 else 0)
    source = {
        "@timestamp": format_timestamp(at),
        "event": {"action": "view"},
        "item": {"id": f"/page/{n % 10}"},
        "visitor": {"id": visitor},
        "site": {"id": "default"},
    }
    return Document(f"{n:032x}", at, "ticks", source)


def _settings(data_dir: Path, batch: int = 7) -> Settings:
    env = {
        "METRONOME_DATA_DIR": str(data_dir),
        "METRONOME_ELASTICSEARCH_URL": "",
        "METRONOME_SHIP_BATCH_DOCS": str(batch),
        "METRONOME_LOG_LEVEL": "warning",
    }
    return Settings.from_env(env)


def _spool(data_dir: Path, ticks: list[Document], *, segment_bytes: int = 1 << 20) -> int:
    """The ticks in the spool as the API writes them (fsynced, in sealed segments of at
    most ``segment_bytes``, one after the other); returns how many segments."""

    async def write() -> None:
        writer = SpoolWriter(
            spool_dir(data_dir), segment_max_bytes=segment_bytes, max_total_bytes=1 << 30
        )
        for tick in ticks:
            await writer.append([encode(tick)])
        writer.close()

    asyncio.run(write())
    return len(segments(spool_dir(data_dir)))


def _drain(data_dir: Path, *, crash: str | None = None, at: int = 0) -> int:
    """Ship everything spooled; with ``crash``, stop dead at the ``at``-th batch instead:
    ``in_transaction`` while the store's transaction is open, ``after_commit`` once it
    committed, before the position file is written. Returns the documents shipped."""

    class Crash(BaseException):
        pass

    async def run() -> int:
        settings = _settings(data_dir)
        async with SQLiteStore(settings) as store:
            await store.ensure_schema()
            shipper = Shipper(settings, store)
            calls = 0

            def count() -> None:
                nonlocal calls
                calls += 1
                if calls == at:
                    raise Crash

            if crash == "in_transaction":
                book = shipper.visit_book(persistent=True)
                write_rows = book.state.write_rows

                def failing(*args: Any, **kwargs: Any) -> None:
                    write_rows(*args, **kwargs)
                    count()

                book.state.write_rows = failing  # type: ignore[method-assign]
            elif crash == "after_commit":
                write_position = Shipper._write_position

                def failing_position(segment: Path, position: int) -> None:
                    count()
                    write_position(segment, position)

                shipper._write_position = failing_position  # type: ignore[method-assign]
            try:
                stats = await shipper.run(asyncio.Event(), drain=True)
            except Crash:
                return -1
            return stats.shipped

    return asyncio.run(run())


def _stored(data_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        return conn.execute("SELECT id, dataset, doc FROM events ORDER BY id").fetchall()


def _visits_of(rows: list[tuple[str, str, str]]) -> dict[str, int]:
    """Visit id -> events, from the summaries."""
    return {
        orjson.loads(doc)["visit"]["id"]: orjson.loads(doc)["visit"]["events"]
        for _, dataset, doc in rows
        if dataset == "visits"
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, str]]:
    data_dir = tmp_path_factory.mktemp("uninterrupted") / "data"
    _spool(data_dir, [_tick(n) for n in range(60)])
    assert _drain(data_dir) == 60
    rows = _stored(data_dir)
    assert sorted(_visits_of(rows).values()) == [10, 10, 20, 20]  # bob's two visits
    return rows


@pytest.mark.parametrize("crash", ["in_transaction", "after_commit"])
@pytest.mark.parametrize("at", [1, 4])
def test_a_crash_in_or_after_a_batch_commit_then_restart_stores_the_same(
    tmp_path: Path, uninterrupted: list[tuple[str, str, str]], crash: str, at: int
) -> None:
    data_dir = tmp_path / "data"
    _spool(data_dir, [_tick(n) for n in range(60)])  # one segment: batches of 7
    assert _drain(data_dir, crash=crash, at=at) == -1
    stored_before = [row[0] for row in _stored(data_dir) if row[1] == "ticks"]
    batches = at - 1 if crash == "in_transaction" else at  # a batch is stored whole or not
    assert stored_before == [_tick(n).id for n in range(batches * 7)]
    _drain(data_dir)  # the restart
    assert _stored(data_dir) == uninterrupted  # each event once, the same visits
    assert not segments(spool_dir(data_dir))


def test_a_shipper_killed_while_shipping_restarts_to_the_same_store(
    tmp_path: Path, uninterrupted: list[tuple[str, str, str]]
) -> None:
    """``metronome worker --drain`` killed (SIGKILL) while it ships, then run again."""
    data_dir = tmp_path / "data"
    _spool(data_dir, [_tick(n) for n in range(60)])
    env = {
        **os.environ,
        "PYTHONPATH": str(Path.cwd()),
        "METRONOME_DATA_DIR": str(data_dir),
        "METRONOME_ELASTICSEARCH_URL": "",
        "METRONOME_SHIP_BATCH_DOCS": "1",
        "METRONOME_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "metronome", "worker", "--drain"]
    with subprocess.Popen(command, env=env) as worker:
        deadline = time.monotonic() + 120
        while worker.poll() is None:  # until the store has a few events: kill it
            assert time.monotonic() < deadline
            try:
                with sqlite3.connect(data_dir / DB_NAME, timeout=30) as conn:
                    shipped = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            except sqlite3.OperationalError:  # no table yet
                shipped = 0
            if shipped >= 5:
                worker.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    assert worker.returncode == -signal.SIGKILL, "the worker finished before it was killed"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert _stored(data_dir) == uninterrupted


def test_visits_of_an_earlier_visits_file_continue_and_the_file_is_moved_in(
    tmp_path: Path, uninterrupted: list[tuple[str, str, str]]
) -> None:
    """A data directory from before: its first segment shipped, the open visits (and the
    marker) in ``spool/visits.sqlite3``. The shipper moves them into the store and goes on
    as if it had shipped everything itself."""
    data_dir = tmp_path / "data"
    assert _spool(data_dir, [_tick(n) for n in range(60)], segment_bytes=8192) == 2
    spool = spool_dir(data_dir)
    legacy = spool / "visits.sqlite3"

    async def ship_first_segments_as_before() -> None:
        settings = _settings(data_dir)
        book = VisitBook(settings.visit_gap_s, VisitState(legacy, 100))
        async with SQLiteStore(settings) as store:
            await store.ensure_schema()
            for segment in segments(spool)[:1]:
                size = segment_size(segment)
                with open(segment, "rb") as handle:
                    documents = scan(handle.read(size)).documents
                for first in range(0, len(documents), 7):  # the batches an old shipper made
                    assigned = book.assign(documents[first : first + 7])
                    await store.write(assigned.documents)
                    book.commit(assigned, None)
                book.commit(book.assign([]), (segment.name, size))
                segment.unlink()
        book.state.close()

    asyncio.run(ship_first_segments_as_before())
    assert legacy.exists()
    _drain(data_dir)
    assert not legacy.exists() and not Path(f"{legacy}-wal").exists()
    assert _visits_of(_stored(data_dir)) == _visits_of(uninterrupted)
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM open_visits").fetchone()[0] == 3


def test_the_visit_state_lives_in_the_store_database(tmp_path: Path) -> None:
    """No second database beside the store: the open visits and the marker are tables of
    the store's own file, written in its transactions."""
    data_dir = tmp_path / "data"
    _spool(data_dir, [_tick(n) for n in range(60)])
    assert _drain(data_dir) == 60
    assert not list(spool_dir(data_dir).glob("visits.sqlite3*"))
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM open_visits").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM visits_marker").fetchone()[0] == 1


def test_a_visit_continued_from_memory_is_the_one_continued_after_a_restart(
    tmp_path: Path,
) -> None:
    """The shipper keeps the last batch's visits as objects; continuing them gives what a
    new process, which reads them back from the database, gives."""
    path = tmp_path / "visits.sqlite3"
    running = VisitBook(1800, VisitState(path, 100))
    first = running.assign([_tick(n) for n in range(0, 30)])
    running.commit(first, ("segment", 1))
    restarted = VisitBook(1800, VisitState(path, 100))
    later = [_tick(n) for n in range(30, 60)]
    assert running.assign(later).documents == restarted.assign(later).documents
    again = running.assign(later)  # not committed: assigned from the same state again
    assert again.documents == restarted.assign(later).documents
    running.state.close()
    restarted.state.close()
