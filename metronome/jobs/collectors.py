"""Collectors: counts read from a platform's own database or API every period, stored as
points in the metrics dataset.

Declared in the configuration file, one ``[[collectors]]`` table each (see
``docs/guides/platform-monitoring.md``): ``name``, ``every`` (seconds, default 1800),
``jitter``, ``timeout``, ``retries``, ``backoff``, ``site``, ``type``, and one source:
``sql``, ``http`` or ``python`` (:mod:`metronome.jobs.sources`).

The worker runs each collector once per period across every process and host sharing the
store: period ``p`` is ``[p * every, (p + 1) * every)`` (epoch seconds); at its start (plus
a random delay up to ``jitter``) every worker tries to claim the collector's lease for
``p`` (:mod:`metronome.store.leases`) and one wins. The winner runs the source with the
timeout, retrying a failure after ``backoff`` seconds (doubling) up to ``retries`` times
while the period lasts, then stores the points and frees the lease with the outcome. A run
still going when the next period starts keeps the lease, so runs never overlap; a period
nobody ran (the run before was slow, or no worker was up) is recorded as *missed* by the
next run.

Each count is a point ``app=<name>, metric.name="collector", tags.collector, tags.type,
fields.count`` at the period's start (a re-run of the same period stores the same ids: once);
each run is a point ``metric.name="collector_run"`` with ``tags.outcome`` (``ok``,
``failed``, ``timeout``, ``missed``) and ``fields.duration_ms``, ``fields.attempts``,
``fields.points``. Outcomes are also counted in ``metronome_collector_runs_total`` and
logged; ``metronome status`` shows each collector's last run from its lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from metronome.errors import ConfigError, MetronomeError
from metronome.events import fields as F
from metronome.events.document import Document
from metronome.events.point import Point, point_document
from metronome.jobs.sources import Measured
from metronome.jobs.sources import http as http_source
from metronome.jobs.sources import python as python_source
from metronome.jobs.sources import sql as sql_source
from metronome.pipeline import metrics
from metronome.store.base import Store
from metronome.store.leases import Claim, LeaseStore

__all__ = [
    "CollectorSpec",
    "Run",
    "collector_documents",
    "measure_once",
    "parse_collectors",
    "run_collectors",
    "run_period",
]

log = logging.getLogger("metronome.collectors")

_KEYS = ("name", "every", "jitter", "timeout", "retries", "backoff", "site", "type")
_MAX_MISSED_POINTS = 100  # missed periods recorded as points per run (all are counted)


class Source(Protocol):
    def describe(self) -> str: ...

    async def measure(self, default_type: str, timeout_s: float) -> Measured: ...


_SOURCES: dict[str, Callable[[Any, str], Source]] = {
    "sql": sql_source.parse,
    "http": http_source.parse,
    "python": python_source.parse,
}


@dataclass(frozen=True, slots=True)
class CollectorSpec:
    """One ``[[collectors]]`` entry, checked."""

    name: str
    source: Source
    every_s: int = 1800
    jitter_s: float = 0.0
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 5.0
    site: str = F.DEFAULT_SITE
    type: str = ""  # the type of a source's one number (default: the name)

    @property
    def default_type(self) -> str:
        return self.type or self.name

    @property
    def lease_name(self) -> str:
        return f"collector:{self.name}"


def _number(entry: Mapping[str, Any], key: str, where: str, default: float, low: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise ConfigError(f"{where}.{key}: expected a number of at least {low}", key=where)
    return float(value)


def parse_collectors(raw: Sequence[Mapping[str, Any]]) -> tuple[CollectorSpec, ...]:
    """The ``[[collectors]]`` section, checked; :class:`ConfigError` names the key."""
    specs: list[CollectorSpec] = []
    for index, entry in enumerate(raw):
        where = f"collectors[{index}]"
        name = entry.get("name")
        if not isinstance(name, str) or not F.APP_ID_PATTERN.match(name):
            raise ConfigError(
                f"{where}.name: a collector's name is 1 to 64 lowercase letters, digits,"
                " '-' and '_'",
                key=where,
            )
        where = f"collectors.{name}"
        if name in {s.name for s in specs}:
            raise ConfigError(f"{where}: two collectors are named {name!r}", key=where)
        unknown = sorted(set(entry) - set(_KEYS) - set(_SOURCES))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r}; a collector takes"
                f" {', '.join(_KEYS)} and one of {', '.join(_SOURCES)}",
                key=where,
            )
        kinds = [k for k in _SOURCES if k in entry]
        if len(kinds) != 1:
            raise ConfigError(
                f"{where}: give exactly one source: [collectors.sql], [collectors.http] or"
                " [collectors.python]",
                key=where,
            )
        try:
            source = _SOURCES[kinds[0]](entry[kinds[0]], f"{where}.{kinds[0]}")
        except ValueError as exc:
            raise ConfigError(str(exc), key=where) from None
        every = _number(entry, "every", where, 1800, 1)
        if every != int(every):
            raise ConfigError(f"{where}.every: expected whole seconds", key=where)
        timeout = _number(entry, "timeout", where, min(60.0, every), 0.001)
        site = entry.get("site", F.DEFAULT_SITE)
        if not isinstance(site, str) or not F.SITE_ID_PATTERN.match(site):
            raise ConfigError(f"{where}.site: expected a site id", key=where)
        kind = entry.get("type", "")
        if not isinstance(kind, str):
            raise ConfigError(f"{where}.type: expected a string", key=where)
        specs.append(
            CollectorSpec(
                name=name,
                source=source,
                every_s=int(every),
                jitter_s=_number(entry, "jitter", where, 0, 0),
                timeout_s=timeout,
                retries=int(_number(entry, "retries", where, 3, 0)),
                backoff_s=_number(entry, "backoff", where, 5, 0),
                site=site,
                type=kind,
            )
        )
    return tuple(specs)


# --- one run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """What one period's run did."""

    outcome: str  # ok, failed, timeout
    measured: Measured
    attempts: int
    duration_ms: float
    error: str | None = None


