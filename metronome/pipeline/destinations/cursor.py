"""Each destination's own durable cursor in the spool, and what the spool keeps for it.

A destination reads the same segments as the shipper, with positions of its own:
``<data dir>/spool/destinations/<name>/<segment>.pos`` (how far it has delivered, written
after the destination acknowledged, fsynced), beside ``state.json`` (its counters and last
error, for ``/metrics`` and ``metronome status``). The shipper keeps a segment it has
finished until every configured destination has passed its end too (:func:`holds`).

So that a destination that is down cannot fill the spool and stop ingestion, each one may
hold at most ``backlog_max_bytes`` of the spool (a quarter of ``METRONOME_SPOOL_MAX_BYTES``
unless set, at most half): past it, the forwarder gives up the oldest segments it has not
delivered (:meth:`Cursor.give_up`), records each one in the destination's dead-letter file
(the segment, how many events, the first and last ids: the events themselves are in the
store, where ``/query`` finds them) and counts them as skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from metronome.events.document import Document
from metronome.files import open_private, private_dir
from metronome.pipeline.records import HEADER, MAX_RECORD_BYTES, scan
from metronome.pipeline.spool import data_end, segment_size, segments

__all__ = [
    "Cursor",
    "Entry",
    "Lag",
    "count_records",
    "holds",
    "names_on_disk",
    "prune",
    "read_state",
]

DIRECTORY = "destinations"
STATE = "state.json"
IN_FLIGHT = "in-flight.json"


def _dir(spool: Path, name: str) -> Path:
    return spool / DIRECTORY / name


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled event as a destination reads it: the position after it in its segment."""

    document: Document
    segment: Path
    end: int


@dataclass(frozen=True, slots=True)
class Lag:
    events: int
    bytes: int


def _read_at(segment: Path, position: int, limit: int) -> tuple[bytes, int]:
    try:
        with open(segment, "rb") as handle:
            size = data_end(handle.fileno(), os.fstat(handle.fileno()).st_size, position)
            handle.seek(position)
            return handle.read(limit), size
    except FileNotFoundError:
        return b"", 0


def _entries(
    segment: Path, position: int, limit: int, most: int | None = None
) -> tuple[list[Entry], bool]:
    """Whole records from ``position``, at most ``limit`` bytes (or the one record there, if
    larger) and ``most`` records; and whether the segment holds more after them."""
    buffer, size = _read_at(segment, position, limit)
    result = scan(buffer, most)
    if not result.documents and position + len(buffer) < size:
        buffer, size = _read_at(segment, position, min(size - position, MAX_RECORD_BYTES + 8))
        result = scan(buffer, 1)
    found: list[Entry] = []
    offset = 0
    for document in result.documents:
        (length, _) = HEADER.unpack_from(buffer, offset)
        offset += HEADER.size + length
        found.append(Entry(document, segment, position + offset))
    return found, position + result.end < size


def count_records(segment: Path, start: int, end: int) -> int:
    """Records between two positions of a segment: hops from header to header, reading
    the segment a megabyte at a time."""
    count = 0
    position = start
    try:
        with open(segment, "rb") as handle:
            while position + HEADER.size <= end:
                handle.seek(position)
                chunk = handle.read(min(1 << 20, end - position))
                if len(chunk) < HEADER.size:  # the segment is shorter than it was
                    break
                offset = 0
                while offset + HEADER.size <= len(chunk):
                    (length, _) = HEADER.unpack_from(chunk, offset)
                    if length == 0 or length > MAX_RECORD_BYTES:
                        return count
                    if position + offset + HEADER.size + length > end:
                        return count
                    count += 1
                    offset += HEADER.size + length
                position += offset  # past the chunk when its last record goes on
    except FileNotFoundError:
        return 0
    return count


