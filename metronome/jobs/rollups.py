"""Telemetry rollups and retention: what the worker runs for each app, every
``METRONOME_TELEMETRY_ROLLUP_INTERVAL_S`` (and ``metronome apps roll`` once).

One pass, per app and declared rollup:

1. find the earliest point of the rollup's metric stored since the last pass (its
   ``event.ingested`` after the app's watermark: new points, and late ones for old
   buckets);
2. roll every bucket from that point's bucket to now again, a week of buckets at a time:
   delete the rollup documents of those buckets, read the raw points grouped by bucket,
   site and kept tags (:func:`metronome.reports.rollup.roll_query`) and write one rollup
   document per group, with a deterministic id; a pass run twice writes the same;
3. move the watermark to the moment before which every point is in the store (now, or the
   receipt time of the oldest point still in this host's spool) and store it with the app:
   ``/query`` answers from the rollup only for buckets that ended before it.

After a downtime the first pass starts from the old watermark, so it catches up. Then raw
points and rollups older than the app's (or the server's) retention are deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metronome.config import Settings
from metronome.events import fields as F
from metronome.events.document import parse_iso_ms
from metronome.pipeline.spool import backlog, spool_dir
from metronome.reports.rollup import (
    UNIT_MS,
    RollupSource,
    bucket_floor,
    points_in,
    roll_query,
    rollup_documents,
    rollups_in,
    touched_query,
)
from metronome.reports.timebuckets import EARLIEST_MS
from metronome.store.base import Store
from metronome.store.query import FieldRef, GroupQuery, Leaf, MetricSpec
from metronome.telemetry.model import App
from metronome.telemetry.registry import AppRegistry
from metronome.telemetry.rollups import source_of

__all__ = ["RollupPass", "roll_apps"]

log = logging.getLogger("metronome.rollups")

_CHUNK_BUCKETS = 168  # buckets rolled per round (a week of hours)
_PAGE = 5000  # groups read per request
_WRITE = 1000  # documents per write
_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class RollupPass:
    """What one pass did."""

    buckets: int = 0
    documents: int = 0
    removed: int = 0


def _moment(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_iso_ms(value)
    return int(value)


async def _roll(store: Store, source: RollupSource, start_ms: int, end_ms: int) -> tuple[int, int]:
    """Roll the buckets in ``[start_ms, end_ms)`` again; (buckets, documents written)."""
    buckets = documents = 0
    unit = UNIT_MS[source.interval]
    fields = await store.field_names(points_in(source, start_ms, end_ms), F.FIELDS, source.app)
    chunk = start_ms
    while chunk < end_ms:
        stop = min(end_ms, chunk + _CHUNK_BUCKETS * unit)
        query = roll_query(source, chunk, stop, fields)
        rows: list[Any] = []
        after = None
        while True:
            page = await store.groups(query, after=after, limit=_PAGE)
            rows += page
            if len(page) < _PAGE:
                break
            after = page[-1][0]
        await store.delete_matching(rollups_in(source, chunk, stop))
        written = rollup_documents(source, query, rows)
        for first in range(0, len(written), _WRITE):
            outcomes = await store.write(written[first : first + _WRITE])
            refused = [o for o in outcomes if not o.ok]
            if refused:
                raise RuntimeError(f"the store refused rollups: {refused[0].reason}")
        buckets += (stop - chunk) // unit
        documents += len(written)
        chunk = stop
    return buckets, documents


def _safe_ms(data_dir: str, now_ms: int) -> int:
    """Every point received before this is in the store (this host's spool is behind
    from its oldest unshipped point on)."""
    oldest = backlog(spool_dir(data_dir)).oldest_unshipped_ms
    return min(now_ms, oldest if oldest is not None else now_ms) - 1000


async def _retention(store: Store, settings: Settings, app: App, now_ms: int) -> int:
    removed = 0
    for dataset, days in (
        (F.POINT_DATASET, app.raw_days or settings.telemetry_raw_days),
        (F.ROLLUP_DATASET, app.rollup_days or settings.telemetry_rollup_days),
    ):
        if not days:
            continue
        cutoff = (now_ms // _DAY_MS - days) * _DAY_MS
        query = GroupQuery(
            datasets=(dataset,),
            start_ms=EARLIEST_MS,
            end_ms=cutoff,
            tz="UTC",
            bucket_starts=(),
            dimensions=(),
            metrics=(MetricSpec("events", "count"),),
            filter=Leaf("is", FieldRef(F.APP, "keyword"), (app.id,)),
        )
        removed += await store.delete_matching(query)
    return removed


async def roll_apps(
    store: Store,
    registry: AppRegistry,
    settings: Settings,
    *,
    only: Sequence[str] = (),
    now_ms: int | None = None,
) -> RollupPass:
    """One pass over every app with rollups (or the ``only`` ones)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    safe = _safe_ms(settings.data_dir, now)
    total = RollupPass()
    for app in (await registry.load()).values():
        if only and app.id not in only:
            continue
        marks = dict(app.rolled)
        for rollup in app.rollups:
            source = source_of(app, rollup)
            since = marks.get(rollup.text, EARLIEST_MS)
            rows = await store.groups(touched_query(source, since, now), after=None, limit=1)
            first = _moment(rows[0][1][0]) if rows else None
            if first is not None:
                start = bucket_floor(first, rollup.interval)
                raw_days = app.raw_days or settings.telemetry_raw_days
                if raw_days:  # never roll again buckets whose raw points are gone
                    start = max(start, (now // _DAY_MS - raw_days) * _DAY_MS)
                end = bucket_floor(now, rollup.interval) + UNIT_MS[rollup.interval]
                buckets, documents = (
                    await _roll(store, source, start, end) if start < end else (0, 0)
                )
                total = dataclasses.replace(
                    total,
                    buckets=total.buckets + buckets,
                    documents=total.documents + documents,
                )
                log.info(
                    "rollup_rolled app=%s rollup=%r buckets=%d documents=%d",
                    app.id,
                    rollup.text,
                    buckets,
                    documents,
                )
            marks[rollup.text] = safe
        removed = await _retention(store, settings, app, now)
        total = dataclasses.replace(total, removed=total.removed + removed)
        if app.rollups:
            fresh = (await registry.load()).get(app.id, app)  # keep changes made meanwhile
            await registry.put(dataclasses.replace(fresh, rolled=tuple(sorted(marks.items()))))
    return total