async def measure_once(spec: CollectorSpec) -> Measured:
    """Run the source once with the timeout (``metronome collect NAME --once``)."""
    try:
        return await asyncio.wait_for(
            spec.source.measure(spec.default_type, spec.timeout_s), spec.timeout_s
        )
    except TimeoutError:
        raise TimeoutError(
            f"{spec.source.describe()} took longer than {spec.timeout_s:g}s"
        ) from None


def collector_documents(
    spec: CollectorSpec, period_start_ms: int, measured: Measured
) -> list[Document]:
    """The points one run stores, at the period's start."""
    return [
        point_document(
            Point(
                app=spec.name,
                name="collector",
                timestamp_ms=period_start_ms,
                tags={"collector": spec.name, "type": kind},
                fields={"count": count},
                site_id=spec.site,
            ),
            sender=f"collector:{spec.name}:{period_start_ms}",  # one id per period and type
        )
        for kind, count in measured
    ]


def _run_document(spec: CollectorSpec, start_ms: int, outcome: str, run: Run | None) -> Document:
    fields = {"duration_ms": 0.0, "attempts": 0.0, "points": 0.0}
    if run is not None:
        fields = {
            "duration_ms": round(run.duration_ms, 3),
            "attempts": float(run.attempts),
            "points": float(len(run.measured)),
        }
    return point_document(
        Point(
            app=spec.name,
            name="collector_run",
            timestamp_ms=start_ms,
            tags={"collector": spec.name, "outcome": outcome},
            fields=fields,
            site_id=spec.site,
        ),
        sender=f"collector-run:{spec.name}:{start_ms}",
    )


async def _attempts(spec: CollectorSpec, deadline: float, store: Store, start_ms: int) -> Run:
    """Measure (and store), retrying with backoff while the period lasts."""
    started = time.monotonic()
    delay = spec.backoff_s
    attempt = 0
    while True:
        attempt += 1
        outcome, error = "ok", None
        measured: Measured = []
        try:
            measured = await measure_once(spec)
            await _write(store, collector_documents(spec, start_ms, measured))
        except TimeoutError as exc:
            outcome, error = "timeout", str(exc)
        except Exception as exc:  # any failure of the platform's source is recorded
            outcome, error = "failed", _describe(exc)
        if outcome == "ok":
            return Run("ok", measured, attempt, (time.monotonic() - started) * 1000)
        metrics.COLLECTOR_FAILURES.labels(spec.name).inc()
        log.warning(
            "collector_attempt_failed collector=%s attempt=%d outcome=%s error=%s",
            spec.name,
            attempt,
            outcome,
            error,
        )
        if attempt > spec.retries or time.monotonic() + delay >= deadline:
            return Run(outcome, [], attempt, (time.monotonic() - started) * 1000, error)
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay *= 2


def _describe(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, MetronomeError) else str(exc)
    return f"{type(exc).__name__}: {text}"[:500]


