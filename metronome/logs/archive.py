"""The raw access-log archive on S3 (or MinIO), and reading it back for a restore.

Raw access-log lines are kept, gzip-compressed, one object per chunk, under::

    <prefix>/<YYYY>/<MM>/<DD>/<HH>/<host>-<chunk id>.gz

- ``<prefix>``: the archive's key prefix, without leading or trailing ``/``;
- ``<YYYY>/<MM>/<DD>/<HH>``: the UTC hour of the lines (:data:`TIME_SLICE_FORMAT`);
- ``<host>``: the name of the machine that wrote the object;
- ``<chunk id>``: 32 lowercase hexadecimal digits naming the chunk.

Two writers produce exactly this layout, so a restore reads both the same way:

- Fluentd's ``out_s3`` (``fluentd/fluent.conf``), with ``path <prefix>/``,
  ``time_slice_format %Y/%m/%d/%H`` in UTC (``timekey 3600``, ``timekey_use_utc true``)
  and ``s3_object_key_format`` :data:`FLUENTD_S3_OBJECT_KEY_FORMAT`: the host is the
  container's host name, the chunk id is the Fluentd buffer chunk's id (32 hex digits;
  stable across retries of one chunk, so a retried upload overwrites its own object);
- Metronome's :class:`Archiver`: the host is given (normally the machine's host name), the
  chunk id is :func:`chunk_id` of the log file's identity (``<dev>:<inode>:<generation>``,
  see :mod:`metronome.logs.follow`) and the byte offset of the chunk's first line. The same
  lines always land under the same key, so an archiver that restarts after an upload but
  before recording it overwrites that object rather than adding a second copy.

Each object is a gzip stream of raw lines, each ending with ``\\n``. A line is named forever
by ``(object key, byte offset of the line in the decompressed object)``
(:func:`read_lines`): whoever re-indexes an archive derives document ids from that pair, so
restoring the same hours twice stores nothing new.

``Archiver`` also keeps a small JSON state file recording, per source, the offset of the
last line it has uploaded; lines at or below it are skipped after a restart, so nothing is
archived twice. Each chunk is uploaded first and recorded second.

Only this module talks to S3; it uses boto3, configured by :func:`make_client`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PREFIX",
    "FLUENTD_S3_OBJECT_KEY_FORMAT",
    "KEY_PATTERN",
    "TIME_SLICE_FORMAT",
    "ArchiveKey",
    "Archiver",
    "chunk_id",
    "make_client",
    "object_key",
    "parse_key",
    "read_lines",
    "restore_keys",
]

#: ``strftime`` format of the hour part of a key; Fluentd's ``time_slice_format``.
TIME_SLICE_FORMAT = "%Y/%m/%d/%H"

#: Fluentd ``out_s3``'s ``s3_object_key_format`` that yields :func:`object_key`'s layout:
#: ``%{path}`` is ``<prefix>/``, ``%{time_slice}`` the hour in :data:`TIME_SLICE_FORMAT`,
#: ``#{Socket.gethostname}`` the host (evaluated when Fluentd reads its configuration),
#: ``${chunk_id}`` the buffer chunk's id and ``%{file_extension}`` ``gz`` (``store_as gzip``).
FLUENTD_S3_OBJECT_KEY_FORMAT = (
    "%{path}%{time_slice}/#{Socket.gethostname}-${chunk_id}.%{file_extension}"
)

#: Key prefix used when none is configured (Fluentd's default for ``METRONOME_S3_PREFIX``).
DEFAULT_PREFIX = "metronome/access"

#: A key of the archive: prefix, hour, host and chunk id as groups.
KEY_PATTERN = re.compile(
    r"^(?P<prefix>.+)/(?P<hour>\d{4}/\d{2}/\d{2}/\d{2})/"
    r"(?P<host>[^/]+)-(?P<chunk>[0-9a-f]{32})\.gz$"
)

_HOUR_MS = 3_600_000
_CONTENT_TYPE = "application/x-gzip"  # what Fluentd's out_s3 sets for store_as gzip
_STATE_VERSION = 1

S3Client = Any  # a boto3 S3 client (botocore generates its type at run time)


# --- key layout ------------------------------------------------------------------------


def _prefix(prefix: str) -> str:
    cleaned = prefix.strip("/")
    if not cleaned:
        raise ValueError("the archive prefix must not be empty")
    return cleaned


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _hour_of(moment: datetime) -> datetime:
    return _utc(moment).replace(minute=0, second=0, microsecond=0)


def chunk_id(source_id: str, first_offset: int) -> str:
    """The id of the chunk of ``source_id`` that starts with the line at ``first_offset``.

    32 hexadecimal digits, like a Fluentd buffer chunk id, and always the same for the
    same pair, so re-uploading a chunk rewrites the same object.
    """
    digest = hashlib.blake2b(f"{source_id}\x00{first_offset}".encode(), digest_size=16)
    return digest.hexdigest()


def object_key(prefix: str, hour: datetime, host: str, chunk_id: str) -> str:
    """``<prefix>/<YYYY>/<MM>/<DD>/<HH>/<host>-<chunk id>.gz`` (``hour`` in UTC)."""
    if not host or "/" in host:
        raise ValueError(f"invalid host name for an archive key: {host!r}")
    if not re.fullmatch(r"[0-9a-f]{32}", chunk_id):
        raise ValueError(f"a chunk id is 32 lowercase hex digits, got {chunk_id!r}")
    return f"{_prefix(prefix)}/{_hour_of(hour).strftime(TIME_SLICE_FORMAT)}/{host}-{chunk_id}.gz"


@dataclass(frozen=True, slots=True)
class ArchiveKey:
    prefix: str
    hour: datetime  # aware, UTC
    host: str
    chunk_id: str


def parse_key(key: str) -> ArchiveKey | None:
    """The parts of an archive key, or ``None`` if ``key`` does not follow the layout."""
    match = KEY_PATTERN.match(key)
    if match is None:
        return None
    try:
        hour = datetime.strptime(match["hour"], TIME_SLICE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return ArchiveKey(match["prefix"], hour, match["host"], match["chunk"])


# --- writing ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Chunk:
    source_id: str
    hour_ms: int  # start of the chunk's UTC hour, epoch milliseconds
    first_offset: int
    created: float  # clock() when the first line arrived
    last_offset: int = -1
    size: int = 0
    parts: list[bytes] = field(default_factory=list)
    sealed: bool = False  # no further line will join it


class _State:
    """``{"version": 1, "sources": {source_id: {"offset": N, "at": epoch_s}}}``, replaced
    atomically; entries untouched for ``ttl_s`` are dropped when it is next written."""

    def __init__(self, path: Path, ttl_s: float) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self.sources: dict[str, dict[str, float]] = {}
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise ValueError(f"archive state file {path} is not valid JSON: {exc}") from None
        if raw.get("version") != _STATE_VERSION:
            raise ValueError(
                f"archive state file {path} has unknown version {raw.get('version')!r}"
            )
        self.sources = {k: dict(v) for k, v in raw.get("sources", {}).items()}

    def offset(self, source_id: str) -> int | None:
        entry = self.sources.get(source_id)
        return None if entry is None else int(entry["offset"])

    def record(self, source_id: str, offset: int, now: float) -> None:
        self.sources[source_id] = {"offset": offset, "at": now}
        self.sources = {k: v for k, v in self.sources.items() if now - v["at"] <= self.ttl_s}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as handle:
            json.dump({"version": _STATE_VERSION, "sources": self.sources}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


class Archiver:
    """Buffers raw lines per source and UTC hour, and uploads them as gzip objects.

    Lines of one source must be added in increasing offset order (as
    :class:`~metronome.logs.follow.Follower` reads them). A chunk holds consecutive lines
    of one source in one hour: a line of another hour, or one that would make the chunk
    larger than ``max_chunk_bytes``, starts the next chunk. So each source's chunks cover
    consecutive offset ranges, are uploaded in that order, and the state file can record
    a single offset per source.

    Not thread-safe: use one archiver from one thread.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        *,
        host: str,
        state_path: str | os.PathLike[str],
        max_chunk_bytes: int = 8 << 20,
        max_chunk_age_s: float = 300,
        state_ttl_s: float = 30 * 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_chunk_bytes < 1:
            raise ValueError("max_chunk_bytes must be positive")
        object_key(prefix, datetime(2000, 1, 1), host, "0" * 32)  # validates prefix and host
        self.client = client
        self.bucket = bucket
        self.prefix = _prefix(prefix)
        self.host = host
        self.max_chunk_bytes = max_chunk_bytes
        self.max_chunk_age_s = max_chunk_age_s
        self._clock = clock
        self._state = _State(Path(state_path), state_ttl_s)
        self._chunks: dict[str, list[_Chunk]] = {}  # per source, in offset order
        self._seen: dict[str, int] = {}  # highest offset added (or uploaded) per source

    def uploaded_offset(self, source_id: str) -> int | None:
        """Offset of the last line of ``source_id`` safely archived (``None``: none yet)."""
        return self._state.offset(source_id)

    def pending_offset(self, source_id: str) -> int | None:
        """Offset of the first line of ``source_id`` still only in memory (``None``: none).

        A log follower may save its position only up to this line.
        """
        chunks = self._chunks.get(source_id)
        return chunks[0].first_offset if chunks else None

    @property
    def pending_bytes(self) -> int:
        """Raw bytes buffered and not yet uploaded."""
        return sum(c.size for chunks in self._chunks.values() for c in chunks)

    def add(self, line: str, timestamp_ms: int, source_id: str, offset: int) -> bool:
        """Buffer one raw line (without its newline); ``False`` if it is already archived
        or already buffered (its offset is at or below one seen before for the source)."""
        seen = self._seen.get(source_id)
        if seen is None:
            uploaded = self._state.offset(source_id)
            seen = -1 if uploaded is None else uploaded
        if offset <= seen:
            return False
        text = line.rstrip("\r\n")
        if "\n" in text:
            raise ValueError("a raw log line cannot contain a newline")
        try:  # surrogateescape gives back the bytes of a line decoded that way
            raw = text.encode("utf-8", errors="surrogateescape") + b"\n"
        except UnicodeEncodeError:
            raw = text.encode("utf-8", errors="replace") + b"\n"
        hour_ms = timestamp_ms - timestamp_ms % _HOUR_MS
        chunks = self._chunks.setdefault(source_id, [])
        current = chunks[-1] if chunks and not chunks[-1].sealed else None
        if current is not None and (
            current.hour_ms != hour_ms or current.size + len(raw) > self.max_chunk_bytes
        ):
            current.sealed = True
            current = None
        if current is None:
            current = _Chunk(source_id, hour_ms, offset, self._clock())
            chunks.append(current)
        current.parts.append(raw)
        current.size += len(raw)
        current.last_offset = offset
        self._seen[source_id] = offset
        return True

    def _ready(self, chunk: _Chunk, now: float) -> bool:
        return (
            chunk.sealed
            or now * 1000 >= chunk.hour_ms + _HOUR_MS
            or chunk.size >= self.max_chunk_bytes
            or now - chunk.created >= self.max_chunk_age_s
        )

    def flush(self, force: bool = False) -> list[str]:
        """Upload every chunk that is complete (its hour has ended, it is full, it is older
        than ``max_chunk_age_s``, or a later line sealed it), or every chunk if ``force``;
        return the keys written.

        Each upload is recorded in the state file right after it succeeds. If an upload
        fails, the error propagates and that chunk (and the later ones of its source) stay
        buffered for the next call.
        """
        now = self._clock()
        keys: list[str] = []
        for source_id in list(self._chunks):
            chunks = self._chunks[source_id]
            while chunks and (force or self._ready(chunks[0], now)):
                chunk = chunks[0]
                keys.append(self._upload(chunk))
                chunks.pop(0)
                self._state.record(source_id, chunk.last_offset, now)
            if not chunks:
                del self._chunks[source_id]
        return keys

    def _upload(self, chunk: _Chunk) -> str:
        hour = datetime.fromtimestamp(chunk.hour_ms / 1000, UTC)
        key = object_key(
            self.prefix, hour, self.host, chunk_id(chunk.source_id, chunk.first_offset)
        )
        # mtime=0: the same lines always compress to the same bytes
        body = gzip.compress(b"".join(chunk.parts), compresslevel=6, mtime=0)
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=_CONTENT_TYPE,
            Metadata={"source": chunk.source_id, "first-offset": str(chunk.first_offset)},
        )
        return key


