"""Access-log lines to documents: the converter that ``metronome import``, ``ship``,
``restore`` and the forward-protocol input share.

:class:`LineConverter` turns lines into documents with :mod:`metronome.logs.parse` (the
configured ``METRONOME_LOG_FORMAT`` and ``METRONOME_URL_RULES``), writes lines that cannot
be parsed to ``<data dir>/rejects.ndjson`` with the reason, and counts what it did
(:class:`Summary`). Moving the documents on (to the spool or the store) is the
pipeline's: :mod:`metronome.pipeline.log_input`.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from metronome.config import Settings
from metronome.events.document import Document
from metronome.events.enrich import flag_referrer_spam, stored_address
from metronome.events.visitor import VisitorIds
from metronome.logs.formats import compile_format
from metronome.logs.parse import LineParser, ParsedLine, Reject, build_log_document, decode_line
from metronome.logs.rules import UrlRules

__all__ = ["REJECTS", "LineConverter", "Summary", "open_lines"]

REJECTS = "rejects.ndjson"


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

    def __init__(self, settings: Settings) -> None:
        self._parser = compile_format(settings.log_format, settings.log_tz)
        self._rules = UrlRules.parse(settings.url_rules)
        self._trusted = settings.trusted_proxies
        self._visitors = VisitorIds(settings.data_dir)
        self._client_ip = settings.client_ip
        self._blocklist = settings.referrer_blocklist
        self._site_id = settings.log_site
        self._rejects_path = Path(settings.data_dir) / REJECTS
        self._rejects: IO[bytes] | None = None
        self._rejected_ids: set[str] = set()
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

    def use(self, parser: LineParser) -> None:
        """Parse the following lines with ``parser`` (the one detected for a file)."""
        self._parser = parser

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
        if self._rejects is None:
            self._rejects_path.parent.mkdir(parents=True, exist_ok=True)
            self._rejected_ids = _recorded_ids(self._rejects_path)
            self._rejects = open(self._rejects_path, "ab")  # noqa: SIM115
        record: dict[str, Any] = {
            "time": time.time(),
            "reason": reject.reason,
            "message": reject.message,
            "source": source_id,
            "offset": offset,
            "line": text[:8192],
        }
        if identity is not None:
            reject_id = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:20]
            if reject_id in self._rejected_ids:
                return
            self._rejected_ids.add(reject_id)
            record["id"] = reject_id
        self._rejects.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        if self._rejects is not None:
            self._rejects.close()
            self._rejects = None


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


def _recorded_ids(path: Path) -> set[str]:
    """The ids of the rejected lines a reject file holds (lines without one are skipped)."""
    ids: set[str] = set()
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return ids
    with handle:
        for raw in handle:
            if b'"id":' not in raw:
                continue
            try:
                value = orjson.loads(raw).get("id")
            except (orjson.JSONDecodeError, AttributeError):
                continue  # a torn last line
            if isinstance(value, str):
                ids.add(value)
    return ids


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


def open_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a file, or of standard input for
    ``-``, plain or compressed with gzip, bzip2 or zstd (known by their first bytes);
    numbers count every line from 1, blank ones too. Bytes that are not UTF-8 are kept
    percent-encoded (:func:`~metronome.logs.parse.decode_line`). A damaged compressed
    stream raises :class:`EOFError` naming its kind."""
    raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    kind: str | None = None
    try:
        lines, kind = _decompressed(raw)
        for number, raw_line in enumerate(lines, 1):
            text = decode_line(raw_line.rstrip(b"\n").rstrip(b"\r"))
            if text.strip():
                yield number, text
    except (OSError, EOFError, ValueError) as exc:
        if kind is None or isinstance(exc, FileNotFoundError | PermissionError):
            raise
        raise EOFError(f"damaged {kind} file ({exc})") from exc
    finally:
        if path != "-":
            raw.close()
