"""Fan-out: one shared evaluation per distinct subscription on each host.

Subscribers may land on any worker of any host, and ticks are accepted by any worker, so
answers come from the **store**, which every worker's shipper writes into. A subscription
is the triple (site, ``/query`` body, interval); a hub keeps one :class:`Evaluation` per
distinct triple, however many connections hold it. An evaluation re-runs its query every
interval (the range re-resolved each time, so ``5min`` rolls), and when the answer's rows
changed hands the one serialized answer to each of its subscribers'
:class:`~metronome.live.connection.Connection`, which coalesces it with any push not yet
written.

Where the queries run: when the host's evaluator listens (``metronome worker`` runs it,
:mod:`metronome.live.evaluator`), a server worker's hub evaluates nothing itself: it
passes its distinct subscriptions on over :mod:`metronome.live.link` and fans out the
answers it gets, so the store's load is the number of distinct subscriptions **per host**
times their frequency, and the queries run in the worker process (at the shipper's lower
CPU priority), not in the processes that acknowledge ticks. Without an evaluator (no
``metronome worker`` on this host, or while it restarts) each server worker evaluates its
subscriptions itself, as a fallback, and hands them back once the evaluator is there.
See docs/guides/live.md for how this scales past one host.
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
from metronome.errors import MetronomeError, StoreUnavailable
from metronome.live.link import Answer, EvaluatorLink, socket_path
from metronome.pipeline.metrics import LIVE_EVALUATIONS, LIVE_PUSHES
from metronome.reports.engine import run_query
from metronome.reports.query import for_site, parse_query
from metronome.store.base import Store

__all__ = ["Evaluation", "Hub", "Relay", "Subscriber"]

log = logging.getLogger("metronome")

_DUMP = orjson.OPT_NON_STR_KEYS


class Subscriber(Protocol):
    """What an evaluation pushes to (a connection): never blocks."""

    def offer(self, sub_id: str, message: bytes) -> None: ...


class Relay(Protocol):
    """Where the evaluator sends a server worker's answers (its end of the link)."""

    def relay(self, token: str, digest: bytes, at_ms: int, kind: str, payload: bytes) -> None: ...


_RETRY_LINK_S = 2.0


def _result_message(sub_id: str, at_ms: int, data: bytes) -> bytes:
    return b'{"type":"result","id":%s,"at_ms":%d,"data":%s}' % (orjson.dumps(sub_id), at_ms, data)


def _error_message(sub_id: str, error: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "error", "id": sub_id, **error})


RETRY_UNAVAILABLE_S = 0.5
"""An evaluation the store refused (503) is asked once more after this many seconds; only
a second refusal is pushed to the subscribers as a ``store_unavailable`` error."""


@dataclass(eq=False)
class Evaluation:
    """One distinct subscription in this process, and who holds it."""

    site_id: str
    body: dict[str, Any]
    interval_ms: int
    hub: Hub
    key: tuple[str, bytes, int]
    subscribers: dict[tuple[int, str], tuple[Subscriber, str]] = field(default_factory=dict)
    relays: dict[tuple[int, str], tuple[Relay, str]] = field(default_factory=dict)
    digest: bytes = b""
    last: tuple[str, int, bytes] | None = None  # (kind, at_ms, answer or error bytes)
    task: asyncio.Task[None] | None = None
    token: str | None = None  # set while the host's evaluator evaluates it for this hub
    runs: int = 0

    def message_for(self, sub_id: str) -> bytes | None:
        if self.last is None:
            return None
        kind, at_ms, payload = self.last
        if kind == "result":
            return _result_message(sub_id, at_ms, payload)
        return _error_message(sub_id, orjson.loads(payload))

    @property
    def held(self) -> bool:
        return bool(self.subscribers or self.relays)

    async def evaluate(self) -> None:
        """Run the query once; push its answer to every subscriber when it changed."""
        at_ms = int(time.time() * 1000)
        try:
            query = for_site(parse_query(self.body, at_ms), self.site_id)
            try:
                answer = await run_query(self.hub.store, query, max_groups=self.hub.max_groups)
            except StoreUnavailable:
                # a refusal is often momentary (a new day's index whose shard is not yet
                # started): ask once more before telling every subscriber
                await asyncio.sleep(RETRY_UNAVAILABLE_S)
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
        self.deliver(digest, at_ms, kind, payload)

    def deliver(self, digest: bytes, at_ms: int, kind: str, payload: bytes) -> None:
        """Hand an answer (evaluated here, or by the evaluator) to every subscriber and
        relay, unless its rows are those already handed."""
        if digest == self.digest:
            return  # unchanged: nothing is pushed
        self.digest = digest
        self.last = (kind, at_ms, payload)
        for subscriber, sub_id in list(self.subscribers.values()):
            message = self.message_for(sub_id)
            if message is not None:
                subscriber.offer(sub_id, message)
        for relay, token in list(self.relays.values()):
            relay.relay(token, digest, at_ms, kind, payload)
        LIVE_PUSHES.inc(len(self.subscribers))

    async def run(self) -> None:
        interval_s = self.interval_ms / 1000
        while self.held:
            started = time.monotonic()
            await self.evaluate()
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


