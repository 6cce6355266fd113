"""Prometheus metrics of the write path (multiprocess-safe: see ``metronome serve``).

Counters live here; the spool's size and lag are read from disk when ``/metrics`` is
scraped (:class:`SpoolCollector`), so every process reports the same truth.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metronome.pipeline.spool import backlog

__all__ = [
    "ACCEPTED",
    "COLLECTOR_FAILURES",
    "COLLECTOR_RUNS",
    "MONITOR_CHECKS",
    "DEAD_LETTERS",
    "LIVE_CLOSED",
    "LIVE_EVALUATIONS",
    "LIVE_PUSHES",
    "REJECTED",
    "REQUEST_SECONDS",
    "RETRIES",
    "SCHEMA_RETRIES",
    "RouteTally",
    "SHIPPED",
    "TELEMETRY_ACCEPTED",
    "TELEMETRY_REFUSED",
    "TORN_BYTES",
    "QUEUE_CONNECTED",
    "QUEUE_MESSAGES",
    "QUEUE_PAUSED",
    "QUEUE_READY",
    "SpoolCollector",
    "registry_for_scrape",
]

ACCEPTED = Counter("metronome_events_accepted", "Events acknowledged (spooled).", ["route"])
REJECTED = Counter(
    "metronome_events_rejected",
    "Events refused at ingestion (HTTP and forward input), each once, by reason: the error"
    " code (`rate_limited`, `payload_too_large`, `origin_forbidden`, ...; a whole refused"
    " batch counts the ticks it held, a request refused before its body was read counts"
    " 1) or the forward input's reason (`unknown_site`, `no_message`, `unknown_tag`, a"
    " log-line reject reason).",
    ["reason"],
)
SHIPPED = Counter("metronome_events_shipped", "Events the store confirmed.")
RETRIES = Counter("metronome_ship_retries", "Bulk writes retried after a retriable failure.")
SCHEMA_RETRIES = Counter(
    "metronome_schema_install_retries",
    "Times the worker asked the store again to install the index templates, which it does"
    " before shipping anything: while this grows, nothing ships (the store is unreachable"
    " or refuses them; the log's `schema_install_retry` says why).",
)
DEAD_LETTERS = Counter("metronome_dead_letters", "Events the store refused for good.")
TORN_BYTES = Counter("metronome_spool_torn_bytes", "Bytes cut from torn segment tails.")
COLLECTOR_RUNS = Counter(
    "metronome_collector_runs",
    "Collector periods by outcome: `ok`, `failed` and `timeout` (after the retries),"
    " `missed` (a period nobody ran); counted by the worker that held the lease.",
    ["collector", "outcome"],
)
COLLECTOR_FAILURES = Counter(
    "metronome_collector_attempt_failures",
    "Collector attempts that failed or timed out, retried ones included.",
    ["collector"],
)
MONITOR_CHECKS = Counter(
    "metronome_monitor_checks",
    "Monitor checks by result (`up`, `down`: this check, before retries change the state).",
    ["monitor", "result"],
)
TELEMETRY_ACCEPTED = Counter(
    "metronome_telemetry_points_accepted",
    "Telemetry points acknowledged (spooled), by app (registered apps only).",
    ["app"],
)
TELEMETRY_REFUSED = Counter(
    "metronome_telemetry_refused",
    "Telemetry refused inside answered (200) requests, by app and what: `metric` (a whole"
    " metric left out) or `field` (one field left out, the metric kept).",
    ["app", "what"],
)
REQUEST_SECONDS = Histogram(
    "metronome_request_duration_seconds",
    "HTTP request latency by route.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# live subscriptions (metronome/live/)
LIVE_EVALUATIONS = Counter(
    "metronome_live_evaluations",
    "Queries run for live subscriptions: one per distinct subscription per interval on each"
    " host (by its evaluator, in `metronome worker`; by each server worker while none"
    " runs), however many connections hold it.",
)
LIVE_PUSHES = Counter(
    "metronome_live_pushes", "Live results handed to connections (one per subscriber)."
)
LIVE_CLOSED = Counter(
    "metronome_live_closed",
    "Live connections the server closed, by close code (4000 heartbeat, 4008 slow reader,"
    " 4029 too many connections, 4030 too many subscriptions, 4001 token expired).",
    ["code"],
)

# RabbitMQ queues the worker consumes (metronome/pipeline/queue_input.py)
QUEUE_MESSAGES = Counter(
    "metronome_queue_messages",
    "Messages of each `[[queues]]` queue by what became of them: `consumed` (delivered),"
    " `acked` (stored), `dead_lettered`, `redelivered` (delivered again by RabbitMQ after"
    " a connection was lost), `requeued` (returned while the spool was full or failing).",
    ["queue", "outcome"],
)
QUEUE_CONNECTED = Gauge(
    "metronome_queue_connected",
    "Consumers of the queue connected to RabbitMQ (1 per worker).",
    ["queue"],
    multiprocess_mode="livesum",
)
QUEUE_PAUSED = Gauge(
    "metronome_queue_paused",
    "Consumers of the queue paused because the spool is full.",
    ["queue"],
    multiprocess_mode="livesum",
)
QUEUE_READY = Gauge(
    "metronome_queue_ready_messages",
    "Messages waiting in the queue (its lag), as last seen by a consumer (every 5 s).",
    ["queue"],
    multiprocess_mode="livemax",
)

_TALLIES: list[RouteTally] = []


class RouteTally:
    """Accepted events and request latency of one busy route (``POST /tick``), counted in
    the process and added to the shared Prometheus values once a second.

    In multiprocess mode every ``inc`` takes a lock and writes a memory-mapped file; for
    a route answered thousands of times a second that is a real share of the work, so
    these figures reach ``/metrics`` up to a second late instead.
    """

    FLUSH_S = 1.0

    def __init__(self, route: str, method: str) -> None:
        self._accepted_value = ACCEPTED.labels(route)
        self._latency = REQUEST_SECONDS.labels(route, method)
        # prometheus_client keeps a histogram child's bounds, bucket and sum values in
        # these attributes; adding to them is what ``observe`` does, n at a time
        self._bounds: list[float] = list(self._latency._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._accepted = 0
        self._scheduled = False

        _TALLIES.append(self)

    def accepted(self) -> None:
        self._accepted += 1
        if not self._scheduled:
            self._schedule()

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        asyncio.get_running_loop().call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        """Add what was counted since the last flush to the shared values."""
        self._scheduled = False
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        accepted, self._accepted = self._accepted, 0
        if accepted:
            self._accepted_value.inc(accepted)
        if total:
            self._latency._sum.inc(total)
        for value, count in zip(self._latency._buckets, counts, strict=True):
            if count:
                value.inc(count)


class SpoolCollector(Collector):
    """Spool size, backlog and lag, read from the spool directory at scrape time."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def collect(self) -> Iterator[Metric]:
        state = backlog(self._dir)
        age = 0.0
        if state.oldest_unshipped_ms is not None:
            age = max(0.0, time.time() - state.oldest_unshipped_ms / 1000)
        yield GaugeMetricFamily(
            "metronome_spool_bytes", "Bytes in spool segments.", value=state.bytes_total
        )
        yield GaugeMetricFamily(
            "metronome_spool_unshipped_bytes",
            "Bytes not yet confirmed by the store.",
            value=state.bytes_unshipped,
        )
        yield GaugeMetricFamily(
            "metronome_spool_segments", "Spool segment files.", value=state.segments
        )
        yield GaugeMetricFamily(
            "metronome_spool_oldest_unshipped_age_seconds",
            "Age of the oldest event not yet in the store.",
            value=age,
        )


def registry_for_scrape(spool: Path) -> CollectorRegistry:
    """All processes' counters (multiprocess mode when configured) plus the spool gauges."""
    for tally in _TALLIES:  # this process's own figures are current, the others' <= 1 s old
        tally.flush()
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
    else:
        from prometheus_client import REGISTRY

        for collector in list(REGISTRY._collector_to_names):  # this process only
            registry.register(collector)
    registry.register(SpoolCollector(spool))
    from metronome.pipeline.destinations.forwarder import DestinationCollector  # issue 23

    registry.register(DestinationCollector(spool))
    return registry
