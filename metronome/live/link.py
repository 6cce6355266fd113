"""The wire between a server worker and its host's live evaluator (a Unix socket in the
data directory), and the worker's end of it.

The evaluator (:mod:`metronome.live.evaluator`, run by ``metronome worker``) runs one
evaluation per distinct subscription for the whole host; each server worker sends it the
distinct subscriptions its connections hold and gets their answers back, so the workers
only fan answers out to their connections and the queries run outside the processes that
acknowledge ticks. Messages are lines:

* worker to evaluator, JSON: ``{"op": "sub", "token", "site", "body", "interval_ms"}``
  and ``{"op": "unsub", "token"}`` (``token``: the worker's name for the subscription);
* evaluator to worker: ``A <token> <digest hex> <at_ms> <kind> <payload>``, ``kind``
  ``result`` or ``error`` and ``payload`` its JSON (orjson writes no raw newline), sent
  when the answer changed and once to a worker that just subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["SOCKET_NAME", "Answer", "EvaluatorLink", "answer_line", "parse_answer", "socket_path"]

log = logging.getLogger("metronome")

SOCKET_NAME = "live.sock"
LINE_LIMIT = 64 << 20
"""Longest line either end reads: an answer holds at most METRONOME_QUERY_MAX_GROUPS rows."""
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes with the final NUL; keep a margin

Answer = tuple[str, bytes, int, str, bytes]
"""(token, digest, at_ms, kind, payload) of one answer line."""


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SOCKET_NAME


@contextlib.contextmanager
def short_path(path: Path) -> Any:
    """``path`` as a name ``bind``/``connect`` accept: a path longer than a Unix socket
    address may be is reached through ``/proc/self/fd`` and an open handle of its
    directory (Linux), so a deep data directory works too."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def answer_line(token: str, digest: bytes, at_ms: int, kind: str, payload: bytes) -> bytes:
    return b"A %s %s %d %s %s\n" % (
        token.encode(),
        digest.hex().encode(),
        at_ms,
        kind.encode(),
        payload,
    )


def parse_answer(line: bytes) -> Answer | None:
    """An answer line's parts; None for a line that is not one."""
    parts = line.rstrip(b"\n").split(b" ", 5)
    if len(parts) != 6 or parts[0] != b"A":
        return None
    try:
        return (
            parts[1].decode(),
            bytes.fromhex(parts[2].decode()),
            int(parts[3]),
            parts[4].decode(),
            parts[5],
        )
    except ValueError:
        return None


class EvaluatorLink:
    """A server worker's connection to the evaluator. ``on_answer`` gets every answer;
    ``on_lost`` is called once when the connection ends (the evaluator stopped)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_answer: Callable[[Answer], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_answer = on_answer
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._read())
        self.open = True

    @classmethod
    async def connect(
        cls, path: Path, on_answer: Callable[[Answer], None], on_lost: Callable[[], None]
    ) -> EvaluatorLink | None:
        """A link to the evaluator listening at ``path``; None when none listens."""
        if not path.exists():
            return None
        try:
            with short_path(path) as name:
                reader, writer = await asyncio.open_unix_connection(name, limit=LINE_LIMIT)
        except OSError:
            return None
        return cls(reader, writer, on_answer, on_lost)

    def subscribe(self, token: str, site_id: str, body: Any, interval_ms: int) -> None:
        self._send(
            {"op": "sub", "token": token, "site": site_id, "body": body, "interval_ms": interval_ms}
        )

    def unsubscribe(self, token: str) -> None:
        self._send({"op": "unsub", "token": token})

    def _send(self, message: dict[str, Any]) -> None:
        if self.open:
            self._writer.write(orjson.dumps(message) + b"\n")

    async def _read(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                answer = parse_answer(line)
                if answer is not None:
                    self._on_answer(answer)
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            log.warning("live_evaluator_link_failed reason=%s", exc)
        finally:
            self._task = None
            if self.open:
                self.open = False
                self._writer.close()
                self._on_lost()

    async def close(self) -> None:
        """End the link (``on_lost`` is not called)."""
        self.open = False
        self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