async def _write(store: Store, documents: list[Document]) -> None:
    if not documents:
        return
    outcomes = await store.write(documents)
    refused = [o for o in outcomes if not o.ok]
    if refused:
        raise RuntimeError(f"the store refused {len(refused)} points: {refused[0].reason}")


async def run_period(
    spec: CollectorSpec,
    store: Store,
    leases: LeaseStore,
    period: int,
    owner: str,
    *,
    now_ms: int | None = None,
) -> Run | None:
    """Run ``spec`` for ``period`` if this process wins its lease; None when another
    process has it (or had it) for this period."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    every_ms = spec.every_s * 1000
    # a lease outlives the longest run: every attempt, every backoff, then a margin
    ttl_ms = int(
        (spec.timeout_s * (spec.retries + 1) + spec.backoff_s * (2 ** (spec.retries + 1)) + 60)
        * 1000
    )
    claim: Claim = await leases.claim(spec.lease_name, period, owner, now, ttl_ms)
    if not claim.won:
        return None
    start_ms = period * every_ms
    previous = claim.previous
    state = dict(previous.state) if previous is not None else {}
    missed = 0
    if previous is not None and previous.period < period - 1:
        missed = period - previous.period - 1
        first = max(previous.period + 1, period - _MAX_MISSED_POINTS)
        try:
            await _write(
                store,
                [_run_document(spec, p * every_ms, "missed", None) for p in range(first, period)],
            )
        except Exception as exc:  # the run itself still goes ahead
            log.warning("collector_missed_unrecorded collector=%s error=%s", spec.name, exc)
        metrics.COLLECTOR_RUNS.labels(spec.name, "missed").inc(missed)
        log.warning(
            "collector_missed collector=%s periods=%d last_run_period=%d",
            spec.name,
            missed,
            previous.period,
        )
    deadline = time.monotonic() + (start_ms + every_ms - now) / 1000
    run = await _attempts(spec, deadline, store, start_ms)
    try:
        await _write(store, [_run_document(spec, start_ms, run.outcome, run)])
    except Exception as exc:
        log.warning("collector_run_unrecorded collector=%s error=%s", spec.name, exc)
    metrics.COLLECTOR_RUNS.labels(spec.name, run.outcome).inc()
    if run.outcome == "ok":
        log.info(
            "collector_ran collector=%s period=%d points=%d duration_ms=%.1f attempts=%d",
            spec.name,
            period,
            len(run.measured),
            run.duration_ms,
            run.attempts,
        )
    else:
        log.error(
            "collector_failed collector=%s period=%d outcome=%s attempts=%d error=%s",
            spec.name,
            period,
            run.outcome,
            run.attempts,
            run.error,
        )
    state.update(
        {
            "period": period,
            "last_run_ms": now,
            "last_outcome": run.outcome,
            "last_error": run.error,
            "last_points": len(run.measured),
            "last_duration_ms": round(run.duration_ms, 1),
            "missed_total": int(state.get("missed_total", 0)) + missed,
            "failed_total": int(state.get("failed_total", 0)) + (run.outcome != "ok"),
            "runs_total": int(state.get("runs_total", 0)) + 1,
        }
    )
    if run.outcome == "ok":
        state["last_success_ms"] = now
    await leases.release(spec.lease_name, period, owner, state)
    return run


def process_owner() -> str:
    """Who holds a lease: host, process and a random part (a restarted process differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _collector_loop(
    spec: CollectorSpec, store: Store, leases: LeaseStore, stop: asyncio.Event, owner: str
) -> None:
    every_ms = spec.every_s * 1000
    while not stop.is_set():
        now_ms = time.time() * 1000
        period = int(now_ms // every_ms)
        try:
            await run_period(spec, store, leases, period, owner)
        except MetronomeError as exc:  # the store or the leases are unreachable
            log.warning("collector_deferred collector=%s reason=%s", spec.name, exc.message)
        except Exception:
            log.exception("collector_crashed collector=%s", spec.name)
        next_start = (period + 1) * every_ms + random.uniform(0, spec.jitter_s * 1000)
        wait_s = max(0.0, (next_start - time.time() * 1000) / 1000)
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait_s)
        except TimeoutError:
            pass


async def run_collectors(
    specs: Sequence[CollectorSpec], store: Store, leases: LeaseStore, stop: asyncio.Event
) -> None:
    """Run every collector until ``stop`` (the worker's scheduler)."""
    owner = process_owner()
    await asyncio.gather(*(_collector_loop(s, store, leases, stop, owner) for s in specs))
