"""``metronome import`` on two cores: parsing processes feed the writing one.

A parsing process (forked, so it starts with everything already imported) reads the
files in blocks of :data:`BATCH_DOCS` lines, turns their lines into documents
(:class:`~metronome.logs.ingest.LineConverter`: the same parser, URL rules and visitor
ids as every other input) and encodes each block's documents as the store writes them
(``store.document_encoder``: rows for the embedded store, ``_bulk`` lines for
Elasticsearch): plain tuples, cheap to send. With a named format (``combined``, a
``log_format`` string...), whose parser reads each line apart from the others, every
other block goes to a second parsing process, so parsing (the costliest part) takes two
cores' worth of turns; ``auto`` and W3C parsers learn from the lines they read, so one
process reads those files in order, exactly as it would alone. Visits (issue 25) are
assigned in the parsing processes, in block order, from one visit book, which the first
parsing process keeps: the second asks it for the open visits of its block's visitors
and hands back the visits it changed before the next block is assigned, so the events
are encoded once, with their visit fields, the visits are those one book reading every
block in order would give, and the import holds one book, not a copy per parsing
process (issue 24: the book was most of their memory). Only that assignment takes
turns: a block's lines reach the second process before the first parses the block
before it, so both parse at once, and the first answers a lookup as soon as its own
block before is assigned, between the steps of its work. This process takes
the batches back in block order and writes them (``write_encoded``: one transaction, or
``_bulk`` requests, several in flight) while the next ones are parsed, and appends the
blocks' rejected lines to the reject file (its only writer).

What holds as before: ids come from each line's content and number, so whatever is
written twice (a re-import, a batch sent again) is stored once; lines that cannot be
parsed go to the reject file with their reason; the progress shown and the summary count
only what the store has acknowledged durably; a store that is unavailable or overloaded
gets the batch again with capped exponential backoff, and documents it refuses for good
go to the dead-letter file like the shipper's. The queues between the processes are
bounded (:data:`QUEUE_BATCHES`), so memory stays flat whatever the file's size. If this
process dies, the parsing processes notice and end; what was committed stays, and
importing again stores the rest.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import gzip
import logging
import multiprocessing
import os
import queue
import random
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import orjson

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.events.document import Document
from metronome.events.enrich import parse_user_agent
from metronome.events.geo import country_iso_code
from metronome.logs.formats import AUTO, AutoParser, Detection, compile_format
from metronome.logs.formats.detect import SAMPLE_LINES
from metronome.logs.formats.w3c import W3cParser
from metronome.logs.ingest import LineConverter, Summary, open_lines
from metronome.logs.parse import DATASET, Reject
from metronome.logs.rejects import RejectFile
from metronome.pipeline.shipper import Shipper
from metronome.pipeline.visits import Assignment, OpenVisit, VisitBook, VisitState
from metronome.store import Store, WriteOutcome, document_encoder

__all__ = ["BATCH_DOCS", "QUEUE_BATCHES", "SYNC_EVERY_S", "import_in_two_processes"]

BATCH_DOCS = 2000
"""Documents per batch: one transaction of the embedded store, one ``_bulk`` request."""
QUEUE_BATCHES = 6
"""Batches parsed ahead of the writer at most (memory: a few MB)."""
SYNC_EVERY_S = 1.0
"""The embedded store: how often a batch is committed with an fsync (the others without)."""
_BULK_IN_FLIGHT = 3  # Elasticsearch: requests at once (its own threads index them)
_POLL_S = 0.5  # how often each process checks that the other one is still there
# The import's processes allocate millions of short-lived containers (documents, rows,
# visits) beside long-lived caches (user agents, addresses, URL rules, open visits):
# Python's default collector thresholds (700, 10, 10) made it walk that long-lived heap
# again and again, a third of the parsing processes' CPU (issue 24). Documents are trees,
# not cycles, so collecting less often frees the same memory, a little later.
_GC_THRESHOLDS = (50_000, 20, 100)

log = logging.getLogger("metronome.ship")

Detect = Callable[[str, list[str]], Detection | None]


# --------------------------------------------------------------------------- parsing side


class _Rejects:
    """The rejected lines of one block, sent with its batch: the importing process alone
    appends them to the reject file (two parsing processes never write it at once)."""

    def __init__(self) -> None:
        self.records: list[tuple[dict[str, Any], str | None]] = []

    def add(self, record: dict[str, Any], reject_id: str | None = None) -> None:
        self.records.append((record, reject_id))

    def take(self) -> list[tuple[dict[str, Any], str | None]]:
        taken, self.records = self.records, []
        return taken

    def close(self) -> None:
        """Nothing to close: the records go with the batches."""


def _watch_parent(parent: int) -> None:
    """End this (parsing) process as soon as the importing process is gone, whatever it
    is blocked on (a queue whose reader died, a pipe whose writer died mid-message)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="metronome-import-watch", daemon=True).start()


