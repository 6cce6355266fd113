"""Following live log files like ``tail -F``, surviving rotation, resuming from a position file.

A file is identified by device and inode plus a *generation* that grows each time the file
is truncated in place (``copytruncate``), so ``(identity, offset)`` names one line forever:
that pair is what access-log documents derive their ids from.

- rename rotation (``access.log`` -> ``access.log.1``, a new ``access.log``): the old file is
  read to its end through the open descriptor, then the new one from its start;
- copytruncate (same inode, now shorter than our offset): start again at 0, next generation;
- a missing file (between rename and re-create): wait for it.

A line longer than ``max_line_bytes`` is never held: it is read past in bounded chunks and
returned as one :class:`Line` marked ``too_long`` (no text) once its end is found, so the
lines after it follow.

Positions are saved only after the caller confirms that the lines it got are safe
(:meth:`Follower.commit`), so a crash re-reads, never skips.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from metronome.files import open_private
from metronome.logs.parse import decode_line

__all__ = ["Follower", "Line", "Position", "PositionFile"]

_READ_BYTES = 1 << 20
_MAX_LINE_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    source_id: str  # "<dev>:<inode>:<generation>"
    offset: int  # byte offset of the line's start in that file
    too_long: bool = False  # longer than the follower's max_line_bytes: text is empty


@dataclass(slots=True)
class Position:
    """Where a file has been read to: its identity (device, inode, generation) and offset."""

    dev: int
    ino: int
    generation: int
    offset: int


class PositionFile:
    """``{path: {dev, ino, generation, offset}}`` as JSON, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Position]:
        try:
            raw = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {k: Position(**v) for k, v in raw.items()}

    def save(self, states: dict[str, Position]) -> None:
        temporary = self.path.with_suffix(".tmp")
        with open_private(temporary, "wb") as handle:
            handle.write(json.dumps({k: asdict(v) for k, v in states.items()}).encode())
        os.replace(temporary, self.path)


class Follower:
    """Reads whole new lines from one path across rotations."""

    def __init__(
        self,
        path: Path,
        state: Position | None = None,
        *,
        from_end: bool = False,
        max_line_bytes: int = _MAX_LINE_BYTES,
    ) -> None:
        self.path = path
        self._max_line = max_line_bytes
        self._skipping: int | None = None  # the start of a too-long line being read past
        self._handle: BinaryIO | None = None
        self._state = state
        self._pending: Position | None = None  # where we are after lines not yet committed
        self._from_end = from_end and state is None

    @property
    def state(self) -> Position | None:
        return self._state

    def _open_current(self) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - kept open across rotation
        except FileNotFoundError:
            return False
        st = os.fstat(handle.fileno())
        saved = self._state
        if saved and (saved.dev, saved.ino) == (st.st_dev, st.st_ino):
            if st.st_size < saved.offset:  # truncated in place while we were away
                saved = Position(st.st_dev, st.st_ino, saved.generation + 1, 0)
        else:
            start = st.st_size if self._from_end else 0
            saved = Position(st.st_dev, st.st_ino, 0, start)
        self._from_end = False
        self._handle = handle
        self._state = saved
        self._pending = Position(saved.dev, saved.ino, saved.generation, saved.offset)
        return True

    def read(self, max_bytes: int = _READ_BYTES) -> list[Line]:
        """New whole lines since the last call (possibly from a rotated-away file)."""
        if self._handle is None and not self._open_current():
            return []
        assert self._pending is not None
        handle = self._handle
        assert handle is not None
        pending = self._pending
        st = os.fstat(handle.fileno())
        if st.st_size < pending.offset:  # copytruncate
            pending.generation += 1
            pending.offset = 0
            self._skipping = None
        source = f"{pending.dev}:{pending.ino}:{pending.generation}"
        lines: list[Line] = []
        handle.seek(pending.offset)
        data = handle.read(max_bytes)
        while self._skipping is not None and data:  # read past a too-long line, chunk by chunk
            newline = data.find(b"\n")
            if newline < 0:
                pending.offset += len(data)
                data = handle.read(max_bytes)
                continue
            lines.append(Line("", source, self._skipping, too_long=True))
            self._skipping = None
            pending.offset += newline + 1
            data = data[newline + 1 :]
        end = data.rfind(b"\n")
        if end >= 0:
            position = pending.offset
            for raw in data[: end + 1].split(b"\n")[:-1]:
                if len(raw.rstrip(b"\r")) > self._max_line:
                    lines.append(Line("", source, position, too_long=True))
                else:
                    text = decode_line(raw.rstrip(b"\r"))  # non-UTF-8 bytes: %-encoded
                    if text.strip():
                        lines.append(Line(text, source, position))
                position += len(raw) + 1
            pending.offset = position
            data = data[end + 1 :]
        if self._skipping is None and len(data) > self._max_line:
            self._skipping = pending.offset  # a line too long to hold: read past it
            pending.offset += len(data)
            data = b""
        if lines:
            return lines
        if not data and self._rotated(pending):
            self._switch()  # the old file is finished: continue with the new one
            return self.read(max_bytes)
        return lines

    def _rotated(self, pending: Position) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) != (pending.dev, pending.ino)

    def _switch(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._state = None
        self._pending = None
        self._skipping = None

    def commit(self) -> None:
        """The lines returned so far are safe: remember the position."""
        if self._pending is not None:
            p = self._pending
            # in the middle of a too-long line: a restart reads past it again from its start
            offset = p.offset if self._skipping is None else self._skipping
            self._state = Position(p.dev, p.ino, p.generation, offset)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
