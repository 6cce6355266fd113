"""Access-log inputs: ``metronome import``, ``metronome ship`` and ``restore``.

All three turn lines into documents with :class:`metronome.logs.ingest.LineConverter` (the
configured ``METRONOME_LOG_FORMAT`` and ``METRONOME_URL_RULES``; lines that cannot be
parsed go to ``<data dir>/rejects.ndjson`` with the reason) and count what they did.

- ``import`` (history) writes straight to the store in bulk, with the shipper's retries
  and dead letters, while a second process parses
  (:mod:`metronome.pipeline.import_process`). Ids come from the line's content and its
  line number in the file, so importing the same file twice (even a copy, or gzipped,
  or after more lines were appended) stores each line once, while identical lines (two
  requests in the same second) are different events however far apart they are. The
  summary tells lines stored now from lines the store already had; a rejected line is
  added to the reject file once, however often it is imported.
- ``ship`` (live files) follows files, appends to the durable spool like ticks (a running
  ``metronome serve`` or ``metronome worker`` ships it), and archives raw lines to S3 when
  ``METRONOME_S3_BUCKET`` is set. Ids come from the file's identity and the line's offset.
- ``restore`` re-indexes archived hours; ids come from the object key and offset, so
  restoring twice stores nothing new. Restore into a store that no longer holds those
  hours (after retention, or a new cluster): hours still present would count twice.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from metronome.config import Settings
from metronome.errors import SpoolFull
from metronome.events.document import Document
from metronome.logs.archive import Archiver, make_client, read_lines, restore_keys
from metronome.logs.follow import Follower, Position, PositionFile
from metronome.logs.formats import AUTO, Detection, UnknownFormat, compile_format, detect
from metronome.logs.formats.detect import SAMPLE_LINES
from metronome.logs.ingest import LineConverter, Summary, open_lines
from metronome.logs.parse import LineParser
from metronome.pipeline.import_process import import_in_two_processes
from metronome.pipeline.records import encode_many
from metronome.pipeline.shipper import Shipper
from metronome.pipeline.spool import SpoolWriter, spool_dir
from metronome.store import open_store

__all__ = ["check_readable", "import_files", "restore_archive", "ship_files"]

log = logging.getLogger("metronome.ship")

_BATCH = 1000


class _BulkTarget:
    """Documents to the store in batches, with the shipper's retries and dead letters."""

    def __init__(
        self, shipper: Any, summary: Summary, progress: Callable[[int], None] | None
    ) -> None:
        self._shipper = shipper
        self._summary = summary
        self._progress = progress
        self._stop = asyncio.Event()
        self._batch: list[Document] = []

    async def add(self, document: Document) -> None:
        self._batch.append(document)
        if len(self._batch) >= _BATCH:
            await self.flush()

    async def flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            stats = self._shipper.stats
            dead_before, already_before = stats.dead_letters, stats.already_stored
            # visits across the whole import: one book for the run, in memory
            book = self._shipper.visit_book(persistent=False)
            assigned = book.assign(batch)
            await self._shipper.store_documents(assigned.documents[: len(batch)], self._stop)
            dead = stats.dead_letters - dead_before
            already = stats.already_stored - already_before
            self._summary.dead_letters += dead
            self._summary.already += already
            self._summary.stored += len(batch) - dead - already
            await self._shipper.store_documents(assigned.documents[len(batch) :], self._stop)
            book.commit(assigned)
        if self._progress:
            self._progress(self._summary.read)

    def close(self) -> None:
        self._shipper.close()


@asynccontextmanager
async def _into_store(
    settings: Settings, progress: Callable[[int], None] | None
) -> AsyncIterator[tuple[LineConverter, _BulkTarget]]:
    """The store (schema installed), a line converter and a bulk target; all closed after."""
    async with open_store(settings) as store:
        converter = LineConverter(settings)
        target: _BulkTarget | None = None
        try:
            await store.ensure_schema()
            target = _BulkTarget(Shipper(settings, store), converter.summary, progress)
            yield converter, target
            await target.flush()
        finally:
            converter.close()
            if target is not None:
                target.close()


