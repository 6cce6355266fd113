"""Getting access-log lines in: ``metronome import``, ``metronome ship`` and ``restore``.

All three turn lines into documents with :mod:`metronome.logs.parse` (the configured
``METRONOME_LOG_FORMAT`` and ``METRONOME_URL_RULES``), write lines that cannot be parsed
to ``<data dir>/rejects.ndjson`` with the reason, and count what they did.

- ``import`` (history) writes straight to the store in bulk, with the shipper's retries
  and dead letters. Ids come from the line's content, its time and how many identical
  lines came before it in the same second, so importing the same file twice (even a
  copy, or gzipped) stores each line once.
- ``ship`` (live files) follows files, appends to the durable spool like ticks (a running
  ``metronome serve`` or ``metronome worker`` ships it), and archives raw lines to S3 when
  ``METRONOME_S3_BUCKET`` is set. Ids come from the file's identity and the line's offset.
- ``restore`` re-indexes archived hours; ids come from the object key and offset, so
  restoring twice stores nothing new. Restore into a store that no longer holds those
  hours (after retention, or a new cluster): hours still present would count twice.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from metronome.config import Settings
from metronome.events.document import Document
from metronome.events.enrich import flag_referrer_spam, stored_address
from metronome.events.visitor import VisitorIds
from metronome.logs.parse import ParsedLine, Reject, build_log_document, compile_format
from metronome.logs.rules import UrlRules

__all__ = [
    "LineConverter",
    "Summary",
    "import_files",
    "open_lines",
    "restore_archive",
    "ship_files",
]

log = logging.getLogger("metronome.ship")

REJECTS = "rejects.ndjson"
_BATCH = 1000


@dataclass
class Summary:
    """What a run did; ``line()`` is the one-line summary the CLI prints."""

    read: int = 0
    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    bots: int = 0
    dead_letters: int = 0

    def line(self, verb: str = "stored") -> str:
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.rejected.most_common())
        text = f"read {self.read} lines, {verb} {self.stored}, rejected {rejected}"
        if reasons:
            text += f" ({reasons})"
        text += f", bots {self.bots}"
        if self.dead_letters:
            text += f", dead letters {self.dead_letters}"
        return text


class LineConverter:
    """One line to one document (or a reject written to the reject file)."""

    def __init__(self, settings: Settings) -> None:
        self._parser = compile_format(settings.log_format)
        self._rules = UrlRules.parse(settings.url_rules)
        self._trusted = settings.trusted_proxies
        self._visitors = VisitorIds(settings.data_dir)
        self._client_ip = settings.client_ip
        self._blocklist = settings.referrer_blocklist
        self._site_id = settings.log_site
        self._rejects_path = Path(settings.data_dir) / REJECTS
        self._rejects: IO[bytes] | None = None
        self.summary = Summary()

    def convert(
        self, text: str, source_id: str | None, offset: int | None, received_ms: int
    ) -> tuple[Document | None, ParsedLine | None]:
        """Parse and build, counting the line; rejects go to the reject file."""
        self.summary.read += 1
        parsed = self._parser.parse(text)
        if isinstance(parsed, Reject):
            self.reject(parsed, text, source_id, offset)
            return None, None
        return self.document(parsed, source_id, offset, received_ms), parsed

    def parse(self, text: str) -> ParsedLine | Reject:
        self.summary.read += 1
        return self._parser.parse(text)

    def document(
        self, parsed: ParsedLine, source_id: str | None, offset: int | None, received_ms: int
    ) -> Document:
        document = build_log_document(
            parsed,
            source_id=source_id,
            offset=offset,
            rules=self._rules,
            trusted_proxies=self._trusted,
            received_ms=received_ms,
            visitors=self._visitors,
            site_id=self._site_id,
        )
        source = document.source
        if source["bot"]:
            self.summary.bots += 1
        flag_referrer_spam(source, self._blocklist)
        if self._client_ip != "keep" and "source" in source:
            kept = stored_address(source["source"]["ip"], self._client_ip)
            if kept is None:
                del source["source"]
            else:
                source["source"] = {"ip": kept}
        return document

    def reject(self, reject: Reject, text: str, source_id: str | None, offset: int | None) -> None:
        self.summary.rejected[reject.reason] += 1
        if self._rejects is None:
            self._rejects_path.parent.mkdir(parents=True, exist_ok=True)
            self._rejects = open(self._rejects_path, "ab")  # noqa: SIM115
        self._rejects.write(
            orjson.dumps(
                {
                    "time": time.time(),
                    "reason": reject.reason,
                    "message": reject.message,
                    "source": source_id,
                    "offset": offset,
                    "line": text[:8192],
                }
            )
            + b"\n"
        )

    def close(self) -> None:
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None


def open_lines(path: str) -> Iterator[str]:
    """Lines of a plain or gzipped file, or of standard input for ``-``."""
    if path == "-":
        stream: IO[bytes] | io.BufferedIOBase = sys.stdin.buffer
        close = False
    else:
        raw = open(path, "rb")  # noqa: SIM115
        stream = gzip.GzipFile(fileobj=raw) if raw.read(2) == b"\x1f\x8b" else raw
        raw.seek(0)
        close = True
    try:
        # typeshed wants a raw stream for BufferedReader; anything with readinto works
        lines = io.BufferedReader(stream) if close else stream  # type: ignore[type-var]
        for raw_line in lines:
            text = raw_line.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace")
            if text.strip():
                yield text
    finally:
        if close:
            stream.close()


class _Occurrences:
    """How many identical lines with the same timestamp came before (a 10-minute window)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[int, str], int] = {}
        self._newest = 0

    def next(self, timestamp_ms: int, text: str) -> int:
        key = (timestamp_ms, text)
        n = self._counts.get(key, 0)
        self._counts[key] = n + 1
        if timestamp_ms > self._newest + 600_000:
            self._newest = timestamp_ms
            self._counts = {k: v for k, v in self._counts.items() if k[0] >= timestamp_ms - 600_000}
        return n


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
            before = self._shipper.stats.dead_letters
            await self._shipper.store_documents(batch, self._stop)
            dead = self._shipper.stats.dead_letters - before
            self._summary.dead_letters += dead
            self._summary.stored += len(batch) - dead
        if self._progress:
            self._progress(self._summary.read)


