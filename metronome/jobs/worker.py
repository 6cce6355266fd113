"""``metronome worker``: install the store's schema, then ship the spool until stopped.

Beside the shipper it runs the forward-protocol input (``METRONOME_FORWARD``), the host's
live evaluator (:mod:`metronome.live.evaluator`) and the periodic jobs (retention,
``METRONOME_RETENTION``): the worker is the jobs' scheduler, so
it lives in ``jobs/`` and uses ``pipeline/``, never the other way round.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from typing import Any

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.heap import settle
from metronome.jobs.retention import RetentionPolicy, apply_policy
from metronome.pipeline import metrics
from metronome.pipeline.shipper import Shipper, ShipperStats
from metronome.store import Store, open_store

__all__ = ["run_worker"]

log = logging.getLogger("metronome.worker")


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("shipper_orphaned parent=%d: stopping", parent)
            stop.set()
        await asyncio.sleep(1.0)


async def _live_evaluator(settings: Settings, stop: asyncio.Event) -> None:
    """The host's live evaluator, on a store connection of its own (its queries never wait
    behind the shipper's writes). A failure is logged: the server workers then evaluate
    their subscriptions themselves."""
    from metronome.live.evaluator import serve_evaluations

    try:
        async with open_store(settings) as store:
            await serve_evaluations(settings, store, stop)
    except Exception:
        log.exception("live_evaluator_failed: the server workers evaluate themselves")


async def _start_forward(settings: Settings) -> tuple[Any, Any, Any]:
    """The Fluentd forward-protocol input, spooling into this process's own segment."""
    from metronome.pipeline.forward_input import ForwardRouter, forward_auth
    from metronome.pipeline.forward_server import ForwardServer
    from metronome.pipeline.spool import SpoolWriter, spool_dir

    writer = SpoolWriter(
        spool_dir(settings.data_dir),
        segment_max_bytes=settings.spool_segment_bytes,
        max_total_bytes=settings.spool_max_bytes,
    )
    router = ForwardRouter(settings, writer)
    await router.start()
    limit = settings.spool_max_bytes

    def admit() -> str | None:  # cost before work: a full spool refuses before decoding
        if writer.has_room():
            return None
        return f"the spool is full (METRONOME_SPOOL_MAX_BYTES={limit})"

    server = ForwardServer(
        settings.forward_host,
        settings.forward_port,
        router,
        max_frame_bytes=settings.forward_max_frame_bytes,
        max_frame_entries=settings.forward_max_frame_entries,
        connection_entries_per_s=settings.forward_connection_entries_per_s,
        max_connections=settings.forward_max_connections,
        admit=admit,
        auth=forward_auth(settings),
    )
    await server.start()
    log.info("forward_listening host=%s port=%d", settings.forward_host, server.port)
    return server, router, writer


async def _start_queues(settings: Settings, writer: Any) -> tuple[Any, Any, list[Any]]:
    """The ``[[queues]]`` consumers (RabbitMQ), spooling through ``writer`` (the forward
    input's, when it runs: one writer per process) or one of their own."""
    from metronome.pipeline.queue_input import QueueConsumer, QueueRouter, parse_queues
    from metronome.pipeline.spool import SpoolWriter, spool_dir

    specs = parse_queues(settings.queues, settings)
    if writer is None:
        writer = SpoolWriter(
            spool_dir(settings.data_dir),
            segment_max_bytes=settings.spool_segment_bytes,
            max_total_bytes=settings.spool_max_bytes,
        )
    router = QueueRouter(settings, writer)
    await router.start()
    loop = asyncio.get_running_loop()
    return router, writer, [QueueConsumer(spec, router, loop, settings) for spec in specs]


