"""Fan-out: one shared evaluation per distinct subscription in each server process.

Subscribers may land on any worker of any host, and ticks are accepted by any worker, so
nothing is passed between processes: every process polls the **store**, which every
worker's shipper writes into. A subscription is the triple (site, ``/query`` body,
interval); the hub keeps one :class:`Evaluation` per distinct triple, however many
connections hold it. An evaluation re-runs its query every interval (the range re-resolved
each time, so ``5min`` rolls), and when the answer's rows changed hands the one serialized
answer to each of its subscribers' :class:`~metronome.live.connection.Connection`, which
coalesces it with any push not yet written. The store's load is the number of distinct
subscriptions per process times their frequency, independent of the number of subscribers;
see docs/guides/live.md for how this scales past one host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from metronome.config import Settings
from metronome.errors import MetronomeError
from metronome.pipeline.metrics import LIVE_EVALUATIONS, LIVE_PUSHES
from metronome.reports.engine import run_query
from metronome.reports.query import for_site, parse_query
from metronome.store.base import Store

__all__ = ["Evaluation", "Hub", "Subscriber"]

log = logging.getLogger("metronome")

_DUMP = orjson.OPT_NON_STR_KEYS


class Subscriber(Protocol):
    """What an evaluation pushes to (a connection): never blocks."""

    def offer(self, sub_id: str, message: bytes) -> None: ...


def _result_message(sub_id: str, at_ms: int, data: bytes) -> bytes:
    return b'{"type":"result","id":%s,"at_ms":%d,"data":%s}' % (orjson.dumps(sub_id), at_ms, data)


def _error_message(sub_id: str, error: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "error", "id": sub_id, **error})


@dataclass(eq=False)
class Evaluation:
    """One distinct subscription in this process, and who holds it."""

    site_id: str
    body: dict[str, Any]
    interval_ms: int
    hub: Hub
    key: tuple[str, bytes, int]
    subscribers: dict[tuple[int, str], tuple[Subscriber, str]] = field(default_factory=dict)
    digest: bytes = b""
    last: tuple[str, int, bytes] | None = None  # (kind, at_ms, answer or error bytes)
    task: asyncio.Task[None] | None = None
    runs: int = 0

    def message_for(self, sub_id: str) -> bytes | None:
        if self.last is None:
            return None
        kind, at_ms, payload = self.last
        if kind == "result":
            return _result_message(sub_id, at_ms, payload)
        return _error_message(sub_id, orjson.loads(payload))

    async def evaluate(self) -> None:
        """Run the query once; push its answer to every subscriber when it changed."""
        at_ms = int(time.time() * 1000)
        try:
            query = for_site(parse_query(self.body, at_ms), self.site_id)
            answer = await run_query(self.hub.store, query, max_groups=self.hub.max_groups)
            kind, payload = "result", orjson.dumps(answer, option=_DUMP)
            # the rows only: the range echoed in meta and query rolls at every evaluation
            rows = orjson.dumps(answer.get("results"), option=_DUMP)
            digest = hashlib.blake2b(rows, digest_size=16).digest()
        except MetronomeError as exc:
            kind, payload = "error", orjson.dumps(exc.to_dict())
            digest = hashlib.blake2b(payload, digest_size=16).digest()
        except Exception:
            log.exception("live_evaluation_failed site=%s", self.site_id)
            error = {"error": "internal_error", "message": "the evaluation failed; see the log"}
            kind, payload = "error", orjson.dumps(error)
            digest = hashlib.blake2b(payload, digest_size=16).digest()
        self.runs += 1
        LIVE_EVALUATIONS.inc()
        if digest == self.digest:
            return  # unchanged: nothing is pushed
        self.digest = digest
        self.last = (kind, at_ms, payload)
        for subscriber, sub_id in list(self.subscribers.values()):
            message = self.message_for(sub_id)
            if message is not None:
                subscriber.offer(sub_id, message)
        LIVE_PUSHES.inc(len(self.subscribers))

    async def run(self) -> None:
        interval_s = self.interval_ms / 1000
        while self.subscribers:
            started = time.monotonic()
            await self.evaluate()
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


class Hub:
    """This process's evaluations, and its count of live connections by site."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.max_groups = settings.query_max_groups
        self._evaluations: dict[tuple[str, bytes, int], Evaluation] = {}
        self._open: Counter[str] = Counter()

    # -- connections ------------------------------------------------------------------

    def admit(self, site_id: str) -> str | None:
        """Count a new connection of ``site_id``; or say which limit it is over."""
        total = sum(self._open.values())
        if total >= self.settings.live_max_connections:
            return (
                f"this worker has {self.settings.live_max_connections} live connections"
                " (METRONOME_LIVE_MAX_CONNECTIONS); retry later"
            )
        if self._open[site_id] >= self.settings.live_max_connections_per_site:
            return (
                f"site {site_id!r} has {self.settings.live_max_connections_per_site} live"
                " connections on this worker (METRONOME_LIVE_MAX_CONNECTIONS_PER_SITE)"
            )
        self._open[site_id] += 1
        return None

    def release(self, site_id: str) -> None:
        self._open[site_id] -= 1
        if self._open[site_id] <= 0:
            del self._open[site_id]

    @property
    def connections(self) -> int:
        return sum(self._open.values())

    @property
    def evaluations(self) -> int:
        return len(self._evaluations)

    # -- subscriptions ----------------------------------------------------------------

    def check(self, body: dict[str, Any]) -> None:
        """Raise :class:`~metronome.errors.InvalidQuery` for a body ``/query`` refuses."""
        parse_query(body)

    def subscribe(
        self, site_id: str, body: dict[str, Any], interval_ms: int, who: Subscriber, sub_id: str
    ) -> Evaluation:
        """Share (or start) the evaluation of ``body`` for ``site_id`` every ``interval_ms``
        (the caller offers its latest answer, ``message_for``, at once)."""
        key = (site_id, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), interval_ms)
        evaluation = self._evaluations.get(key)
        if evaluation is None:
            evaluation = self._evaluations[key] = Evaluation(site_id, body, interval_ms, self, key)
        evaluation.subscribers[(id(who), sub_id)] = (who, sub_id)
        if evaluation.task is None:
            evaluation.task = asyncio.create_task(evaluation.run())
        return evaluation

    def unsubscribe(self, evaluation: Evaluation, who: Subscriber, sub_id: str) -> None:
        evaluation.subscribers.pop((id(who), sub_id), None)
        if not evaluation.subscribers:  # the last one: the evaluation stops, its memory freed
            if self._evaluations.get(evaluation.key) is evaluation:
                del self._evaluations[evaluation.key]
            if evaluation.task is not None:
                evaluation.task.cancel()

    async def close(self) -> None:
        tasks = [e.task for e in self._evaluations.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._evaluations.clear()
