"""Leases kept in the store: one run of a scheduled job per period, across every process
and host that shares the store.

A lease is one record per job name: the period it was last claimed for, who holds it,
until when (``expires_ms``: a holder that dies frees it then), and the job's ``state``
(JSON: last outcome, error, counts) that ``metronome status`` shows. Claiming period ``p``
succeeds only when the record's period is older than ``p`` and no unexpired run holds it,
decided atomically: in a ``BEGIN IMMEDIATE`` transaction on the embedded store, by
optimistic concurrency (``if_seq_no``/``if_primary_term``, ``op_type=create``) in
Elasticsearch's hidden ``<prefix>-leases`` index. So of several workers asking at once,
exactly one wins, and a run still going when the next period starts keeps it (no overlap).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import orjson

from metronome.config import Settings
from metronome.store.hidden_index import HiddenIndexRegistry
from metronome.store.sqlite import DB_NAME, ConnectionThread, connect

__all__ = ["Claim", "Lease", "LeaseStore", "may_claim", "open_leases"]


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    period: int
    owner: str
    expires_ms: int
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claim:
    """Whether the claim won, and the record before it (None: the job never ran)."""

    won: bool
    previous: Lease | None


def may_claim(previous: Lease | None, period: int, now_ms: int) -> bool:
    """A period is claimed once, and never while an unexpired run holds the lease."""
    if previous is None:
        return True
    return previous.period < period and previous.expires_ms <= now_ms


class LeaseStore(Protocol):
    async def claim(
        self, name: str, period: int, owner: str, now_ms: int, ttl_ms: int
    ) -> Claim: ...

    async def release(self, name: str, period: int, owner: str, state: dict[str, Any]) -> bool:
        """Free the lease (expired at once) with the run's ``state``; False when another
        holds it now."""
        ...

    async def leases(self) -> list[Lease]: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


def open_leases(settings: Settings) -> LeaseStore:
    """The leases beside the configured store."""
    if settings.uses_elasticsearch:
        return ElasticsearchLeases(settings)
    return SQLiteLeases(Path(settings.data_dir))


# --- the embedded store ---------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    period INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT '{}'
)
"""


def _row_lease(row: Any) -> Lease:
    return Lease(row[0], int(row[1]), row[2], int(row[3]), orjson.loads(row[4]))


class SQLiteLeases(ConnectionThread):
    """The ``leases`` table of the embedded store's file, on a connection of its own."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / DB_NAME, "leases")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._path)
            self._conn.execute(_SCHEMA)
        return self._conn

    async def claim(self, name: str, period: int, owner: str, now_ms: int, ttl_ms: int) -> Claim:
        def _claim() -> Claim:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT name, period, owner, expires_ms, state FROM leases WHERE name = ?",
                    (name,),
                ).fetchone()
                previous = None if row is None else _row_lease(row)
                won = may_claim(previous, period, now_ms)
                if won:
                    state = "{}" if previous is None else orjson.dumps(previous.state).decode()
                    conn.execute(
                        "INSERT OR REPLACE INTO leases (name, period, owner, expires_ms, state)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (name, period, owner, now_ms + ttl_ms, state),
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return Claim(won, previous)

        result: Claim = await self._run(_claim)
        return result

    async def release(self, name: str, period: int, owner: str, state: dict[str, Any]) -> bool:
        def _release() -> bool:
            cursor = self._db().execute(
                "UPDATE leases SET expires_ms = 0, state = ? WHERE name = ? AND period = ?"
                " AND owner = ?",
                (orjson.dumps(state).decode(), name, period, owner),
            )
            return bool(cursor.rowcount)

        done: bool = await self._run(_release)
        return done

    async def leases(self) -> list[Lease]:
        def _all() -> list[Lease]:
            rows = self._db().execute(
                "SELECT name, period, owner, expires_ms, state FROM leases ORDER BY name"
            )
            return [_row_lease(row) for row in rows]

        found: list[Lease] = await self._run(_all)
        return found


# --- Elasticsearch --------------------------------------------------------------------

_PROPERTIES: dict[str, Any] = {
    "name": {"type": "keyword"},
    "period": {"type": "long"},
    "owner": {"type": "keyword"},
    "expires_ms": {"type": "long"},
    "state": {"type": "object", "enabled": False},
}


def leases_index(prefix: str) -> str:
    return f"{prefix}-leases"


class ElasticsearchLeases(HiddenIndexRegistry):
    """Leases in the hidden ``<prefix>-leases`` index, one document per job, written
    with optimistic concurrency (a realtime GET, then a conditional write)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "leases", "leases", _PROPERTIES, wait_for_shard=True)

    async def _get(self, name: str) -> tuple[Lease | None, int | None, int | None]:
        import asyncio

        from metronome.store.connection import API_ERRORS, NOT_FOUND, status_of

        for attempt in range(10):
            try:
                doc = await self._client.get(index=self._index, id=name)
                break
            except NOT_FOUND:
                return None, None, None
            except API_ERRORS as exc:
                # a shard of an index another process just created may not be started yet
                if status_of(exc) != 503 or attempt == 9:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        src = doc["_source"]
        lease = Lease(
            src["name"], int(src["period"]), src["owner"], int(src["expires_ms"]), src["state"]
        )
        return lease, doc["_seq_no"], doc["_primary_term"]

    async def claim(self, name: str, period: int, owner: str, now_ms: int, ttl_ms: int) -> Claim:
        from metronome.store.connection import CONFLICT, answering

        await self._ensure()
        with answering("claiming a lease"):
            previous, seq_no, term = await self._get(name)
            if not may_claim(previous, period, now_ms):
                return Claim(False, previous)
            document = {
                "name": name,
                "period": period,
                "owner": owner,
                "expires_ms": now_ms + ttl_ms,
                "state": {} if previous is None else previous.state,
            }
            try:
                if previous is None:
                    await self._client.index(
                        index=self._index, id=name, body=document, op_type="create"
                    )
                else:
                    await self._client.index(
                        index=self._index,
                        id=name,
                        body=document,
                        if_seq_no=seq_no,
                        if_primary_term=term,
                    )
            except CONFLICT:
                return Claim(False, previous)  # another worker claimed it first
        return Claim(True, previous)

    async def release(self, name: str, period: int, owner: str, state: dict[str, Any]) -> bool:
        from metronome.store.connection import CONFLICT, answering

        await self._ensure()
        with answering("releasing a lease"):
            current, seq_no, term = await self._get(name)
            if current is None or current.period != period or current.owner != owner:
                return False
            try:
                await self._client.index(
                    index=self._index,
                    id=name,
                    body={
                        "name": name,
                        "period": period,
                        "owner": owner,
                        "expires_ms": 0,
                        "state": state,
                    },
                    if_seq_no=seq_no,
                    if_primary_term=term,
                )
            except CONFLICT:
                return False
        return True

    async def leases(self) -> list[Lease]:
        from metronome.store.connection import NOT_FOUND, answering, search

        with answering("reading the leases"):
            try:
                await self._client.indices.refresh(index=self._index)  # what was just written
                found = await search(
                    self._client, index=self._index, body={"size": 1000, "sort": [{"name": "asc"}]}
                )
            except NOT_FOUND:
                return []
        return [
            Lease(
                h["_source"]["name"],
                int(h["_source"]["period"]),
                h["_source"]["owner"],
                int(h["_source"]["expires_ms"]),
                h["_source"]["state"],
            )
            for h in found["hits"]["hits"]
        ]
