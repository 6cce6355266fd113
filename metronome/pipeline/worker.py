"""``metronome worker``: install the store's schema, then ship the spool until stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.pipeline.shipper import Shipper, ShipperStats
from metronome.store import open_store

__all__ = ["run_worker"]

log = logging.getLogger("metronome.worker")


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("shipper_orphaned parent=%d: stopping", parent)
            stop.set()
        await asyncio.sleep(1.0)


async def run_worker(settings: Settings, *, drain: bool = False,
                     parent_pid: int | None = None) -> ShipperStats:
    """Ship until SIGTERM/SIGINT (or, with ``drain``, until the spool is empty)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
    store = open_store(settings)
    await store.open()
    try:
        delay = 0.5
        while not stop.is_set():  # never write before the templates are in place
            try:
                await store.ensure_schema()
                break
            except StoreUnavailable as exc:
                log.warning("schema_install_retry delay_s=%.1f reason=%s", delay, exc.message)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay * random.uniform(.5, 1))
                except TimeoutError:
                    pass
                delay = min(delay * 2, settings.ship_backoff_max_s)
        stats = await Shipper(settings, store).run(stop, drain=drain)
    finally:
        if watcher:
            watcher.cancel()
        await store.close()
    return stats
