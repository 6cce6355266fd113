"""Prometheus metrics of the write path (multiprocess-safe: see ``metronome serve``).

Counters live here; the spool's size and lag are read from disk when ``/metrics`` is
scraped (:class:`SpoolCollector`), so every process reports the same truth.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metronome.pipeline.spool import backlog

__all__ = [
    "ACCEPTED",
    "DEAD_LETTERS",
    "REJECTED",
    "REQUEST_SECONDS",
    "RETRIES",
    "SHIPPED",
    "TORN_BYTES",
    "SpoolCollector",
    "registry_for_scrape",
]

ACCEPTED = Counter("metronome_events_accepted", "Events acknowledged (spooled).", ["route"])
REJECTED = Counter("metronome_events_rejected", "Events refused at ingestion.", ["reason"])
SHIPPED = Counter("metronome_events_shipped", "Events the store confirmed.")
RETRIES = Counter("metronome_ship_retries", "Bulk writes retried after a retriable failure.")
DEAD_LETTERS = Counter("metronome_dead_letters", "Events the store refused for good.")
TORN_BYTES = Counter("metronome_spool_torn_bytes", "Bytes cut from torn segment tails.")
REQUEST_SECONDS = Histogram(
    "metronome_request_duration_seconds", "HTTP request latency by route.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class SpoolCollector(Collector):
    """Spool size, backlog and lag, read from the spool directory at scrape time."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def collect(self) -> Iterator[Metric]:
        state = backlog(self._dir)
        age = 0.0
        if state.oldest_unshipped_ms is not None:
            age = max(0.0, time.time() - state.oldest_unshipped_ms / 1000)
        yield GaugeMetricFamily("metronome_spool_bytes", "Bytes in spool segments.",
                                value=state.bytes_total)
        yield GaugeMetricFamily("metronome_spool_unshipped_bytes",
                                "Bytes not yet confirmed by the store.",
                                value=state.bytes_unshipped)
        yield GaugeMetricFamily("metronome_spool_segments", "Spool segment files.",
                                value=state.segments)
        yield GaugeMetricFamily("metronome_spool_oldest_unshipped_age_seconds",
                                "Age of the oldest event not yet in the store.", value=age)


def registry_for_scrape(spool: Path) -> CollectorRegistry:
    """All processes' counters (multiprocess mode when configured) plus the spool gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        for collector in list(REGISTRY._collector_to_names):  # this process only
            registry.register(collector)
    registry.register(SpoolCollector(spool))
    return registry