async def import_files(
    settings: Settings,
    paths: Iterable[str],
    *,
    progress: Callable[[int], None] | None = None,
    on_detect: Callable[[str, Detection], None] | None = None,
) -> Summary:
    """Parse history files and store their lines in bulk; see the module docstring.

    With ``METRONOME_LOG_FORMAT=auto`` (the default) each file's format is recognised from
    its first lines (``on_detect`` hears which and why) before any line is stored: a file
    that is not an access log raises :class:`~metronome.logs.formats.UnknownFormat`
    naming it, and nothing is imported."""
    paths = list(paths)
    detections: dict[str, Detection | None] = {}
    if settings.log_format.strip().lower() == AUTO:
        for path in paths:
            if path != "-":
                detections[path] = _detect(path, _head(path, settings.max_line_bytes), settings)
                if on_detect is not None and detections[path] is not None:
                    on_detect(path, detections[path])  # type: ignore[arg-type]
    async with open_store(settings) as store:
        await store.ensure_schema()
        return await import_in_two_processes(
            settings,
            store,
            paths,
            detections,
            lambda path, head: _detect(path, head, settings),
            progress=progress,
            on_detect=on_detect,
        )


def _head(path: str, max_line_bytes: int) -> list[str]:
    """The first lines of a file, to recognise its format from (over-long ones left out)."""
    try:
        head = itertools.islice(open_lines(path, max_line_bytes), SAMPLE_LINES)
        return [text for _, text in head if text is not None]
    except (EOFError, gzip.BadGzipFile) as exc:
        message = str(exc) if str(exc).startswith("damaged") else f"damaged gzip file ({exc})"
        raise OSError(errno.EIO, message, path) from exc


def _detect(path: str, head: list[str], settings: Settings) -> Detection | None:
    """The format of a file from its first lines (None when it has none yet)."""
    if not any(line.strip() for line in head):
        return None
    try:
        return detect(head, settings.log_tz)
    except UnknownFormat as exc:
        raise UnknownFormat(f"{path}: {exc}") from None


def check_readable(path: str) -> None:
    """Raise OSError (naming the file) unless ``path`` is ``-`` or a file that can be read:
    checked for every file before the first is imported."""
    if path == "-":
        return
    if Path(path).is_dir():
        raise IsADirectoryError(21, "Is a directory", path)
    with open(path, "rb") as handle:
        handle.read(1)


async def restore_archive(
    settings: Settings, start: Any, end: Any, *, progress: Callable[[int], None] | None = None
) -> Summary:
    """Re-index archived raw lines of the hours in ``[start, end)`` into the store."""

    if not settings.s3_bucket:
        raise ValueError("METRONOME_S3_BUCKET is not set: there is no archive to restore")
    client = make_client(settings.s3_endpoint_url, settings.s3_region)
    received_ms = int(time.time() * 1000)
    async with _into_store(settings, progress) as (converter, target):
        for key in restore_keys(client, settings.s3_bucket, settings.s3_prefix, start, end):
            for text, offset in read_lines(client, settings.s3_bucket, key):
                document, _ = converter.convert(text, f"s3:{key}", offset, received_ms)
                if document is not None:
                    await target.add(document)
            await target.flush()
    return converter.summary


