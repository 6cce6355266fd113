"""Each server process's copy of the sites and keys, so no request waits on the store.

Requests are checked against an in-memory :class:`~metronome.sites.model.Snapshot`.
It is reloaded from the registry in the background once it is half
``METRONOME_SITES_CACHE_S`` old; a request finding it older than the whole TTL (after a
quiet spell) waits for the reload, at most 2 s, and not at all while the store is slow or
failing. So a new site or key, or a revocation, takes effect in
every process within the TTL (default 5 s), and under load no request ever waits. A live
token names the key that minted it: one whose key this copy lacks reloads it at once
(:meth:`RegistryCache.refresh`), so a token minted right after its key was created works
in every process.

While the store cannot be read (Elasticsearch down), the last snapshot keeps serving,
and reloads are retried in the background: revocations made meanwhile wait for the store.
A process that starts while the store is down uses the copy the last process saved in
``METRONOME_DATA_DIR/sites-cache.json`` (mode 600: it holds key hashes); with neither,
requests that need a site answer ``503 store_unavailable`` with the registry's reason.
The same holds when the store answers but the sites it once had are gone (a deleted
``<prefix>-sites`` index, a broken table): the registry raises rather than answering "no
sites" (:mod:`metronome.sites.registry`), so the server never opens up by itself.

Key use is counted here and written to the registry with each reload (at most once a
minute per key), never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

import orjson

from metronome.errors import MetronomeError, StoreUnavailable
from metronome.sites.base import Registry
from metronome.sites.model import Snapshot

__all__ = ["CACHE_FILE", "RegistryCache"]

log = logging.getLogger("metronome.sites")

CACHE_FILE = "sites-cache.json"
_TOUCH_EVERY_MS = 60_000
_WAIT_S = 2.0  # longest a request waits for a reload of a too-old snapshot
_REFRESH_EVERY_S = 0.5  # a reload asked for by a request (refresh), at most this often


class RegistryCache:
    def __init__(self, registry: Registry, ttl_s: float, data_dir: str | Path) -> None:
        self._registry = registry
        self._ttl = float(ttl_s)
        self._file = Path(data_dir) / CACHE_FILE
        self._snapshot: Snapshot | None = None
        self._loaded_at = float("-inf")
        self._retry_at = float("-inf")
        self._failing = False
        self._reason = "they have not been read yet"
        self._task: asyncio.Task[None] | None = None
        self._saved_digest: str | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._used: dict[str, int] = {}  # key id -> last use (ms), not yet written
        self._written: dict[str, int] = {}  # key id -> last use written

    @property
    def registry(self) -> Registry:
        return self._registry

    async def get(self) -> Snapshot:
        """The current snapshot (see the module docstring for how fresh it is)."""
        now = time.monotonic()
        snapshot = self._snapshot
        age = now - self._loaded_at
        if snapshot is not None and age < self._ttl / 2:
            return snapshot
        if self._task is None and now >= self._retry_at:
            self._task = asyncio.get_running_loop().create_task(self._reload())
        if snapshot is not None and (age < self._ttl or self._failing):
            return snapshot
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), _WAIT_S)
            except TimeoutError:
                # a slow store: serve the last copy rather than hold requests
                if not self._failing:
                    log.warning("sites_reload_slow waited_s=%.1f (serving the last copy)", _WAIT_S)
                self._failing = True
        if self._snapshot is None:
            self._snapshot = self._read_file()
        if self._snapshot is None:
            raise StoreUnavailable(f"the sites and keys cannot be read: {self._reason}")
        return self._snapshot

    async def refresh(self) -> Snapshot:
        """The keys read again now, for a request that names one the copy does not hold
        although it must exist (a signed token's key): at most once per
        :data:`_REFRESH_EVERY_S` (a copy read more recently is returned as it is), waiting
        at most 2 s; the last copy while the store is slow or failing."""
        if time.monotonic() - self._loaded_at >= _REFRESH_EVERY_S and not self._failing:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._reload())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), _WAIT_S)
        return await self.get()

    async def start(self) -> None:
        """Load once at process start (a failure is logged; requests retry)."""
        self._task = asyncio.get_running_loop().create_task(self._reload())
        await asyncio.shield(self._task)

    def note_use(self, key_id: str, when_ms: int) -> None:
        self._used[key_id] = when_ms

    async def _reload(self) -> None:
        try:
            snapshot = await self._registry.load()
        except Exception as exc:  # noqa: BLE001 - never let a reload fail a request
            message = exc.message if isinstance(exc, MetronomeError) else repr(exc)
            self._reason = message
            if not self._failing:
                log.warning("sites_reload_failed reason=%s (serving the last copy)", message)
            self._failing = True
            self._retry_at = time.monotonic() + self._ttl / 2
            if self._snapshot is None:
                self._snapshot = self._read_file()
            return
        finally:
            self._task = None
        if self._failing:
            log.info("sites_reloaded after failures")
        self._failing = False
        self._snapshot = snapshot
        self._loaded_at = time.monotonic()
        self._save_file(snapshot)
        if self._used and self._flushing is None:  # key use: written beside, not waited for
            self._flushing = asyncio.get_running_loop().create_task(self._flush_use())

    async def _flush_use(self) -> None:
        try:
            due = {
                key_id: ms
                for key_id, ms in self._used.items()
                if ms - self._written.get(key_id, 0) >= _TOUCH_EVERY_MS
            }
            if due:
                await self._registry.touch_keys(due)
                self._written.update(due)
                for key_id, ms in due.items():
                    if self._used.get(key_id) == ms:
                        del self._used[key_id]
        except Exception as exc:  # noqa: BLE001 - last use is best effort
            log.warning(
                "key_use_not_recorded reason=%s",
                exc.message if isinstance(exc, MetronomeError) else repr(exc),
            )
        finally:
            self._flushing = None

    async def close(self) -> None:
        for task in (self._task, self._flushing):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task
        self._used = {k: ms for k, ms in self._used.items() if ms > self._written.get(k, 0)}
        with contextlib.suppress(MetronomeError, OSError):
            await self._registry.touch_keys(self._used)
        await self._registry.close()

    def _save_file(self, snapshot: Snapshot) -> None:
        data = orjson.dumps(snapshot.to_dict(), option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._saved_digest:
            return
        temp = self._file.with_name(f".{self._file.name}.{os.getpid()}")
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temp, self._file)
            self._saved_digest = digest
        except OSError as exc:
            log.warning("sites_cache_not_saved path=%s reason=%s", self._file, exc)

    def _read_file(self) -> Snapshot | None:
        try:
            snapshot = Snapshot.from_dict(orjson.loads(self._file.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("sites_cache_unreadable path=%s reason=%s", self._file, exc)
            return None
        log.warning("sites_from_local_copy path=%s (the store is not answering)", self._file)
        return snapshot
