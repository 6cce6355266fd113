"""The rejected-lines file: ``<data dir>/rejects.ndjson``, one JSON record per access-log
line that was not stored (``time``, ``reason``, ``message``, ``source``, ``offset``,
``line`` and, for lines read again by a later run, ``id``).

What it keeps of a line follows ``METRONOME_CLIENT_IP``, like the documents: unless the
policy is ``keep``, every IP address in the line is dropped (``-``) or truncated, and query
strings are cut (``/search?q=me`` is kept as ``/search?``). The file is bounded: past
``METRONOME_REJECTS_MAX_BYTES`` it is renamed ``rejects.1.ndjson`` (replacing the previous
one) and a new one begins. Retention removes a rejects file once its last line is older
than the logs' retention; ``metronome forget`` cannot match its lines (they are not
events) and says so.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import IO, Any

import orjson

from metronome.events.enrich import stored_address
from metronome.files import open_private

__all__ = ["REJECTS", "ROTATED", "RejectFile", "expire_rejects", "redact_line", "reject_files"]

REJECTS = "rejects.ndjson"
ROTATED = "rejects.1.ndjson"
LINE_CHARS = 8192

_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Fa-f:])")
_QUERY = re.compile(r"\?[^\s\"']*")


def redact_line(text: str, client_ip: str) -> str:
    """``text`` as the ``client_ip`` policy lets it be kept: unless ``keep``, each address
    dropped (``-``) or truncated, and each query string cut after its ``?``."""
    if client_ip == "keep":
        return text

    def address(match: re.Match[str]) -> str:
        try:
            ipaddress.ip_address(match[0])
        except ValueError:
            return match[0]  # 10:00:00 is a time, not an address
        return stored_address(match[0], client_ip) or "-"

    return _QUERY.sub("?", _IPV6.sub(address, _IPV4.sub(address, text)))


def reject_files(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The rejects files that exist, the rotated (older) one first."""
    return [p for p in (Path(data_dir) / ROTATED, Path(data_dir) / REJECTS) if p.exists()]


class RejectFile:
    """Appends records to the rejects file of ``data_dir``, at most once per ``id``,
    rotating it past ``max_bytes``."""

    def __init__(self, data_dir: str | os.PathLike[str], max_bytes: int) -> None:
        self._dir = Path(data_dir)
        self._path = self._dir / REJECTS
        self._max_bytes = max_bytes
        self._handle: IO[bytes] | None = None
        self._ids: set[str] = set()
        self._size = 0

    def add(self, record: dict[str, Any], reject_id: str | None = None) -> None:
        """Append ``record`` (with ``id`` = ``reject_id``) unless that id is recorded."""
        if self._handle is None:
            self._ids = set().union(*(_recorded_ids(p) for p in reject_files(self._dir)))
            self._open()
        assert self._handle is not None
        if reject_id is not None:
            if reject_id in self._ids:
                return
            self._ids.add(reject_id)
            record["id"] = reject_id
        data = orjson.dumps(record) + b"\n"
        if self._size and self._size + len(data) > self._max_bytes:
            self._handle.close()
            os.replace(self._path, self._dir / ROTATED)
            self._open()
        self._handle.write(data)
        self._size += len(data)

    def _open(self) -> None:
        self._handle = open_private(self._path, "ab")
        self._size = self._handle.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def expire_rejects(
    data_dir: str | os.PathLike[str], cutoff_ms: int, *, dry_run: bool = False
) -> list[Path]:
    """Remove (with ``dry_run``, only list) the rejects files last written before
    ``cutoff_ms``: every line in them is older than that."""
    expired = [p for p in reject_files(data_dir) if p.stat().st_mtime * 1000 < cutoff_ms]
    if not dry_run:
        for path in expired:
            path.unlink(missing_ok=True)
    return expired


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
