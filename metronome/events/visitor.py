"""Anonymous visitor ids: count visitors per day without storing who they are.

A visitor id is a keyed hash (BLAKE2b) of the client address and user agent, keyed by a
random salt that belongs to one UTC day. The same browser gets the same id all day, so
``visitors`` (distinct ids) counts people per day; the next day it gets an unrelated id,
and once a day's salt is deleted nobody (Metronome included) can recompute that day's ids
from an address. Salts live in ``METRONOME_DATA_DIR/salts/``; salts of days older than
yesterday are deleted whenever a new day's salt is made.

The id goes to ``visitor.id``; addresses are not part of it in any recoverable form.
Several processes on one host share the salt files (the first to need a day's salt
creates it, atomically). Hosts behind one load balancer should share the directory
(for example on a network file system) or a visitor is counted once per host.

Days other than today and yesterday (an import of old logs) keep no salt file: a salt
made for them would be deleted at once, so two processes importing one log (or one
process, once it had made a newer day's salt) would give one visitor two ids. With a
``run_key`` (random, made by ``metronome import`` before it starts its parsing
processes, never stored), such a day's salt is derived from the key and the day: the
same in every process of that import, and gone with it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from metronome.files import open_private, private_dir

__all__ = ["VisitorIds"]

_DAY_MS = 86_400_000
_RECENT_MAX = 4096
_RECENT_UA_CHARS = 512
"""User agents longer than this (no browser's is) are hashed every time, never kept:
the memo would otherwise hold up to _RECENT_MAX of whatever length a client sends."""
KEEP_DAYS = 2  # today and yesterday: late events of yesterday still get yesterday's salt


class VisitorIds:
    """Daily-salted visitor ids for one data directory."""

    def __init__(self, data_dir: str | os.PathLike[str], run_key: bytes | None = None) -> None:
        self._dir = Path(data_dir) / "salts"
        self._run_key = run_key
        self._salts: dict[int, bytes] = {}
        self._keyed: dict[int, hashlib.blake2b] = {}  # per day: BLAKE2b keyed with its salt
        self._lock = threading.Lock()
        # the last ids computed: a visitor sends many ticks (bounded; cleared when full)
        self._recent: dict[tuple[int, str, str, str | None], str] = {}

    def visitor_id(
        self, timestamp_ms: int, address: str | None, user_agent: str | None, scope: str = ""
    ) -> str | None:
        """The id of the client at ``address`` with ``user_agent`` on the UTC day of
        ``timestamp_ms`` (``scope``, such as a site, keeps ids of different sites apart).
        None without an address: nothing to tell visitors apart by."""
        if not address:
            return None
        day = timestamp_ms // _DAY_MS
        key = (day, scope, address, user_agent)
        known = self._recent.get(key)
        if known is not None:
            return known
        keyed = self._keyed.get(day)
        if keyed is None:
            if len(self._keyed) > 8:
                self._keyed.clear()
            keyed = self._keyed[day] = hashlib.blake2b(key=self._salt(day), digest_size=12)
        hasher = keyed.copy()  # the salt's key block is hashed once per day, not per id
        hasher.update(b"\x00".join((scope.encode(), address.encode(), (user_agent or "").encode())))
        digest = hasher.hexdigest()
        if user_agent is not None and len(user_agent) > _RECENT_UA_CHARS:
            return digest
        if len(self._recent) >= _RECENT_MAX:
            self._recent.clear()
        self._recent[key] = digest
        return digest

    def _salt(self, day: int) -> bytes:
        with self._lock:
            if day in self._salts:
                return self._salts[day]
            today = int(time.time() * 1000) // _DAY_MS
            if self._run_key is not None and not today - KEEP_DAYS < day <= today:
                derived = hashlib.blake2b(
                    day.to_bytes(8, "big", signed=True), key=self._run_key, digest_size=32
                ).digest()
                self._salts[day] = derived
                return derived
            private_dir(self._dir)
            path = self._dir / _day_name(day)
            try:
                salt = path.read_bytes()
            except FileNotFoundError:
                salt = self._create(path)
            if len(salt) != 32:  # a torn write: nothing was hashed with it yet
                path.unlink(missing_ok=True)
                salt = self._create(path)
            if len(self._salts) > 8:
                self._salts.clear()
            self._salts[day] = salt
            return salt

    def _create(self, path: Path) -> bytes:
        salt = secrets.token_bytes(32)
        temp = path.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
        with open_private(temp, "wb") as handle:
            handle.write(salt)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # atomic, and fails if another process won the race
        except FileExistsError:
            salt = path.read_bytes()
        finally:
            temp.unlink(missing_ok=True)
        self._delete_old()
        return salt

    def _delete_old(self) -> None:
        today = int(time.time() * 1000) // _DAY_MS
        keep = {_day_name(today - n) for n in range(KEEP_DAYS)}
        for old in self._dir.iterdir():
            if old.name not in keep and not old.name.endswith(".tmp"):
                old.unlink(missing_ok=True)
        for day in [d for d in self._salts if _day_name(d) not in keep]:
            del self._salts[day]
        self._keyed.clear()
        self._recent.clear()  # ids of a deleted day's salt are forgotten with it


def _day_name(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%d")
