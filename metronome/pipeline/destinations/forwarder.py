"""The forwarder: one loop per destination, run by ``metronome worker`` beside the shipper.

Each pass reads the destination's next events from the spool (:class:`~.cursor.Cursor`:
only what is already durable there, so forwarding never slows ingestion), keeps those of
its site, sources and event names, waits for its rate limit, and hands them to the sender
(:mod:`.senders`) in batches of ``batch_size``. The cursor moves once the destination
acknowledged: a restart sends again at most the batch that was in flight when the process
died (SIGTERM lets it finish first). Before a batch goes, its ids and end are written to
an in-flight marker (fsynced), so a restart after SIGKILL knows exactly which events the
destination may hold twice: counted as ``in_doubt`` and logged. Destinations that drop a
resent event by id (webhook receivers by ``id``, Amplitude by ``insert_id``, RabbitMQ
consumers by ``message_id``, another Metronome by storing it under the same id) then hold
it once; for GA4, which cannot, a batch is one request (at most 25 events of one
visitor, ``one_request``), the smallest window the protocol allows. What the destination
refuses for good goes to ``<data dir>/dead-letters-<name>.ndjson`` (0600) with the
reason; what may succeed later is sent again with doubling backoff and jitter up to
``backoff_max`` seconds, or after the ``Retry-After`` the destination asked for.

Only one process forwards to a destination at a time (``destinations/<name>.lock``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metronome.config import Settings
from metronome.files import open_private
from metronome.pipeline.destinations.cursor import (
    DIRECTORY,
    Cursor,
    Entry,
    names_on_disk,
    read_state,
)
from metronome.pipeline.destinations.senders import Sender, Sent, open_sender
from metronome.pipeline.destinations.spec import Destination
from metronome.pipeline.spool import spool_dir

__all__ = ["DestinationCollector", "Forwarder", "ForwarderStats", "dead_letter_path"]

log = logging.getLogger("metronome.destinations")

_READ_BYTES = 1 << 20  # spool bytes read from each segment at a time, at most
_SCAN_MAX = 50_000  # events looked at for one batch, at most (the rest: next batch)


def dead_letter_path(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"dead-letters-{name}.ndjson"


@dataclass
class ForwarderStats:
    """A destination's figures (kept in its ``state.json`` across restarts)."""

    delivered: int = 0
    failed: int = 0  # attempts that will be tried again
    dead_lettered: int = 0
    skipped: int = 0  # given up past backlog_max_bytes
    in_doubt: int = 0  # in flight when a process died: sent again, maybe received twice
    last_error: str | None = None
    last_delivered_at: float | None = None
    last_in_doubt: str | None = None  # "<first id>..<last id> (<events>)"