async def ship_files(
    settings: Settings,
    paths: list[Path],
    stop: asyncio.Event,
    *,
    from_end: bool = False,
    poll_s: float = 0.25,
    on_batch: Callable[[Summary], None] | None = None,
    on_detect: Callable[[str, Detection], None] | None = None,
) -> Summary:
    """Follow ``paths`` until ``stop``: spool their lines, archive them, save positions.

    With ``METRONOME_LOG_FORMAT=auto`` each file that has lines already has its format
    recognised from them first (``on_detect`` hears which; a file that is not an access
    log raises :class:`~metronome.logs.formats.UnknownFormat` before anything is
    spooled); each file keeps its own parser, which goes on recognising line by line."""

    converter = LineConverter(settings)
    parsers: dict[str, LineParser] = {}
    if settings.log_format.strip().lower() == AUTO:
        for path in paths:
            head = _head(str(path), settings.max_line_bytes) if path.is_file() else []
            detection = _detect(str(path), head, settings)
            if detection is not None:
                parsers[str(path)] = detection.parser
                if on_detect is not None:
                    on_detect(str(path), detection)
            else:  # nothing to recognise yet: the first lines will say
                parsers[str(path)] = compile_format(AUTO, settings.log_tz)
    positions = PositionFile(Path(settings.data_dir) / "ship-positions.json")
    saved = positions.load()
    followers = {
        str(p): Follower(
            p,
            saved.get(str(p.resolve())) or saved.get(str(p)),
            from_end=from_end,
            max_line_bytes=settings.max_line_bytes,
        )
        for p in paths
    }
    writer = SpoolWriter(
        spool_dir(settings.data_dir),
        segment_max_bytes=settings.spool_segment_bytes,
        max_total_bytes=settings.spool_max_bytes,
    )
    archiver = None
    if settings.s3_bucket:
        archiver = Archiver(
            make_client(settings.s3_endpoint_url, settings.s3_region),
            settings.s3_bucket,
            settings.s3_prefix,
            host=socket.gethostname(),
            state_path=Path(settings.data_dir) / "archive-state.json",
        )
    try:
        while True:
            moved = 0
            for name, follower in followers.items():
                lines = follower.read()
                if not lines:
                    continue
                if name in parsers:
                    converter.use(parsers[name])
                received_ms = int(time.time() * 1000)
                documents = []
                for line in lines:
                    if line.too_long:
                        identity = f"{line.source_id}\0{line.offset}"
                        converter.too_long(line.source_id, line.offset, identity=identity)
                        continue
                    document, parsed = converter.convert(
                        line.text, line.source_id, line.offset, received_ms
                    )
                    if document is not None:
                        documents.append(document)
                    if archiver is not None:
                        ts = parsed.timestamp_ms if parsed else received_ms
                        archiver.add(line.text, ts, line.source_id, line.offset)
                await _append_retrying(writer, encode_many(documents), stop)
                converter.summary.stored += len(documents)
                follower.commit()
                moved += len(lines)
            if archiver is not None:
                try:
                    archiver.flush(force=stop.is_set())
                except Exception as exc:  # noqa: BLE001 - S3 down: keep shipping, retry later
                    log.warning("archive_flush_failed reason=%s", exc)
            _save_positions(positions, followers, archiver)
            if moved and on_batch:
                on_batch(converter.summary)
            if stop.is_set():
                break
            if not moved:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=poll_s)
                except TimeoutError:
                    pass
    finally:
        for follower in followers.values():
            follower.close()
        writer.close()
        converter.close()
    return converter.summary


async def _append_retrying(writer: Any, records: list[bytes], stop: asyncio.Event) -> None:

    delay = 0.5
    while records:
        try:
            await writer.append(records)
            return
        except SpoolFull:  # the store is far behind: wait rather than drop lines
            if stop.is_set():
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _save_positions(positions: Any, followers: dict[str, Any], archiver: Any) -> None:

    states = {}
    for path, follower in followers.items():
        state = follower.state
        if state is None:
            continue
        offset = state.offset
        if archiver is not None:  # lines only buffered for the archive must be read again
            pending = archiver.pending_offset(f"{state.dev}:{state.ino}:{state.generation}")
            if pending is not None:
                offset = min(offset, pending)
        states[path] = Position(state.dev, state.ino, state.generation, offset)
    positions.save(states)