def _putter(out: Any, parent: int) -> Callable[[tuple[Any, ...]], None]:
    def put(message: tuple[Any, ...]) -> None:
        while True:
            try:
                out.put(message, timeout=_POLL_S)
                return
            except queue.Full:
                if os.getppid() != parent:  # the importing process is gone: stop
                    os._exit(1)

    return put


Handoff = tuple[dict[str, bytes], tuple[tuple[str, str | None, int], ...], int]
"""What the second parsing process hands back to the first, which keeps the visit book,
after assigning a block's visits: the visits it changed (by visitor key, packed by
:meth:`~metronome.pipeline.visits.OpenVisit.to_json`, in the order it changed them), each
visit the block touched (its id; its visitor key while it is still open, else None, its
summary sent with the block; its last event's time) and the block's newest event time."""


def _handoff(assigned: Assignment) -> tuple[Handoff, list[Document], list[OpenVisit]]:
    """A block's assignment as the book takes it (:meth:`_BlockParser.apply`), the
    documents with their visit fields, and the visits that ended with the block (another
    visit of the visitor began, or a straggler's visit of its own)."""
    changed = {key: visit.to_json() for key, visit in assigned.changed.items()}
    still_open = {visit.visit_id: key for key, visit in assigned.changed.items()}
    touched = tuple(
        (visit.visit_id, still_open.get(visit.visit_id), visit.last_ms)
        for visit in assigned.touched
    )
    ended = [visit for visit in assigned.touched if visit.visit_id not in still_open]
    newest_ms = max((d.timestamp_ms for d in assigned.documents), default=0)
    return (changed, touched, newest_ms), assigned.documents, ended