class Forwarder:
    """Moves one destination's events from the spool to it; ``run`` until stopped."""

    def __init__(
        self, destination: Destination, settings: Settings, sender: Sender | None = None
    ) -> None:
        self.destination = destination
        self._spool = spool_dir(settings.data_dir)
        self._cursor = Cursor(self._spool, destination.name)
        self._dead_letters = dead_letter_path(settings.data_dir, destination.name)
        self._sender = sender
        self._poll_s = settings.ship_poll_ms / 1000
        state = read_state(self._spool, destination.name)
        known = {k: state[k] for k in asdict(ForwarderStats()) if k in state}
        self.stats = ForwarderStats(**known)
        self._free_at = 0.0  # rate limit: when the next event may go
        self._lock: IO[bytes] | None = None

    def _take_lock(self) -> bool:
        handle = open_private(self._spool / DIRECTORY / f"{self.destination.name}.lock", "ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    async def _wait(self, stop: asyncio.Event, seconds: float) -> bool:
        """Sleep ``seconds`` unless stopped; True when stopped."""
        if seconds <= 0:
            return stop.is_set()
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
            return True
        except TimeoutError:
            return False

    async def run(self, stop: asyncio.Event) -> ForwarderStats:
        name = self.destination.name
        while not self._take_lock():
            log.info("destination_waiting another process forwards to %s", name)
            if await self._wait(stop, 1.0):
                return self.stats
        self._note_in_doubt()
        sender = self._sender or open_sender(self.destination)
        delay = 0.2
        try:
            while not stop.is_set():
                try:
                    self._keep_backlog_bounded()
                    moved, retry_in = await self.forward_once(sender)
                except Exception as exc:  # a bug or a disk error must not end forwarding
                    log.exception("destination_failed destination=%s", name)
                    self.stats.failed += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    moved, retry_in = 0, 0.0
                if retry_in is not None:
                    wait = retry_in if retry_in > 0 else delay * random.uniform(0.5, 1.0)
                    delay = min(delay * 2, self.destination.backoff_max_s)
                    if await self._wait(stop, wait):
                        break
                    continue
                delay = 0.2
                if not moved and await self._wait(stop, self._poll_s):
                    break
        finally:
            await sender.close()
            if self._lock is not None:
                self._lock.close()
        return self.stats

    async def forward_once(self, sender: Sender) -> tuple[int, float | None]:
        """One batch: (events passed, None) or, when the destination must be tried again,
        (events passed, seconds to wait: 0 for the backoff's choice)."""
        d = self.destination
        entries: list[Entry] = []
        wanted: list[Entry] = []
        at: list[int] = []  # where each wanted entry is among the entries
        read_on: dict[Path, int] = {}
        while len(wanted) < d.batch_size and len(entries) < _SCAN_MAX:
            more = self._cursor.read(d.batch_size - len(wanted), _READ_BYTES, read_on)
            if not more:
                break
            for entry in more:
                read_on[entry.segment] = entry.end
                entries.append(entry)
                if d.wants(entry.document.source, entry.document.dataset):
                    wanted.append(entry)
                    at.append(len(entries) - 1)
        if not entries:
            self._cursor.forget_missing()
            return 0, None
        upto = len(entries)
        if not wanted:
            self._commit(entries)
            return len(entries), None
        one_request = getattr(sender, "one_request", None)
        if one_request is not None:  # a destination that cannot drop a resent event
            take = one_request([e.document for e in wanted])
            if take < len(wanted):  # each of its requests is a batch: in doubt is one request
                wanted, at = wanted[:take], at[:take]
                upto = at[-1] + 1
        await self._rate_limit(len(wanted))
        self._cursor.begin(wanted)
        sent: Sent = await sender.send([e.document for e in wanted])
        if sent.refused:
            self._dead_letter([(wanted[i], why) for i, why in sorted(sent.refused.items())])
        if sent.acked >= len(wanted):
            self._commit(entries[:upto])
        elif sent.acked:
            self._commit(entries[: at[sent.acked - 1] + 1])
        self.stats.delivered += sent.acked - len(sent.refused)
        self.stats.dead_lettered += len(sent.refused)
        if sent.acked - len(sent.refused) > 0:
            self.stats.last_delivered_at = time.time()
        if sent.acked < len(wanted):
            self.stats.failed += 1
            self.stats.last_error = sent.error
            log.warning(
                "destination_retry destination=%s events=%d reason=%s",
                d.name,
                len(wanted) - sent.acked,
                sent.error,
            )
            self._save_state()
            return sent.acked, sent.retry_after_s or 0.0
        self._save_state()
        return upto, None

    def _note_in_doubt(self) -> None:
        """Count and name the batch in flight when the last process died, if any: it is
        sent again, and a destination that does not drop events by id counts it twice."""
        doubt = self._cursor.in_doubt()
        if doubt is None:
            return
        events = doubt.get("events")
        self.stats.in_doubt += events if isinstance(events, int) else 0
        self.stats.last_in_doubt = f"{doubt.get('first_id')}..{doubt.get('last_id')} ({events})"
        log.warning(
            "destination_in_doubt destination=%s events=%s first_id=%s last_id=%s: in flight"
            " when the last forwarder died, sent again",
            self.destination.name,
            events,
            doubt.get("first_id"),
            doubt.get("last_id"),
        )
        self._save_state()

    async def _rate_limit(self, events: int) -> None:
        rate = self.destination.rate_per_s
        if not rate:
            return
        now = time.monotonic()
        if self._free_at > now:
            await asyncio.sleep(self._free_at - now)
        self._free_at = max(now, self._free_at) + events / rate

    def _commit(self, entries: list[Entry]) -> None:
        positions: dict[Path, int] = {}
        for entry in entries:  # each segment's entries are in order: the last one counts
            positions[entry.segment] = entry.end
        self._cursor.commit(positions)

    def _keep_backlog_bounded(self) -> None:
        given = self._cursor.give_up(self.destination.backlog_max_bytes)
        if not given:
            return
        now = time.time()
        lines = []
        for segment, size, events, first, last in given:
            lines.append(
                orjson.dumps(
                    {
                        "time": now,
                        "destination": self.destination.name,
                        "reason": "backlog_limit: the destination was behind by more than"
                        f" backlog_max_bytes ({self.destination.backlog_max_bytes}); these"
                        " events are in the store but were not forwarded",
                        "segment": segment.name,
                        "bytes": size,
                        "events": events,
                        "first_id": first,
                        "last_id": last,
                    }
                )
                + b"\n"
            )
            self.stats.skipped += events
            log.warning(
                "destination_backlog_skipped destination=%s segment=%s events=%d",
                self.destination.name,
                segment.name,
                events,
            )
        self._append_dead_letters(b"".join(lines))
        self._save_state()

    def _dead_letter(self, refused: list[tuple[Entry, str]]) -> None:
        now = time.time()
        lines = b"".join(
            orjson.dumps(
                {
                    "time": now,
                    "destination": self.destination.name,
                    "id": entry.document.id,
                    "dataset": entry.document.dataset,
                    "reason": reason,
                    "document": entry.document.source,
                }
            )
            + b"\n"
            for entry, reason in refused
        )
        self._append_dead_letters(lines)
        for entry, reason in refused:
            log.warning(
                "destination_dead_letter destination=%s id=%s reason=%s",
                self.destination.name,
                entry.document.id,
                reason,
            )

    def _append_dead_letters(self, lines: bytes) -> None:
        with open_private(self._dead_letters, "ab") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _save_state(self) -> None:
        self._cursor.write_state(asdict(self.stats))


class DestinationCollector(Collector):
    """Each destination's counters (from its ``state.json``) and lag (from its cursor),
    read from the spool directory at scrape time, whichever process forwards."""

    def __init__(self, spool: Path) -> None:
        self._spool = spool

    def _families(
        self,
    ) -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(
                "metronome_destination_events",
                "Events each destination has taken (`delivered`), refused for good"
                " (`dead_lettered`, in `dead-letters-<name>.ndjson`), was given up for"
                " past its backlog limit (`skipped`), or had in flight when a forwarder"
                " died (`in_doubt`: sent again, received twice where the destination"
                " does not drop an event it has by id).",
                labels=["destination", "outcome"],
            ),
            CounterMetricFamily(
                "metronome_destination_failures",
                "Batches a destination did not take and that are sent again (down, 429, 5xx).",
                labels=["destination"],
            ),
            GaugeMetricFamily(
                "metronome_destination_lag_events",
                "Events spooled that a destination has not taken yet.",
                labels=["destination"],
            ),
            GaugeMetricFamily(
                "metronome_destination_lag_bytes",
                "Spool bytes a destination has not passed yet (what it holds of the spool).",
                labels=["destination"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        events, failures, lag_events, lag_bytes = self._families()
        for name in names_on_disk(self._spool):
            state = read_state(self._spool, name)
            for outcome in ("delivered", "dead_lettered", "skipped", "in_doubt"):
                events.add_metric([name, outcome], float(state.get(outcome, 0)))
            failures.add_metric([name], float(state.get("failed", 0)))
            lag = Cursor(self._spool, name).lag()
            lag_events.add_metric([name], float(lag.events))
            lag_bytes.add_metric([name], float(lag.bytes))
        yield from (events, failures, lag_events, lag_bytes)