# --- reading ---------------------------------------------------------------------------


def restore_keys(
    client: S3Client,
    bucket: str,
    prefix: str,
    start: datetime,
    end: datetime,
    *,
    page_size: int = 1000,
) -> Iterator[str]:
    """Keys of the archive objects of every UTC hour that overlaps ``[start, end)``.

    Hour by hour, oldest first, each hour's keys in S3's (lexicographic) order; listings are
    paginated. Naive datetimes are taken as UTC. Objects not ending in ``.gz`` and keys
    nested below an hour are ignored.
    """
    base = _prefix(prefix)
    stop = _utc(end)
    hour = _hour_of(start)
    paginator = client.get_paginator("list_objects_v2")
    while hour < stop:
        hour_prefix = f"{base}/{hour.strftime(TIME_SLICE_FORMAT)}/"
        pages = paginator.paginate(
            Bucket=bucket, Prefix=hour_prefix, PaginationConfig={"PageSize": page_size}
        )
        for page in pages:
            for item in page.get("Contents", ()):
                name = item["Key"][len(hour_prefix) :]
                if name.endswith(".gz") and "/" not in name:
                    yield item["Key"]
        hour += timedelta(hours=1)


def _gunzip(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream of one or more members, piece by piece."""
    decompressor: Any = None
    fed = False  # the current member has started
    for piece in pieces:
        while piece:
            if decompressor is None:
                decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                fed = False
            out = decompressor.decompress(piece)
            fed = True
            if out:
                yield out
            if decompressor.eof:
                piece = decompressor.unused_data  # the next member starts here
                decompressor = None
            else:
                piece = b""
    if decompressor is not None and fed:
        raise EOFError("the gzip stream ends in the middle of a member")


def read_lines(
    client: S3Client, bucket: str, key: str, *, read_size: int = 1 << 16
) -> Iterator[tuple[str, int]]:
    """``(line, offset)`` for each non-blank line of one archive object, streamed.

    ``offset`` is the byte offset of the line's start in the decompressed object; the line
    is returned without its newline (nor a ``\\r`` before it). Bytes that are not UTF-8
    are replaced by U+FFFD.
    """
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        buffer = bytearray()
        base = 0  # offset of buffer[0] in the decompressed object
        for data in _gunzip(body.iter_chunks(read_size)):
            buffer += data
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                yield from _line(buffer, start, end, base)
                start = end + 1
            del buffer[:start]
            base += start
        if buffer:
            yield from _line(buffer, 0, len(buffer), base)
    finally:
        body.close()


def _line(buffer: bytearray, start: int, end: int, base: int) -> Iterator[tuple[str, int]]:
    raw = bytes(buffer[start:end]).rstrip(b"\r")
    if raw.strip():
        yield raw.decode("utf-8", errors="replace"), base + start


# --- client ----------------------------------------------------------------------------


def make_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    path_style: bool | None = None,
) -> S3Client:
    """A boto3 S3 client.

    ``endpoint_url`` points at an S3-compatible server (MinIO, moto); ``None`` means AWS
    (or whatever the standard ``AWS_ENDPOINT_URL_S3`` variable names). Path-style bucket
    addressing is used when an endpoint is given, as MinIO needs, unless ``path_style``
    says otherwise. Credentials and, without ``region``, the region come from the standard
    AWS chain (environment, shared config files, instance roles).
    """
    import boto3  # imported here: only the archive needs it, and it is slow to import
    from botocore.config import Config

    if path_style is None:
        path_style = bool(endpoint_url)
    config = Config(
        s3={"addressing_style": "path" if path_style else "auto"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
    )
    session = boto3.session.Session()  # one per client: sessions are not thread-safe
    return session.client(
        "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
    )
