"""Access-log lines to documents: the converter that ``metronome import``, ``ship``,
``restore`` and the forward-protocol input share.

:class:`LineConverter` turns lines into documents with :mod:`metronome.logs.parse` (the
configured ``METRONOME_LOG_FORMAT`` and ``METRONOME_URL_RULES``), writes lines that cannot
be parsed to ``<data dir>/rejects.ndjson`` with the reason (:mod:`metronome.logs.rejects`),
and counts what it did (:class:`Summary`). Moving the documents on (to the spool or the
store) is the pipeline's: :mod:`metronome.pipeline.log_input`.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from metronome.config import Settings
from metronome.events.document import Document
from metronome.events.enrich import flag_referrer_spam, stored_address
from metronome.events.visitor import VisitorIds
from metronome.logs.formats import compile_format
from metronome.logs.parse import LineParser, ParsedLine, Reject, build_log_document, decode_line
from metronome.logs.rejects import LINE_CHARS, REJECTS, RejectFile, redact_line
from metronome.logs.rules import UrlRules

__all__ = ["LINE_TOO_LONG", "REJECTS", "LineConverter", "Summary", "open_lines", "split_lines"]

LINE_TOO_LONG = Reject(
    "line_too_long", "the line is longer than METRONOME_MAX_LINE_BYTES; it was skipped"
)
"""A line longer than ``METRONOME_MAX_LINE_BYTES``: never held in memory, rejected."""
_CHUNK_BYTES = 1 << 20


@dataclass
class Summary:
    """What a run did; ``line()`` is the one-line summary the CLI prints."""

    read: int = 0
    stored: int = 0  # new in the store (``spooled`` for ``ship``)
    already: int = 0  # the store had them from an earlier run (same event ids)
    rejected: Counter[str] = field(default_factory=Counter)
    bots: int = 0
    dead_letters: int = 0

    def line(self, verb: str = "stored") -> str:
        """``read N lines, stored N, already stored M, rejected R (reasons), bots B``
        (``verb`` instead of ``stored``, then without ``already stored``)."""
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.rejected.most_common())
        text = f"read {self.read} lines, {verb} {self.stored}"
        if verb == "stored":
            text += f", already stored {self.already}"
        text += f", rejected {rejected}"
        if reasons:
            text += f" ({reasons})"
        text += f", bots {self.bots}"
        if self.dead_letters:
            text += f", dead letters {self.dead_letters}"
        return text


class LineConverter:
    """One line to one document (or a reject written to the reject file)."""

    def __init__(
        self, settings: Settings, rejects: Any = None, *, run_key: bytes | None = None
    ) -> None:
        """``rejects``: where rejected lines go (an object with ``add(record, reject_id)``
        and ``close()``) instead of the data directory's reject file; ``run_key``: the
        key of old days' visitor salts shared by the processes of one import
        (:class:`~metronome.events.visitor.VisitorIds`)."""
        self._parser = compile_format(settings.log_format, settings.log_tz)
        self._rules = UrlRules.parse(settings.url_rules)
        self._trusted = settings.trusted_proxies
        self._visitors = VisitorIds(settings.data_dir, run_key)
        self._client_ip = settings.client_ip
        self._blocklist = settings.referrer_blocklist
        self._site_id = settings.log_site
        self._rejects = rejects or RejectFile(settings.data_dir, settings.rejects_max_bytes)
        self.summary = Summary()

    def convert(
        self, text: str, source_id: str | None, offset: int | None, received_ms: int
    ) -> tuple[Document | None, ParsedLine | None]:
        """Parse and build, counting the line; rejects go to the reject file."""
        self.summary.read += 1
        parsed = self._parser.parse(text)
        if isinstance(parsed, Reject):
            identity = None if source_id is None or offset is None else f"{source_id}\0{offset}"
            self.reject(parsed, text, source_id, offset, identity=identity)
            return None, None
        return self.document(parsed, source_id, offset, received_ms), parsed

    def too_long(self, source_id: str | None, offset: int | None, identity: str) -> None:
        """Count a line longer than ``METRONOME_MAX_LINE_BYTES`` and reject it."""
        self.summary.read += 1
        self.reject(LINE_TOO_LONG, "", source_id, offset, identity=identity)

    def use(self, parser: LineParser) -> None:
        """Parse the following lines with ``parser`` (the one detected for a file)."""
        self._parser = parser

    def parse(self, text: str) -> ParsedLine | Reject:
        self.summary.read += 1
        return self._parser.parse(text)

    def document(
        self,
        parsed: ParsedLine,
        source_id: str | None,
        offset: int | None,
        received_ms: int,
        *,
        site_id: str | None = None,
    ) -> Document:
        document = build_log_document(
            parsed,
            source_id=source_id,
            offset=offset,
            rules=self._rules,
            trusted_proxies=self._trusted,
            received_ms=received_ms,
            visitors=self._visitors,
            site_id=site_id or self._site_id,
        )
        source = document.source
        if source["bot"]:
            self.summary.bots += 1
        flag_referrer_spam(source, self._blocklist)
        if self._client_ip != "keep":
            _apply_client_policy(source, self._client_ip)
        return document

    def reject(
        self,
        reject: Reject,
        text: str,
        source_id: str | None,
        offset: int | None,
        *,
        identity: str | None = None,
    ) -> None:
        """Count a line that cannot be parsed and append it to the reject file, once:
        a line with an ``identity`` (what its event id would be made of: the file's
        identity and offset, or the line and its number) that the file holds already,
        from an earlier run over the same lines, is not appended again."""
        self.summary.rejected[reject.reason] += 1
        record: dict[str, Any] = {
            "time": time.time(),
            "reason": reject.reason,
            "message": redact_line(reject.message, self._client_ip),
            "source": source_id,
            "offset": offset,
            "line": redact_line(text[:LINE_CHARS], self._client_ip),
        }
        reject_id = None
        if identity is not None:
            reject_id = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:20]
        self._rejects.add(record, reject_id)

    def close(self) -> None:
        self._rejects.close()


def split_lines(read: Callable[[int], bytes], max_line_bytes: int) -> Iterator[bytes | None]:
    """The lines of a stream read with ``read(n)``, without their ``\\n``; None for a line
    longer than ``max_line_bytes``, skipped without holding it: memory stays within one
    read and one line, whatever the stream holds."""
    partial = bytearray()
    skipping = False
    while chunk := read(_CHUNK_BYTES):
        parts = chunk.split(b"\n")
        tail = parts.pop()
        for index, part in enumerate(parts):
            if index == 0 and (skipping or partial):
                if skipping:
                    skipping = False
                    yield None
                    continue
                partial += part
                part, partial = bytes(partial), bytearray()
            yield part if len(part) <= max_line_bytes else None
        if skipping:
            continue
        if len(partial) + len(tail) > max_line_bytes:
            skipping, partial = True, bytearray()
        else:
            partial += tail
    if skipping:
        yield None
    elif partial:
        yield bytes(partial)


def _apply_client_policy(source: dict[str, Any], policy: str) -> None:
    """What ``METRONOME_CLIENT_IP`` (``drop`` or ``truncate``) lets a document keep of its
    client: the truncated address (no host name, no port) and forwarded chain, or none."""
    client = source.get("source")
    if client is not None:
        kept = stored_address(client.get("ip"), policy)
        if kept is None:
            del source["source"]
        else:
            source["source"] = {"ip": kept}
    related = source.get("related")
    if related is not None:
        ips = [ip for ip in (stored_address(ip, policy) for ip in related["ip"]) if ip]
        if ips:
            source["related"] = {"ip": ips}
        else:
            del source["related"]


_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def _decompressed(stream: IO[bytes]) -> tuple[Any, str | None]:
    """The stream's content, decompressed when its first bytes say gzip, bzip2 or zstd
    (whatever the file is called), and which of them it was."""
    reader: Any = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[type-var,unused-ignore]
    head = reader.peek(4)[:4]
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            if kind == "gzip":
                return gzip.GzipFile(fileobj=reader), kind
            if kind == "bzip2":
                return bz2.BZ2File(reader), kind
            import zstandard

            decompressor = zstandard.ZstdDecompressor()
            unpacked = decompressor.stream_reader(reader, read_across_frames=True)
            return io.BufferedReader(unpacked), kind
    return reader, None


def open_lines(path: str, max_line_bytes: int) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of the non-blank lines of a file, or of standard input for
    ``-``, plain or compressed with gzip, bzip2 or zstd (known by their first bytes);
    numbers count every line from 1, blank ones too. Bytes that are not UTF-8 are kept
    percent-encoded (:func:`~metronome.logs.parse.decode_line`). The text is None for a
    line longer than ``max_line_bytes`` (skipped in bounded memory, however long, and
    however well a compressed stream compresses). A damaged compressed stream raises
    :class:`EOFError` naming its kind."""
    raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    kind: str | None = None
    try:
        stream, kind = _decompressed(raw)
        read = getattr(stream, "read1", stream.read)
        for number, raw_line in enumerate(split_lines(read, max_line_bytes), 1):
            if raw_line is None:
                yield number, None
                continue
            text = decode_line(raw_line.rstrip(b"\r"))
            if text.strip():
                yield number, text
    except (OSError, EOFError, ValueError) as exc:
        if kind is None or isinstance(exc, FileNotFoundError | PermissionError):
            raise
        raise EOFError(f"damaged {kind} file ({exc})") from exc
    finally:
        if path != "-":
            raw.close()