@asynccontextmanager
async def _into_store(
    settings: Settings, progress: Callable[[int], None] | None
) -> AsyncIterator[tuple[LineConverter, _BulkTarget]]:
    """The store (schema installed), a line converter and a bulk target; all closed after."""
    from metronome.pipeline.shipper import Shipper
    from metronome.store import open_store

    store = open_store(settings)
    await store.open()
    converter = LineConverter(settings)
    try:
        await store.ensure_schema()
        target = _BulkTarget(Shipper(settings, store), converter.summary, progress)
        yield converter, target
        await target.flush()
    finally:
        converter.close()
        await store.close()


async def import_files(
    settings: Settings, paths: Iterable[str], *, progress: Callable[[int], None] | None = None
) -> Summary:
    """Parse history files and store their lines in bulk; see the module docstring."""
    received_ms = int(time.time() * 1000)
    async with _into_store(settings, progress) as (converter, target):
        for path in paths:
            occurrences = _Occurrences()
            for text in open_lines(path):
                parsed = converter.parse(text)
                if isinstance(parsed, Reject):
                    converter.reject(parsed, text, path, None)
                    continue
                n = occurrences.next(parsed.timestamp_ms, text)
                await target.add(converter.document(parsed, text, n, received_ms))
    return converter.summary


async def restore_archive(
    settings: Settings, start: Any, end: Any, *, progress: Callable[[int], None] | None = None
) -> Summary:
    """Re-index archived raw lines of the hours in ``[start, end)`` into the store."""
    from metronome.logs.archive import make_client, read_lines, restore_keys

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
) -> Summary:
    """Follow ``paths`` until ``stop``: spool their lines, archive them, save positions."""
    from metronome.logs.follow import Follower, PositionFile
    from metronome.pipeline.records import encode_many
    from metronome.pipeline.spool import SpoolWriter, spool_dir

    converter = LineConverter(settings)
    positions = PositionFile(Path(settings.data_dir) / "ship-positions.json")
    saved = positions.load()
    followers = {
        str(p): Follower(p, saved.get(str(p.resolve())) or saved.get(str(p)), from_end=from_end)
        for p in paths
    }
    writer = SpoolWriter(
        spool_dir(settings.data_dir),
        segment_max_bytes=settings.spool_segment_bytes,
        max_total_bytes=settings.spool_max_bytes,
    )
    archiver = None
    if settings.s3_bucket:
        from metronome.logs.archive import Archiver, make_client

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
            for follower in followers.values():
                lines = follower.read()
                if not lines:
                    continue
                received_ms = int(time.time() * 1000)
                documents = []
                for line in lines:
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
    from metronome.errors import SpoolFull

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
    from metronome.logs.follow import Position

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