class _BlockParser:
    """Blocks of lines of one file to encoded batches, with their visits, rejects and counts.

    Visits are assigned in block order across the whole import, from one visit book, which
    the first parsing process keeps (``book=True``). The second one keeps none: for each
    block it reads it asks the first for the open visits of the block's visitors
    (:meth:`lookup`: as the book holds them after the block before), assigns the block's
    visits from those alone (:meth:`assign_forwarded`) and hands the visits it changed back
    (:meth:`apply`) before the first assigns the next block. The book thus sees the same
    changes in the same order as if one process read every block, and the events are
    encoded once, with their visit fields; the import keeps one book, not a copy in each
    parsing process (the book is most of their memory: issue 24).

    A visit's summary is sent once it can no longer grow, not after every block that adds
    to it (that wrote 0.8 summaries per event, each replacing the last: more than the
    events cost to write): when the newest event so far is more than the visit gap past
    the visit's last one (the first process finds those; with two parsing processes the
    second, less busy, sends them with the block after), when another visit of the
    visitor began (with the block that began it), and at the end of
    the import. An event of an already summarised visit (a line out of time order) sends
    it again, later in block order, so the stored summary is always the latest. A crash
    leaves the summaries of the visits still open unwritten; importing again writes them
    (the events are stored once, the visits assigned alike)."""

    def __init__(
        self,
        settings: Settings,
        put: Callable[[tuple[Any, ...]], None],
        run_key: bytes,
        *,
        book: bool = True,
    ) -> None:
        self.rejects = _Rejects()
        # old days' visitor salts: the same in both parsing processes (events/visitor.py)
        self.converter = LineConverter(settings, self.rejects, run_key=run_key)
        self._encode = document_encoder(settings)
        self._received_ms = int(time.time() * 1000)
        self._put = put
        self._gap_s = settings.visit_gap_s
        # visits across the whole import (issue 25), in block order: in memory only
        self._book = (
            VisitBook(settings.visit_gap_s, VisitState(None, settings.visit_state_max))
            if book
            else None
        )
        # by visit id, the least recently touched first: (its last event's time, the visit
        # packed as the book holds it: the same bytes, not a copy)
        self._waiting: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._newest_ms = 0
        # the visits that ended by time, packed, for the other parsing process to summarise
        # (:meth:`pass_to`): None while this process summarises them itself
        self._passing: list[bytes] | None = None

    def documents(self, path: str, lines: list[tuple[int, str | None]]) -> list[Document]:
        """The documents of a block's lines (its rejects kept for :meth:`send`)."""
        converter = self.converter
        documents: list[Document] = []
        for number, text in lines:
            if text is None:
                converter.too_long(path, number, identity=f"\0{path}\0{number}")
                continue
            parsed = converter.parse(text)
            if isinstance(parsed, Reject):
                converter.reject(parsed, text, path, number, identity=f"{text}\0{number}")
                continue
            documents.append(converter.document(parsed, text, number, self._received_ms))
        return documents

    def lookup(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The book's open visits of ``keys`` (packed), for the other process's block."""
        assert self._book is not None
        packed = self._book.state.packed
        found = {}
        for key in keys:
            visit = packed(key)
            if visit is not None:
                found[key] = visit
        return found

    def apply(self, handoff: Handoff) -> None:
        """The visits the other parsing process changed in the block before the next one,
        into the book; those it touched that are still open wait here for their summary."""
        assert self._book is not None
        changed, touched, newest_ms = handoff
        self._book.state.commit_packed(changed)
        waiting = self._waiting
        for visit_id, key, last_ms in touched:
            waiting.pop(visit_id, None)
            if key is not None:  # to the end: the most recently touched
                waiting[visit_id] = (last_ms, changed[key])
        self._newest_ms = max(self._newest_ms, newest_ms)

    def assign(self, documents: list[Document]) -> tuple[list[Document], list[OpenVisit]]:
        """Give the block's documents their visits from the book; the documents and the
        visits that ended with the block, for :meth:`send_assigned`. The book holds the
        block's changes once this returns: the other process's next lookup may be answered."""
        assert self._book is not None
        handoff, documents, ended = _handoff(self._book.assign(documents, summaries=False))
        self.apply(handoff)  # as the other process's blocks are
        waiting = self._waiting
        cutoff = self._newest_ms - self._gap_s * 1000
        while waiting:  # the least recently touched first (an OrderedDict: O(1) each)
            last_ms, packed = waiting[next(iter(waiting))]
            if last_ms >= cutoff:  # nearly in time order: the rest wait a little more
                break
            waiting.popitem(last=False)
            if self._passing is None:
                ended.append(OpenVisit.from_json(packed))
            else:
                self._passing.append(packed)
        return documents, ended

    def pass_to_other(self) -> None:
        """From now on, keep the visits that end by time for :meth:`passed` (the other
        parsing process summarises them) rather than summarising them here."""
        self._passing = []

    def passed(self) -> list[bytes]:
        """The visits that ended by time since the last call, packed, oldest first: sent
        with the answer to the other process's next lookup, for the block right after the
        one this process assigned last, whose batch carries their summaries before its own
        (so a later version of a visit, from a later block, is still written after them)."""
        passed = self._passing
        if not passed:
            return []
        self._passing = []
        return passed

    def assign_forwarded(
        self, documents: list[Document], keys: list[str | None], visits: dict[str, bytes]
    ) -> tuple[Handoff, list[Document], list[OpenVisit]]:
        """Give a block of the other process's book's visitors (``keys``: the documents'
        visitor keys; ``visits``: their open visits in the book now) their visits; return
        the handoff for the book, the documents with their visit fields, and the visits
        that ended (another visit of the visitor began), for :meth:`send_assigned`."""
        state = VisitState(None, max(len(visits), 1))  # this block's visitors alone
        state.commit_packed(visits)
        return _handoff(VisitBook(self._gap_s, state).assign(documents, summaries=False, keys=keys))

    def send_assigned(self, documents: list[Document], ended: list[OpenVisit], read: int) -> None:
        """Send the batch :meth:`assign` or :meth:`assign_forwarded` gave (events, then the
        summaries of the visits that ended) with the block's rejects."""
        self._put(
            (
                "batch",
                self._encode(documents),
                self._encode([visit.summary() for visit in ended]),
                read,
                self.rejects.take(),
            )
        )

    def done(self) -> None:
        """Send the summaries of the visits still waiting, then the counts."""
        waiting = [*self.passed(), *(packed for _, packed in self._waiting.values())]
        self._waiting.clear()
        for start in range(0, len(waiting), BATCH_DOCS):
            chunk = [OpenVisit.from_json(packed) for packed in waiting[start : start + BATCH_DOCS]]
            self._put(("batch", [], self._encode([v.summary() for v in chunk]), 0, []))
        summary = self.converter.summary
        self._put(("done", dict(summary.rejected), summary.bots))


def _parse_files(
    settings: Settings,
    paths: Sequence[str],
    detections: dict[str, Detection | None],
    detect: Detect,
    on_detect: Callable[[str, Detection], None] | None,
    out: Any,
    helper: Any,
    back: Any,
    parent: int,
    run_key: bytes,
) -> None:
    """The (first) parsing process: reads every line of ``paths``, in blocks of
    :data:`BATCH_DOCS` lines; parses each block (every other one, when a ``helper``
    queue leads to a second parsing process, which asks on ``back`` for the open visits
    of its block's visitors, answered on ``helper``, then hands back what it changed)
    and puts its batch on ``out``; then ``("done", rejected, bots)``; or ``("error",
    exception)`` after the batches of the lines before it. It keeps the import's visit
    book."""
    gc.set_threshold(*_GC_THRESHOLDS)
    _watch_parent(parent)
    put = _putter(out, parent)
    forward = None if helper is None else _putter(helper, parent)
    parser = _BlockParser(settings, put, run_key)
    if forward is not None:  # the busier process: the other summarises what ends by time
        parser.pass_to_other()
    converter = parser.converter
    auto = settings.log_format.strip().lower() == AUTO
    block_number = 0
    held: tuple[str, list[tuple[int, str | None]]] | None = None  # an even block, not parsed
    waiting = 0  # blocks forwarded before the one parsed here whose visits are still to come
    needs: deque[list[str]] = deque()  # the other process's lookups, in block order
    answered = 0  # the other process's blocks whose lookups were answered
    assigned_here = 0  # this process's blocks given their visits

    def pump(wait: bool) -> None:
        """Answer the other process's lookups that may be answered (a lookup for block
        ``2i + 1`` once this process assigned block ``2i``: the book is then as one book
        reading every block before it would hold it) and apply the visits it assigned;
        with ``wait``, until no block forwarded before this process's current one is
        still to come back."""
        nonlocal waiting, answered
        if forward is None:  # one parsing process: nobody to answer
            return
        while True:
            while needs and answered < assigned_here:
                forward(("visits", parser.lookup(needs.popleft()), parser.passed()))
                answered += 1
            if wait and waiting:
                message = _get(back, parent)
            else:
                try:
                    message = back.get_nowait()
                except queue.Empty:
                    return
            if message[0] == "need":
                needs.append(message[1])
            else:  # the visits of the other process's block, assigned
                parser.apply(message[1])
                waiting -= 1

    def parse(path: str, block: list[tuple[int, str | None]]) -> None:
        """Parse a block of this process's and give it its visits from the book, after
        those of the block before (the other process's, when there is one)."""
        nonlocal assigned_here
        read_before = converter.summary.read
        documents = parser.documents(path, block)  # while the other block is parsed
        pump(wait=True)  # the visits of the block before, assigned by the other process
        documents, ended = parser.assign(documents)
        assigned_here += 1
        pump(wait=False)  # the next block's lookup, if it came: answered now
        parser.send_assigned(documents, ended, converter.summary.read - read_before)
        del documents, ended
        pump(wait=False)
        _trim_heap()

    def flush(path: str, block: list[tuple[int, str | None]]) -> None:
        """Blocks alternate between the processes: an even one waits here until the odd
        one after it is read and on its way to the other process, so both parse at once;
        only the visits are given in turn."""
        nonlocal block_number, held, waiting
        if not block:
            return
        if forward is None:
            parse(path, block)
        elif block_number % 2:
            forward(("lines", path, block))
            flush_held()  # the block before it: its visits are what this one waits for
            waiting += 1
        else:
            held = (path, block)
        block_number += 1

    def flush_held() -> None:
        nonlocal held
        if held is not None:
            block, held = held, None
            parse(*block)

    try:
        if "-" in paths:  # multiprocessing gave this process /dev/null as sys.stdin
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 - standard input, kept open
        for path in paths:
            lines: Iterator[tuple[int, str | None]] = open_lines(path, settings.max_line_bytes)
            if auto:
                if path == "-":
                    head = [next(lines, None) for _ in range(SAMPLE_LINES)]
                    found = [pair for pair in head if pair is not None]
                    detections[path] = detect(path, [t for _, t in found if t is not None])
                    lines = _chain(found, lines)
                    if on_detect is not None and detections[path] is not None:
                        on_detect(path, detections[path])  # type: ignore[arg-type]
                detection = detections[path]
                converter.use(
                    compile_format(AUTO, settings.log_tz) if detection is None else detection.parser
                )
            block: list[tuple[int, str | None]] = []
            try:
                for pair in lines:
                    block.append(pair)
                    if len(block) >= BATCH_DOCS:
                        flush(path, block)
                        block = []
            except (EOFError, gzip.BadGzipFile) as exc:  # a damaged or cut compressed file
                flush(path, block)  # what was read before is imported
                flush_held()
                text = str(exc)
                message = text if text.startswith("damaged") else f"damaged gzip file ({text})"
                raise OSError(errno.EIO, message, path) from exc
            flush(path, block)
        flush_held()
        pump(wait=True)  # before "done": the other process's last message is read
        if forward is not None:
            forward(("done",))
        parser.done()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the importing process
        if forward is not None:
            forward(("done",))
        try:
            put(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled
            put(("error", RuntimeError("".join(traceback.format_exception(exc)))))


def _parse_forwarded(
    settings: Settings, inbox: Any, out: Any, back: Any, parent: int, run_key: bytes
) -> None:
    """The second parsing process: the blocks the first one forwards, parsed alike; each
    block's visits are assigned from the open visits of its visitors, which it asks the
    first process for (``back``, answered on ``inbox``), and the visits it changed go
    ``back`` to the first process's book before its batch is encoded."""
    gc.set_threshold(*_GC_THRESHOLDS)
    _watch_parent(parent)
    put = _putter(out, parent)
    # the first process reads every message before it sends "done": none is left behind
    back.cancel_join_thread()
    try:
        parser = _BlockParser(settings, put, run_key, book=False)
        # blocks parsed while the visits of an earlier one are awaited, in block order
        parsed: deque[tuple[list[Document], list[str | None], int]] = deque()
        asked = False  # the visits of parsed[0] were asked for

        def ask() -> None:
            nonlocal asked
            if parsed and not asked:
                wanted = parsed[0][1]
                back.put(("need", list(dict.fromkeys(k for k in wanted if k is not None))))
                asked = True

        while True:
            message = _get(inbox, parent)
            if message[0] == "done":
                break
            if message[0] == "lines":
                read_before = parser.converter.summary.read
                documents = parser.documents(message[1], message[2])
                keys = VisitBook.keys(documents)
                parsed.append((documents, keys, parser.converter.summary.read - read_before))
                ask()
            else:  # "visits": those of parsed[0]'s visitors, as the book holds them now,
                # and the visits that ended by time up to the block before it
                documents, keys, read = parsed.popleft()
                asked = False
                handoff, assigned, ended = parser.assign_forwarded(documents, keys, message[1])
                passed = message[2]
                back.put(("assigned", handoff))  # the first process goes on while this encodes
                del documents, keys, message, handoff  # assigned holds what is still needed
                ask()  # the next block's lookup, after this block's changes
                ended[:0] = map(OpenVisit.from_json, passed)  # summarised first
                parser.send_assigned(assigned, ended, read)
                # not kept while the next block is awaited and parsed: its memory is reused
                del assigned, ended, passed
                _trim_heap()
        parser.done()
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the importing process
        try:
            put(("error", exc))
        except Exception:  # noqa: BLE001 - an exception that cannot be pickled
            put(("error", RuntimeError("".join(traceback.format_exception(exc)))))


def _get(channel: Any, parent: int) -> Any:
    """The next message on ``channel``; this process ends if the importing one is gone."""
    while True:
        try:
            return channel.get(timeout=_POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                os._exit(1)


def _chain(
    head: list[tuple[int, str | None]], rest: Iterator[tuple[int, str | None]]
) -> Iterator[tuple[int, str | None]]:
    yield from head
    yield from rest


def _parsers(settings: Settings) -> int:
    """How many processes parse: two when every line may be parsed apart from the lines
    before it (a named format or a log_format string), one for ``auto`` and W3C logs,
    whose parsers learn from the lines they read (``#Fields:``, the variant in use)."""
    if settings.log_format.strip().lower() == AUTO or os.cpu_count() == 1:
        return 1
    parser = compile_format(settings.log_format, settings.log_tz)
    return 1 if isinstance(parser, W3cParser | AutoParser) else 2


# --------------------------------------------------------------------------- writing side


async def import_in_two_processes(
    settings: Settings,
    store: Store,
    paths: Sequence[str],
    detections: dict[str, Detection | None],
    detect: Detect,
    *,
    progress: Callable[[int], None] | None = None,
    on_detect: Callable[[str, Detection], None] | None = None,
) -> Summary:
    """Import ``paths`` into ``store`` (its schema installed): parsed in a forked process
    (``detections`` holds each file's format, already recognised, except standard
    input's, which ``detect`` recognises there), written here. Raises what the parsing
    raised (an ``OSError``, :class:`~metronome.logs.formats.UnknownFormat`) after
    storing the lines before it."""
    summary = Summary()
    context = multiprocessing.get_context("fork")  # starts with every module imported
    two = _parsers(settings) == 2
    channels: list[Any] = [context.Queue(maxsize=QUEUE_BATCHES) for _ in range(1 + two)]
    helper: Any = context.Queue(maxsize=QUEUE_BATCHES) if two else None
    back: Any = context.Queue() if two else None  # visits changed, second to first process
    me = os.getpid()
    run_key = secrets.token_bytes(32)  # this import's old-day visitor salts, never stored
    children = [
        context.Process(
            target=_parse_files,
            args=(
                settings,
                paths,
                detections,
                detect,
                on_detect,
                channels[0],
                helper,
                back,
                me,
                run_key,
            ),
            name="metronome-import-parse",
            daemon=True,
        )
    ]
    if two:
        children.append(
            context.Process(
                target=_parse_forwarded,
                args=(settings, helper, channels[1], back, me, run_key),
                name="metronome-import-parse-2",
                daemon=True,
            )
        )
    _bound_malloc()
    _load_shared_data()
    for child in children:
        child.start()
    writer = _Writer(settings, store, summary, progress)
    rejects = RejectFile(settings.data_dir, settings.rejects_max_bytes)
    loop = asyncio.get_running_loop()
    failure: BaseException | None = None
    finished = [False] * len(children)
    turn = 0
    thresholds = gc.get_threshold()
    gc.set_threshold(*_GC_THRESHOLDS)  # this process unpickles every row: the same reason
    try:
        while not all(finished):  # blocks alternate between the parsing processes
            while finished[turn]:
                turn = (turn + 1) % len(children)
            message = await loop.run_in_executor(None, _receive, channels[turn], children[turn])
            kind = message[0]
            if kind == "batch":
                for record, reject_id in message[4]:
                    rejects.add(record, reject_id)
                summary.read += message[3]
                await writer.add(message[1], message[2], summary.read)
                del message
                _trim_heap()
            elif kind == "done":
                finished[turn] = True
                summary.rejected.update(message[1])
                summary.bots += message[2]
            else:  # the lines before it are written; the other process is stopped
                failure = message[1]
                break
            turn = (turn + 1) % len(children)
        await writer.finish()
    finally:
        gc.set_threshold(*thresholds)
        writer.cancel()
        rejects.close()
        for child, heard_last in zip(children, finished, strict=True):
            if heard_last and failure is None:  # it ends right after its last message
                child.join(timeout=30)
            if child.is_alive():  # this process is failing or was interrupted
                child.terminate()
                child.join()
        for channel in (*channels, *([helper, back] if two else [])):
            channel.close()
    if failure is not None:
        raise failure
    return summary


_M_MMAP_THRESHOLD = -3  # mallopt's parameters (glibc's malloc.h)
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_BYTES = 256 * 1024


def _glibc(name: str) -> Any:
    """The C library's function ``name`` when that library is glibc, else None."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        return getattr(ctypes.CDLL(None), name)
    except (ValueError, OSError, AttributeError):  # not glibc
        return None


def _bound_malloc() -> None:
    """Have glibc's malloc give the import's large short-lived buffers back to the system.

    Each block is a few MB at a time in one buffer or list (the lines, the encoded batch,
    its pickle on a queue, unpickled by the writer). glibc serves an allocation that large
    with a mapping of its own, released when freed, but raises that threshold to the size
    of every such buffer freed (up to 32 MB), so from the first block on they were carved
    from the heap, whose free space then stayed scattered between the long-lived objects
    (the visit book, caches): about 40 MiB per process at 1,000,000 lines (issue 24). A
    fixed threshold (which turns the raising off) keeps them out of the heap. One arena
    per process, not one more per thread that allocates (the queues' feeder threads, the
    writer's executor): their heaps held free space of their own. Inherited by the
    parsing processes; a no-op where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_ARENA_MAX, 1)


def _heap_trimmer() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)`` (a no-op elsewhere), which each process calls once per
    block: a block's short-lived objects leave free space between long-lived ones (the
    visit book, caches, SQLite's pages) that glibc otherwise gives back only from the top
    of its heap; this gives the free pages anywhere in it back (issue 24: 11 MiB less at
    the peak of a 1,000,000-line import, its CPU within the runs' noise)."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return _nothing
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return partial(trim, 0)


def _nothing() -> None:
    return None


_trim_heap = _heap_trimmer()


def _load_shared_data() -> None:
    """Load the country database and the user-agent parser here, before the parsing
    processes are forked, and freeze what this process holds (``gc.freeze``): the
    children then share those pages with it instead of loading a copy each (about 70 MB
    per process), and their garbage collector does not write to them."""
    country_iso_code("192.0.2.1")
    parse_user_agent("Mozilla/5.0 (X11; Linux x86_64)")
    gc.freeze()


def _receive(channel: Any, child: Any) -> tuple[Any, ...]:
    """The parsing process's next message; an error message if it died without one."""
    while True:
        try:
            message: tuple[Any, ...] = channel.get(timeout=_POLL_S)
            return message
        except queue.Empty:
            if not child.is_alive():
                try:
                    message = channel.get(timeout=_POLL_S)
                    return message
                except queue.Empty:
                    return (
                        "error",
                        RuntimeError(
                            f"the parsing process ended (exit code {child.exitcode})"
                            " before the end of the files"
                        ),
                    )


class _Writer:
    """Batches to the store in order of arrival, up to ``in_flight`` at once.

    Lines count as imported (the progress shown) only once every batch up to theirs is
    acknowledged durably. The embedded store commits each batch, and fsyncs about once a
    second (:data:`SYNC_EVERY_S`) and the last batch: an fsync in WAL mode makes every
    earlier commit durable too, so the progress never claims a line a power cut could
    take back, and a crash of any process loses no commit at all."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        summary: Summary,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._store = store
        self._summary = summary
        self._progress = progress
        self._shipper = Shipper(settings, store)  # its dead-letter file and backoff cap
        self._stop = asyncio.Event()
        self._backoff_max_s = float(settings.ship_backoff_max_s)
        self._in_flight = _BULK_IN_FLIGHT if settings.uses_elasticsearch else 1
        self._tasks: list[tuple[asyncio.Task[None], int, bool]] = []
        self._held: tuple[list[Any], int] | None = None  # the latest batch, not yet sent
        self._synced_at = time.monotonic()

    async def add(self, batch: list[Any], summaries: list[Any], read: int) -> None:
        """Write the summaries of the visits that ended with the batch (now, in block
        order: each replaces the one stored, which ``_bulk`` requests in flight at once
        could swap), then the batch before this one (the last one is written durably by
        :meth:`finish`), holding this one."""
        if summaries:
            await self._write(summaries, durable=False, counted=False)
        held, self._held = self._held, (batch, read)
        if held is not None:
            durable = time.monotonic() - self._synced_at >= SYNC_EVERY_S
            if durable:
                self._synced_at = time.monotonic()
            await self._send(*held, durable)

    async def _send(self, batch: list[Any], read: int, durable: bool) -> None:
        while len(self._tasks) >= self._in_flight:
            await self._complete_first()
        self._tasks.append((asyncio.create_task(self._write(batch, durable)), read, durable))

    async def _complete_first(self) -> None:
        task, read, durable = self._tasks[0]
        await task
        self._tasks.pop(0)
        if durable and self._progress is not None:
            self._progress(read)

    async def finish(self) -> None:
        """Write the held batch durably and wait for every write."""
        if self._held is not None:
            await self._send(*self._held, True)
            self._held = None
        while self._tasks:
            await self._complete_first()

    def cancel(self) -> None:
        for task, _, _ in self._tasks:
            task.cancel()

    async def _write(self, batch: list[Any], durable: bool, counted: bool = True) -> None:
        """Store the batch: again, after a pause, what the store could not take now;
        ``counted``: its documents are lines read (not visit summaries)."""
        todo = batch
        delay = 0.2
        while todo:
            try:
                result = await self._store.write_encoded(todo, durable=durable)
            except StoreUnavailable as exc:
                reason = exc.message
            else:
                if counted:
                    self._summary.stored += result.stored
                    self._summary.already += result.already
                retry = [todo[i] for i, outcome in result.failed if outcome.retriable]
                refused = [(todo[i], o) for i, o in result.failed if not o.retriable]
                if refused:
                    self._dead_letter(refused)
                if not retry:
                    return
                reason = next(o.reason for _, o in result.failed if o.retriable) or "retriable"
                todo = retry
            self._shipper.stats.retries += 1
            log.warning(
                "import_retry documents=%d delay_s=%.1f reason=%s", len(todo), delay, reason
            )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max_s)

    def _dead_letter(self, refused: list[tuple[Any, WriteOutcome]]) -> None:
        documents = []
        for item, outcome in refused:
            documents.append((_refused_document(item, outcome.id), outcome.reason or "refused"))
        self._shipper.dead_letter(documents)
        self._summary.dead_letters += len(documents)


def _refused_document(item: Any, doc_id: str) -> Document:
    """The document of an encoded item the store refused, for the dead-letter file: a
    ``_bulk`` item is ``(id, action line + document line)``; a row holds its JSON."""
    if isinstance(item[1], bytes):
        source = orjson.loads(item[1].split(b"\n", 2)[1])
    else:
        source = orjson.loads(item[8])
    return Document(id=doc_id, timestamp_ms=0, dataset=DATASET, source=source)