class Hub:
    """This process's evaluations, and its count of live connections by site."""

    def __init__(self, settings: Settings, store: Store, *, linked: bool = True) -> None:
        """``linked``: pass evaluations on to the host's evaluator when it listens (the
        server workers); the evaluator's own hub evaluates everything itself."""
        self.settings = settings
        self.store = store
        self.max_groups = settings.query_max_groups
        self._evaluations: dict[tuple[str, bytes, int], Evaluation] = {}
        self._open: Counter[str] = Counter()
        self._linked = linked
        self._link: EvaluatorLink | None = None
        self._linking: asyncio.Task[None] | None = None
        self._tokens: dict[str, Evaluation] = {}
        self._next_token = 0
        self._attempting = False  # an attempt to link is under way

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
        evaluation = self._evaluation(site_id, body, interval_ms)
        evaluation.subscribers[(id(who), sub_id)] = (who, sub_id)
        self._start(evaluation)
        return evaluation

    def relay(
        self, site_id: str, body: dict[str, Any], interval_ms: int, to: Relay, token: str
    ) -> Evaluation:
        """The evaluator's side: evaluate for a server worker (``to``), which calls the
        subscription ``token``; the latest answer is relayed at once when there is one."""
        evaluation = self._evaluation(site_id, body, interval_ms)
        evaluation.relays[(id(to), token)] = (to, token)
        if evaluation.last is not None:
            kind, at_ms, payload = evaluation.last
            to.relay(token, evaluation.digest, at_ms, kind, payload)
        self._start(evaluation)
        return evaluation

    def _evaluation(self, site_id: str, body: dict[str, Any], interval_ms: int) -> Evaluation:
        key = (site_id, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), interval_ms)
        evaluation = self._evaluations.get(key)
        if evaluation is None:
            evaluation = self._evaluations[key] = Evaluation(site_id, body, interval_ms, self, key)
        return evaluation

    def _start(self, evaluation: Evaluation) -> None:
        """Have ``evaluation`` evaluated: by the evaluator when linked, else here (once an
        attempt to link has found no evaluator)."""
        if evaluation.task is not None or evaluation.token is not None:
            return
        if self._link is not None and self._link.open:
            self._hand_over(evaluation, self._link)
            return
        if self._linked and self._linking is None:
            self._attempting = True
            self._linking = asyncio.create_task(self._keep_linked())
        if not self._attempting:  # an attempt under way starts or hands over every one
            evaluation.task = asyncio.create_task(evaluation.run())

    def _hand_over(self, evaluation: Evaluation, link: EvaluatorLink) -> None:
        if evaluation.task is not None:
            evaluation.task.cancel()
            evaluation.task = None
        self._next_token += 1
        token = evaluation.token = str(self._next_token)
        self._tokens[token] = evaluation
        link.subscribe(token, evaluation.site_id, evaluation.body, evaluation.interval_ms)

    def unsubscribe(self, evaluation: Evaluation, who: Subscriber, sub_id: str) -> None:
        evaluation.subscribers.pop((id(who), sub_id), None)
        self._drop_if_unheld(evaluation)

    def unrelay(self, evaluation: Evaluation, to: Relay, token: str) -> None:
        evaluation.relays.pop((id(to), token), None)
        self._drop_if_unheld(evaluation)

    def _drop_if_unheld(self, evaluation: Evaluation) -> None:
        if evaluation.held:
            return
        # the last one: the evaluation stops, its memory freed
        if self._evaluations.get(evaluation.key) is evaluation:
            del self._evaluations[evaluation.key]
        if evaluation.task is not None:
            evaluation.task.cancel()
            evaluation.task = None
        if evaluation.token is not None:
            self._tokens.pop(evaluation.token, None)
            if self._link is not None:
                self._link.unsubscribe(evaluation.token)
            evaluation.token = None

    # -- the link to the host's evaluator -----------------------------------------------

    async def _keep_linked(self) -> None:
        """While this hub has evaluations: link to the evaluator when it listens and hand
        them over; evaluate here meanwhile."""
        path = socket_path(self.settings.data_dir)
        try:
            while self._evaluations:
                if self._link is None or not self._link.open:
                    self._attempting = True
                    try:
                        link = await EvaluatorLink.connect(path, self._answered, self._lost)
                    finally:
                        self._attempting = False
                    if link is not None:
                        self._link = link
                        log.info("live_evaluator_linked evaluations=%d", len(self._evaluations))
                    for evaluation in list(self._evaluations.values()):
                        if link is not None:
                            self._hand_over(evaluation, link)
                        else:
                            self._start(evaluation)
                await asyncio.sleep(_RETRY_LINK_S)
        finally:
            self._attempting = False
            self._linking = None

    def _answered(self, answer: Answer) -> None:
        token, digest, at_ms, kind, payload = answer
        evaluation = self._tokens.get(token)
        if evaluation is not None:
            evaluation.deliver(digest, at_ms, kind, payload)

    def _lost(self) -> None:
        """The evaluator went away: evaluate here until it is back."""
        log.warning("live_evaluator_lost evaluations=%d", len(self._tokens))
        self._link = None
        tokens, self._tokens = self._tokens, {}
        for evaluation in tokens.values():
            evaluation.token = None
            self._start(evaluation)

    async def close(self) -> None:
        if self._linking is not None:
            self._linking.cancel()
        if self._link is not None:
            await self._link.close()
            self._link = None
        tasks = [e.task for e in self._evaluations.values() if e.task is not None]
        if self._linking is not None:
            tasks.append(self._linking)
            self._linking = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._evaluations.clear()
        self._tokens.clear()
