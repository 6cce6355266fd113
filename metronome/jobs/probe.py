"""Remote probes: the ``[[monitors]]`` checks run from another machine, results posted home.

``metronome probe --server URL --key KEY --region eu-west`` runs every monitor of the
configuration file (the same :mod:`metronome.jobs.checks`, the same up/down state rules as
the worker's monitors) and keeps each result in a local durable queue before anything is
sent: a SQLite file ``queue.sqlite3`` in the probe's data directory (created 0700, the file
0600). A delivery loop posts the queue, oldest first, in batches to ``POST
/probe/results`` with a key of the ``probe`` scope, and deletes a batch only once the
server has answered 200 (it is then spooled there). While the server cannot be reached,
or answers 5xx, 408 or 429, results wait in the queue and the loop backs off (0.5 s
doubling to ``max_backoff_s``); a 401 or 403 (a wrong or revoked key) also waits, and is
logged, so nothing measured is lost while an operator fixes the key. A batch the server
refuses as malformed (another 4xx) can never be taken and is dropped, logged with the
server's answer.

The server stores each result once (deterministic ids from the probe's id, the monitor and
the check's time), so a batch re-sent after an answer was lost is not counted twice.
The probe's id is made once and kept in the queue file, so it survives restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from metronome.events.monitoring import MAX_PROBE_RESULTS
from metronome.jobs.monitors import MonitorSpec, next_state, run_periodically

__all__ = ["ProbeQueue", "ProbeStats", "run_probe"]

log = logging.getLogger("metronome.probe")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (monitor TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_BATCH = min(100, MAX_PROBE_RESULTS)
_FIRST_BACKOFF_S = 0.5
_KEEP_STATUSES = {401, 403, 408, 429}  # wait and retry: the batch is fine, the moment is not


class ProbeQueue:
    """The probe's durable queue and monitor states: one SQLite file, 0600."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / "queue.sqlite3"
        # create it private before SQLite opens it (its journal takes the same mode)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def probe_id(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'probe_id'").fetchone()
        if row is not None:
            return str(row[0])
        made = "p-" + secrets.token_hex(8)
        self._db.execute("INSERT INTO meta (name, value) VALUES ('probe_id', ?)", (made,))
        return made

    def state(self, monitor: str) -> dict[str, Any]:
        row = self._db.execute("SELECT data FROM state WHERE monitor = ?", (monitor,)).fetchone()
        return {} if row is None else dict(orjson.loads(row[0]))

    def record(self, monitor: str, result: dict[str, Any], state: dict[str, Any]) -> None:
        """Queue ``result`` and keep the monitor's new state, in one transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO results (body) VALUES (?)", (orjson.dumps(result),))
            self._db.execute(
                "INSERT OR REPLACE INTO state (monitor, data) VALUES (?, ?)",
                (monitor, orjson.dumps(state)),
            )

    def oldest(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        rows = self._db.execute(
            "SELECT seq, body FROM results ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(seq), dict(orjson.loads(body))) for seq, body in rows]

    def delete_through(self, seq: int) -> None:
        self._db.execute("DELETE FROM results WHERE seq <= ?", (seq,))

    def queued(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@dataclass(slots=True)
class ProbeStats:
    measured: int = 0
    delivered: int = 0
    dropped: int = 0
    failures: int = 0  # deliveries that did not get a 200
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


async def _check(spec: MonitorSpec, queue: ProbeQueue, stats: ProbeStats) -> None:
    """Run ``spec``'s check once and queue the result with the monitor's new state."""
    result = await spec.check.run(spec.timeout_s)
    at_ms = int(time.time() * 1000)
    state = queue.state(spec.name)
    outcome = next_state(state, result, spec.retries, at_ms)
    down_since = state.get("since_ms") if outcome.previous == "down" else None
    queue.record(
        spec.name,
        {
            "monitor": spec.name,
            "kind": spec.kind,
            "at_ms": at_ms,
            "ok": result.up,
            "state": outcome.state,
            "previous": outcome.previous,
            "down_since_ms": down_since,
            "reason": None if result.reason is None else result.reason[:500],
            "measured": result.measured,
        },
        {"state": outcome.state, "failures": outcome.failures, "since_ms": outcome.since_ms},
    )
    stats.measured += 1
    stats.wakeup.set()
    if outcome.changed:
        log.warning(
            "probe_state_changed monitor=%s from=%s to=%s reason=%s",
            spec.name,
            outcome.previous or "up",
            outcome.state,
            result.reason,
        )


async def _deliver_once(
    client: httpx.AsyncClient, queue: ProbeQueue, probe: str, region: str, stats: ProbeStats
) -> bool | None:
    """Send the oldest batch: True when sent (or dropped), False when it must wait, None
    when the queue is empty."""
    batch = queue.oldest(_BATCH)
    if not batch:
        return None
    body = {"probe": probe, "region": region, "results": [r for _, r in batch]}
    try:
        resp = await client.post("/probe/results", json=body)
    except httpx.HTTPError as exc:
        stats.failures += 1
        log.info("probe_delivery_failed queued=%d error=%s", queue.queued(), exc)
        return False
    if resp.status_code == 200:
        queue.delete_through(batch[-1][0])
        stats.delivered += len(batch)
        return True
    stats.failures += 1
    if resp.status_code >= 500 or resp.status_code in _KEEP_STATUSES:
        log.warning(
            "probe_delivery_refused status=%d queued=%d answer=%s",
            resp.status_code,
            queue.queued(),
            resp.text[:300],
        )
        return False
    queue.delete_through(batch[-1][0])
    stats.dropped += len(batch)
    log.error(
        "probe_results_dropped count=%d status=%d answer=%s",
        len(batch),
        resp.status_code,
        resp.text[:300],
    )
    return True


async def _deliver(
    server: str,
    key: str,
    queue: ProbeQueue,
    probe: str,
    region: str,
    stats: ProbeStats,
    stop: asyncio.Event,
    max_backoff_s: float,
) -> None:
    headers = {"Authorization": f"Bearer {key}", "User-Agent": "metronome-probe"}
    backoff = _FIRST_BACKOFF_S
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=10) as client:
        while not stop.is_set():
            stats.wakeup.clear()
            sent = await _deliver_once(client, queue, probe, region, stats)
            if sent:
                backoff = _FIRST_BACKOFF_S
                continue
            if sent is None:  # nothing queued: wait for the next result
                wait_for: asyncio.Future[Any] = asyncio.ensure_future(stats.wakeup.wait())
                delay = max_backoff_s
            else:
                wait_for = asyncio.ensure_future(asyncio.sleep(backoff))
                delay = backoff
                backoff = min(backoff * 2, max_backoff_s)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {wait_for, stopping}, timeout=delay + 1, return_when="FIRST_COMPLETED"
            )
            for task in (wait_for, stopping):
                task.cancel()


async def _flush(
    server: str,
    key: str,
    queue: ProbeQueue,
    probe: str,
    region: str,
    stats: ProbeStats,
    timeout_s: float,
) -> None:
    """On the way out: deliver what is queued while the server answers (within
    ``timeout_s``); what is left stays queued for the next start."""
    headers = {"Authorization": f"Bearer {key}", "User-Agent": "metronome-probe"}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=5) as client:
        while time.monotonic() < deadline:
            if not await _deliver_once(client, queue, probe, region, stats):
                return


async def run_probe(
    specs: Sequence[MonitorSpec],
    *,
    server: str,
    key: str,
    region: str,
    data_dir: Path,
    stop: asyncio.Event,
    max_backoff_s: float = 30.0,
) -> ProbeStats:
    """Check every monitor each interval and deliver the results until ``stop``; then let
    running checks finish, try to deliver the rest, and return the counts."""
    queue = ProbeQueue(data_dir)
    stats = ProbeStats()
    probe = queue.probe_id()
    log.warning(
        "probe_started probe=%s region=%s monitors=%d queued=%d server=%s",
        probe,
        region,
        len(specs),
        queue.queued(),
        server,
    )

    def job(spec: MonitorSpec) -> Any:
        return lambda period: _check(spec, queue, stats)

    try:
        await asyncio.gather(
            _deliver(server, key, queue, probe, region, stats, stop, max_backoff_s),
            *(run_periodically(s.interval_s, 0, stop, job(s), f"probe:{s.name}") for s in specs),
        )
        await _flush(server, key, queue, probe, region, stats, 5.0)
        log.warning(
            "probe_stopped probe=%s measured=%d delivered=%d dropped=%d queued=%d",
            probe,
            stats.measured,
            stats.delivered,
            stats.dropped,
            queue.queued(),
        )
    finally:
        queue.close()
    return stats