async def _retention_loop(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Apply ``METRONOME_RETENTION`` now and every ``METRONOME_RETENTION_INTERVAL_S``."""
    policy = RetentionPolicy.parse(settings.retention)
    while not stop.is_set():
        try:
            removed = await apply_policy(store, policy, data_dir=settings.data_dir)
            log.info("retention_applied policy=%s removed=%d", settings.retention, removed)
        except StoreUnavailable as exc:
            log.warning("retention_deferred reason=%s", exc.message)
        try:
            await asyncio.wait_for(stop.wait(), timeout=settings.retention_interval_s)
        except TimeoutError:
            pass


async def _collectors(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """The ``[[collectors]]`` and ``[[monitors]]``, each once per period across every
    worker (leases)."""
    from metronome.jobs.collectors import parse_collectors, run_collectors
    from metronome.jobs.monitors import parse_monitors, run_monitors
    from metronome.store.leases import open_leases

    specs = parse_collectors(settings.collectors)
    monitors = parse_monitors(settings.monitors)
    async with open_leases(settings) as leases:
        await asyncio.gather(
            run_collectors(specs, store, leases, stop), run_monitors(monitors, store, leases, stop)
        )


async def _rollup_loop(settings: Settings, store: Store, stop: asyncio.Event) -> None:
    """Telemetry rollups and retention every ``METRONOME_TELEMETRY_ROLLUP_INTERVAL_S``."""
    from metronome.jobs.rollups import roll_apps
    from metronome.telemetry.registry import open_apps

    async with open_apps(settings) as registry:
        while not stop.is_set():
            try:
                await roll_apps(store, registry, settings)
            except StoreUnavailable as exc:
                log.warning("rollups_deferred reason=%s", exc.message)
            except RuntimeError as exc:  # the store refused rollup documents
                log.warning("rollups_failed reason=%s", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=settings.telemetry_rollup_interval_s)
            except TimeoutError:
                pass


def _destinations(settings: Settings) -> tuple[tuple[Any, ...], Any]:
    """The ``[[destinations]]``, and what the shipper asks before removing a segment."""
    from metronome.pipeline.destinations import holds, parse_destinations, prune
    from metronome.pipeline.spool import spool_dir

    destinations = parse_destinations(
        settings.destinations, spool_max_bytes=settings.spool_max_bytes
    )
    spool = spool_dir(settings.data_dir)
    prune(spool, [d.name for d in destinations])
    if not destinations:
        return (), None
    return destinations, holds(spool, [d.name for d in destinations])


def _start_forwarders(
    settings: Settings, destinations: tuple[Any, ...], stop: asyncio.Event
) -> list[asyncio.Task[Any]]:
    """A loop per destination, forwarding its site's spooled events (pipeline/destinations)."""
    from metronome.pipeline.destinations.forwarder import Forwarder

    loop = asyncio.get_running_loop()
    return [loop.create_task(Forwarder(d, settings).run(stop)) for d in destinations]


async def run_worker(
    settings: Settings, *, drain: bool = False, parent_pid: int | None = None
) -> ShipperStats:
    """Ship until SIGTERM/SIGINT (or, with ``drain``, until the spool is empty)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
    try:
        async with open_store(settings) as store:
            delay = 0.5
            while not stop.is_set():  # never write before the templates are in place
                try:
                    await store.ensure_schema()
                    break
                except StoreUnavailable as exc:
                    metrics.SCHEMA_RETRIES.inc()
                    log.warning("schema_install_retry delay_s=%.1f reason=%s", delay, exc.message)
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=delay * random.uniform(0.5, 1))
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, settings.ship_backoff_max_s)
            forward = await _start_forward(settings) if settings.forward and not drain else None
            queues = None
            if settings.queues and not drain:
                queues = await _start_queues(settings, forward[2] if forward else None)
            retention = None
            if settings.retention and not drain:
                retention = loop.create_task(_retention_loop(settings, store, stop))
            collectors = None
            if (settings.collectors or settings.monitors) and not drain:
                collectors = loop.create_task(_collectors(settings, store, stop))
            live = None if drain else loop.create_task(_live_evaluator(settings, stop))
            kpis = None
            if settings.kpi_interval_s and not drain:
                from metronome.jobs.kpis import KpiWatcher

                kpis = loop.create_task(KpiWatcher(settings, store).run(stop))
            rollups = None
            if settings.telemetry_rollup_interval_s and not drain:
                rollups = loop.create_task(_rollup_loop(settings, store, stop))
            destinations, holds = _destinations(settings)  # issue 23
            forwarders = [] if drain else _start_forwarders(settings, destinations, stop)
            # the shipper's long-lived objects, out of the collector's way; it builds events
            # only for the forward input
            settle(enrichment=forward is not None or queues is not None)
            for consumer in queues[2] if queues is not None else ():
                consumer.start()  # after settle: the first messages find the tables loaded
                log.info("queue_consuming name=%s %s", consumer.spec.name, consumer.spec.describe())
            try:
                stats = await Shipper(settings, store, holds).run(stop, drain=drain)
            finally:
                if forwarders:
                    stop.set()
                    await asyncio.gather(*forwarders)
                if retention is not None:
                    stop.set()
                    await retention
                if collectors is not None:
                    stop.set()
                    await collectors
                if kpis is not None:
                    stop.set()
                    await kpis
                if rollups is not None:
                    stop.set()
                    await rollups
                if live is not None:
                    stop.set()
                    await live
                if queues is not None:
                    for consumer in queues[2]:
                        await asyncio.to_thread(consumer.stop)
                    await queues[0].close()
                    if forward is None:
                        queues[1].close()
                if forward is not None:
                    server, router, writer = forward
                    await server.close()
                    await router.close()
                    writer.close()
    finally:
        if watcher:
            watcher.cancel()
    return stats
