"""The shipper: reads the spool in order and writes it to the store in bulk.

Like ``elasticsearch.helpers.streaming_bulk``: a batch closes on a document count or a
byte size; documents the store answers as retriable (429, 5xx, unreachable) are sent
again with capped exponential backoff and jitter; documents it refuses for good go to
``<data dir>/dead-letters.ndjson`` with the reason. A segment's position advances only
after every document up to it is stored (or dead-lettered), so a crash between the two
re-sends a batch, which the store stores once (event ids are document ids).

Only one shipper works on a data directory at a time (``spool/shipper.lock``).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.events.document import Document
from metronome.files import FILE_MODE, open_private
from metronome.pipeline import metrics
from metronome.pipeline.records import scan
from metronome.pipeline.spool import data_end, read_position, segments, spool_dir, try_seal
from metronome.pipeline.visits import STATE_FILE, VisitBook, VisitState
from metronome.store.base import Store
from metronome.store.sqlite import SQLiteStore

__all__ = ["DEAD_LETTERS", "Shipper", "ShipperStats"]

log = logging.getLogger("metronome.shipper")

DEAD_LETTERS = "dead-letters.ndjson"
_POSITION_WIDTH = 20  # digits of a position file: wider than any older one (no padding)


@dataclass
class ShipperStats:
    shipped: int = 0
    retries: int = 0
    dead_letters: int = 0
    already_stored: int = 0  # documents the store had already (a batch sent again)
    torn_bytes: int = 0
    segments_done: int = 0
    errors: list[str] = field(default_factory=list)


class Shipper:
    """Moves documents from the spool to the store; ``run`` until stopped or drained."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        holds: Callable[[Path, int], bool] | None = None,
    ) -> None:
        """``holds(segment, size)``: whether a destination still needs a segment the
        store has all of (:func:`metronome.pipeline.destinations.holds`); such a segment
        stays until it no longer does."""
        self._holds = holds
        self._store = store
        self._dir = spool_dir(settings.data_dir)
        self._dead_letters = Path(settings.data_dir) / DEAD_LETTERS
        self._batch_docs = settings.ship_batch_docs
        self._batch_bytes = settings.ship_batch_bytes
        self._poll_s = settings.ship_poll_ms / 1000
        self._backoff_max_s = float(settings.ship_backoff_max_s)
        self.stats = ShipperStats()
        self._lock_handle: IO[bytes] | None = None
        self._visit_gap_s = settings.visit_gap_s
        self._visit_state_max = settings.visit_state_max
        self._visits: VisitBook | None = None  # opened with the lock: one shipper writes it
        # the visit state commits in the store's transaction (the embedded store): a batch's
        # events, its visits and how far in the spool it reaches are stored together or not
        self._visits_with_store = False
        # each segment's position as this shipper last wrote it: read from its file (and
        # the visits' marker) once per run, not on every pass
        self._positions: dict[str, int] = {}
        self._behind = False  # the last pass left records it had found (a backlog)

    def visit_book(self, persistent: bool) -> VisitBook:
        """The visits this shipper assigns: kept with the events in the embedded store's
        database (moved there from a ``spool/visits.sqlite3`` of an earlier Metronome), or
        in ``spool/visits.sqlite3`` beside Elasticsearch; in memory for one run (an
        import)."""
        if self._visits is None:
            if not persistent:
                state = VisitState(None, self._visit_state_max)
            elif isinstance(self._store, SQLiteStore):
                state = VisitState.in_store(
                    self._store.path, self._visit_state_max, legacy=self._dir / STATE_FILE
                )
                self._visits_with_store = True
            else:
                state = VisitState(self._dir / STATE_FILE, self._visit_state_max)
            self._visits = VisitBook(self._visit_gap_s, state)
        return self._visits

    def close(self) -> None:
        if self._visits is not None:
            self._visits.state.close()
            self._visits = None

    def _take_lock(self, wait: bool) -> bool:
        handle = open_private(self._dir / "shipper.lock", "ab")  # held while running
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        self._lock_handle = handle
        return True

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> ShipperStats:
        """Ship until ``stop`` is set; with ``drain``, return once the spool is empty."""
        while not self._take_lock(wait=False):
            log.info("shipper_waiting another shipper holds %s", self._dir / "shipper.lock")
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
                return self.stats
            except TimeoutError:
                continue
        self.visit_book(persistent=True)
        try:
            while not stop.is_set():
                started = time.monotonic()
                moved, pending = await self.ship_pass(stop)
                if drain and not pending:
                    break
                # Idle, or caught up (ticks arriving one at a time, no segment has more than
                # the batch it gave): the next pass starts a poll interval after this one
                # did. Passing again at once shipped a few ticks per batch, each batch paying
                # the same two commits, position file and segment scan (issue 24: most of the
                # shipper's CPU per tick under load); a tick still waits at most a poll
                # interval, as when idle. A backlog is shipped batch after batch, no waiting.
                if not moved or (not drain and not self._behind):
                    wait = self._poll_s - (time.monotonic() - started) if moved else self._poll_s
                    if wait > 0:
                        try:
                            await asyncio.wait_for(stop.wait(), timeout=wait)
                        except TimeoutError:
                            pass
        finally:
            self.close()
            self._positions.clear()  # the lock goes: another shipper may move them on
            if self._lock_handle is not None:
                self._lock_handle.close()  # the file it opened
                self._lock_handle = None
        return self.stats

    async def ship_pass(self, stop: asyncio.Event) -> tuple[int, bool]:
        """One batch from each segment with unshipped data: (documents moved, any left?)."""
        moved = 0
        pending = False
        self._behind = False
        for segment in segments(self._dir):
            if stop.is_set():
                return moved, True
            with try_seal(segment) as sealed:
                count, left = await self._ship_segment(segment, sealed, stop)
            moved += count
            pending = pending or left
        return moved, pending

    async def _ship_segment(
        self, segment: Path, sealed: bool, stop: asyncio.Event
    ) -> tuple[int, bool]:
        book = self.visit_book(persistent=True)
        known = self._positions.get(segment.name)
        if known is None:  # first seen in this run: as far as the files say
            position = read_position(segment)
            marker = book.state.marker()
            if marker is not None and marker[0] == segment.name:  # stored, position not written
                position = max(position, marker[1])
        else:  # this shipper (holding the lock) wrote it, and the marker with it
            position = known
        try:
            with open(segment, "rb", buffering=0) as handle:
                fd = handle.fileno()
                # where the records end first, then only those bytes: a live segment's
                # writer prepares zeros ahead of its records, which a read of a whole batch's
                # bytes copied each pass (8 MiB, most of them zeros, per batch of a few ticks)
                size = data_end(fd, os.fstat(fd).st_size, position)
                buffer = os.pread(fd, max(0, min(self._batch_bytes, size - position)), position)
        except FileNotFoundError:
            return 0, False
        result = scan(buffer, self._batch_docs)
        if not result.documents and position + len(buffer) < size:
            # one record larger than a batch: read exactly it
            with open(segment, "rb") as handle:
                handle.seek(position)
                buffer = handle.read(size - position)
            result = scan(buffer, 1)
        if result.documents:
            assigned = book.assign(result.documents)
            reached = (segment.name, position + result.end)
            if self._visits_with_store:  # one transaction: events, visits, marker
                packed = book.state.pack(assigned.changed)
                also = functools.partial(
                    book.state.write_rows, changed=assigned.changed, packed=packed, marker=reached
                )
                if not await self.store_documents(assigned.documents, stop, also=also):
                    return 0, True  # stopping: this batch ships next time
                book.state.remember(assigned.changed, packed)  # committed: remembered
            else:
                if not await self.store_documents(assigned.documents, stop):
                    return 0, True  # stopping: this batch ships next time
                await asyncio.to_thread(book.commit, assigned, reached)
            position = reached[1]
            self._behind = self._behind or position < size  # more than one batch was there
            self._write_position(segment, position)
            self._positions[segment.name] = position
            metrics.SHIPPED.inc(len(result.documents))
            self.stats.shipped += len(result.documents)
        if not sealed:
            return len(result.documents), True  # a live writer may append more
        if position < size and not result.documents:
            # a sealed segment ends in a damaged or incomplete record: a torn write
            cut = size - position
            log.warning("spool_tail_cut segment=%s bytes=%d", segment.name, cut)
            metrics.TORN_BYTES.inc(cut)
            self.stats.torn_bytes += cut
            with open(segment, "r+b") as handle:
                handle.truncate(position)
            size = position
        if position >= size and self._holds is not None and self._holds(segment, size):
            return len(result.documents), False  # shipped; kept for a destination
        if position >= size:
            segment.unlink(missing_ok=True)
            segment.with_suffix(".pos").unlink(missing_ok=True)
            self._positions.pop(segment.name, None)
            self.stats.segments_done += 1
            return len(result.documents), False
        return len(result.documents), True

    @staticmethod
    def _write_position(segment: Path, position: int) -> None:
        # not fsynced on purpose: a lost position re-sends a batch, stored once anyway.
        # Written in place, always the same width, in one write: a reader sees the old
        # number or the new one, and a kill cannot stop a write halfway. (A temporary file
        # renamed over it cost 460 µs of CPU per batch, a third of a small batch's work.)
        fd = os.open(segment.with_suffix(".pos"), os.O_WRONLY | os.O_CREAT, FILE_MODE)
        try:
            os.pwrite(fd, b"%0*d" % (_POSITION_WIDTH, position), 0)
        finally:
            os.close(fd)

    async def store_documents(
        self,
        documents: list[Document],
        stop: asyncio.Event,
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> bool:
        """Store every document or dead-letter it; retry what may succeed later.

        ``also``: rows the embedded store writes in the same transaction as the documents
        (it stores all of them or none, so they are never committed with part of a batch).
        Returns False only when ``stop`` was set before everything was confirmed.
        """
        todo = documents
        delay = 0.2
        while todo:
            try:
                if also is not None and isinstance(self._store, SQLiteStore):
                    outcomes = await self._store.write(todo, also=also)
                    assert todo is documents and all(o.ok for o in outcomes)  # all or none
                else:
                    outcomes = await self._store.write(todo)
            except StoreUnavailable as exc:
                outcomes = None
                reason = exc.message
            if outcomes is not None:
                by_id = {d.id: d for d in todo}
                retry: list[Document] = []
                refused: list[tuple[Document, str]] = []
                for outcome in outcomes:
                    if outcome.ok:
                        self.stats.already_stored += outcome.existed
                        continue
                    if outcome.retriable:
                        retry.append(by_id[outcome.id])
                        reason = outcome.reason or "retriable"
                    else:
                        refused.append((by_id[outcome.id], outcome.reason or "refused"))
                if refused:
                    self._dead_letter(refused)
                todo = retry
                if not todo:
                    break
            self.stats.retries += 1
            metrics.RETRIES.inc()
            log.warning("ship_retry documents=%d delay_s=%.1f reason=%s", len(todo), delay, reason)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay * random.uniform(0.5, 1.0))
                return False  # stopping: the position stays, these are shipped next time
            except TimeoutError:
                pass
            delay = min(delay * 2, self._backoff_max_s)
        return True

    def dead_letter(self, refused: list[tuple[Document, str]]) -> None:
        """Append documents the store refused for good, with the reason, to the
        dead-letter file (fsynced), and count them."""
        self._dead_letter(refused)

    def _dead_letter(self, refused: list[tuple[Document, str]]) -> None:
        now = time.time()
        lines = b"".join(
            orjson.dumps(
                {
                    "time": now,
                    "id": d.id,
                    "dataset": d.dataset,
                    "reason": reason,
                    "document": d.source,
                }
            )
            + b"\n"
            for d, reason in refused
        )
        with open_private(self._dead_letters, "ab") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        for d, reason in refused:
            log.warning("dead_letter id=%s reason=%s", d.id, reason)
        metrics.DEAD_LETTERS.inc(len(refused))
        self.stats.dead_letters += len(refused)