class Cursor:
    """One destination's positions in the spool's segments."""

    def __init__(self, spool: Path, name: str) -> None:
        self.spool = spool
        self.name = name
        self.dir = _dir(spool, name)

    def _pos(self, segment: Path) -> Path:
        return self.dir / (segment.stem + ".pos")

    def position(self, segment: Path) -> int:
        try:
            return int(self._pos(segment).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def commit(self, positions: dict[Path, int]) -> None:
        """Record delivered positions durably (a lost one would send a batch twice)."""
        private_dir(self.dir)
        for segment, position in positions.items():
            target = self._pos(segment)
            temporary = target.with_suffix(".tmp")
            with open_private(temporary, "wb") as handle:
                handle.write(str(position).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)

    def read(
        self, max_entries: int, max_bytes: int, start: dict[Path, int] | None = None
    ) -> list[Entry]:
        """The next undelivered events of every segment, merged in order of receipt (the
        event id starts with the receipt time); each segment's own order is kept. Stops
        where a segment read only in part runs out, so nothing later overtakes it.
        ``start``: positions to read from instead of the delivered ones (read on)."""
        inputs: list[tuple[list[Entry], bool]] = []
        for segment in segments(self.spool):
            position = (start or {}).get(segment) or self.position(segment)
            if segment_size(segment, position) <= position:
                continue
            found, more = _entries(segment, position, max_bytes, max_entries)
            if found:
                inputs.append((found, more))
        merged: list[Entry] = []
        heads = [0] * len(inputs)
        while len(merged) < max_entries:
            best = -1
            for i, (found, more) in enumerate(inputs):
                if heads[i] >= len(found):
                    if more:
                        return merged
                    continue
                if (
                    best < 0
                    or found[heads[i]].document.id[:12]
                    < (inputs[best][0][heads[best]].document.id[:12])
                ):
                    best = i
            if best < 0:
                break
            merged.append(inputs[best][0][heads[best]])
            heads[best] += 1
        return merged

    def lag(self) -> Lag:
        """Events and bytes of the spool not delivered yet."""
        events = total = 0
        for segment in segments(self.spool):
            position = self.position(segment)
            size = segment_size(segment, position)
            if size > position:
                total += size - position
                events += count_records(segment, position, size)
        return Lag(events, total)

    def give_up(self, max_bytes: int) -> list[tuple[Path, int, int, str | None, str | None]]:
        """Pass the oldest undelivered segments until at most ``max_bytes`` is behind:
        (segment, bytes, events, first id, last id) of each one given up."""
        behind: list[tuple[Path, int, int]] = []
        for segment in segments(self.spool):
            position = self.position(segment)
            size = segment_size(segment, position)
            if size > position:
                behind.append((segment, position, size))
        total = sum(size - position for _, position, size in behind)
        given: list[tuple[Path, int, int, str | None, str | None]] = []
        for segment, position, size in behind:
            if total <= max_bytes:
                break
            first, _ = _entries(segment, position, 1)
            events = count_records(segment, position, size)
            last = _last_id(segment, position, size)
            self.commit({segment: size})
            given.append(
                (
                    segment,
                    size - position,
                    events,
                    first[0].document.id if first else None,
                    last,
                )
            )
            total -= size - position
        return given

    def forget_missing(self) -> None:
        """Drop the positions of segments the spool no longer has."""
        present = {s.stem for s in segments(self.spool)}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".pos") and name[: -len(".pos")] not in present:
                (self.dir / name).unlink(missing_ok=True)

    # -- the batch in flight -----------------------------------------------------------
    def begin(self, entries: list[Entry]) -> None:
        """Record, durably, the batch about to be sent (its ids and where it ends in each
        segment) before a byte of it goes: if the process dies before :meth:`commit`,
        :meth:`in_doubt` names exactly the events the destination may have received."""
        positions: dict[str, int] = {}
        for entry in entries:
            positions[entry.segment.name] = entry.end
        marker = {
            "first_id": entries[0].document.id,
            "last_id": entries[-1].document.id,
            "events": len(entries),
            "positions": positions,
        }
        private_dir(self.dir)
        temporary = self.dir / (IN_FLIGHT + ".tmp")
        with open_private(temporary, "wb") as handle:
            handle.write(orjson.dumps(marker))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.dir / IN_FLIGHT)

    def in_doubt(self) -> dict[str, Any] | None:
        """The batch that was in flight when the last process forwarding to this
        destination died (``first_id``, ``last_id``, ``events``), or None: its marker
        reaches past the delivered positions. The marker is then removed (the batch is
        sent again: the destination may count it twice unless it drops events by id)."""
        path = self.dir / IN_FLIGHT
        try:
            marker = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        path.unlink(missing_ok=True)
        if not isinstance(marker, dict) or not isinstance(marker.get("positions"), dict):
            return None
        for name, end in marker["positions"].items():
            segment = self.spool / str(name)
            if isinstance(end, int) and segment.exists() and self.position(segment) < end:
                return {k: marker.get(k) for k in ("first_id", "last_id", "events")}
        return None  # delivered and committed: the process died before removing the marker

    # -- figures -----------------------------------------------------------------------
    def write_state(self, state: dict[str, Any]) -> None:
        private_dir(self.dir)
        temporary = self.dir / (STATE + ".tmp")
        with open_private(temporary, "wb") as handle:
            handle.write(orjson.dumps(state))
        os.replace(temporary, self.dir / STATE)


def _last_id(segment: Path, start: int, end: int) -> str | None:
    """The id of the last whole record between two positions."""
    last: str | None = None
    position = start
    while position < end:
        found, _ = _entries(segment, position, 1 << 20)
        if not found:
            break
        last = found[-1].document.id
        position = found[-1].end
    return last


def read_state(spool: Path, name: str) -> dict[str, Any]:
    """A destination's counters and last error (``state.json``; empty before its first run)."""
    try:
        state = orjson.loads((_dir(spool, name) / STATE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def names_on_disk(spool: Path) -> list[str]:
    """Destinations that have a cursor directory."""
    try:
        return sorted(e.name for e in os.scandir(spool / DIRECTORY) if e.is_dir())
    except FileNotFoundError:
        return []


def prune(spool: Path, configured: Iterable[str]) -> None:
    """Remove the cursors of destinations no longer configured (they hold nothing)."""
    keep = set(configured)
    for name in names_on_disk(spool):
        if name not in keep:
            shutil.rmtree(_dir(spool, name), ignore_errors=True)


def holds(spool: Path, names: Iterable[str]) -> Callable[[Path, int], bool]:
    """For the shipper: whether a destination still needs ``segment`` of ``size`` bytes."""
    cursors = [Cursor(spool, name) for name in names]

    def needed(segment: Path, size: int) -> bool:
        return any(cursor.position(segment) < size for cursor in cursors)

    return needed
