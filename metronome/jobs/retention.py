"""Retention: how long to keep documents, and removing what is older.

``--keep 400d`` (days) or ``--keep 57w`` (weeks) keeps at least that long: the cutoff is the
start (00:00 UTC) of the UTC day that long ago, and everything from before it goes. Whole
days only, so both stores drop exactly the same documents: Elasticsearch deletes whole daily
indices ``<prefix>-<dataset>-YYYY.MM.DD`` named for days before the cutoff (by the date in the
name; deleting an index is instant and frees its disk at once), the embedded store deletes
the rows with an earlier ``@timestamp``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from metronome.config import Settings
from metronome.store import open_store
from metronome.store.base import RetentionResult

__all__ = ["DATASETS", "cutoff_ms", "parse_keep", "run_retention"]

DATASETS = ("ticks", "logs", "metrics")
_KEEP = re.compile(r"\s*(\d+)\s*([dw])\s*", re.IGNORECASE)
_MAX_DAYS = 100 * 366


def parse_keep(text: str) -> timedelta:
    """``400d`` or ``57w`` as a whole number of days (at least one, at most a century)."""
    match = _KEEP.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a retention period: use days or weeks, like 400d"
                         " or 57w")
    days = int(match[1]) * (7 if match[2].lower() == "w" else 1)
    if not 1 <= days <= _MAX_DAYS:
        raise ValueError(f"{text!r}: keep from 1 day to {_MAX_DAYS} days")
    return timedelta(days=days)


def cutoff_ms(keep: timedelta, now: datetime | None = None) -> int:
    """Epoch ms of 00:00 UTC on the day ``keep`` before ``now``: documents before it go."""
    now = now or datetime.now(UTC)
    day = (now.astimezone(UTC) - keep).date()
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


async def run_retention(settings: Settings, keep: timedelta, datasets: tuple[str, ...],
                        dry_run: bool = False, now: datetime | None = None) -> RetentionResult:
    """Remove (or, with ``dry_run``, only list) the documents of ``datasets`` older than
    ``keep`` from the configured store."""
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown datasets: {', '.join(sorted(unknown))}")
    store = open_store(settings)
    await store.open()
    try:
        return await store.delete_before(datasets, cutoff_ms(keep, now), dry_run=dry_run)
    finally:
        await store.close()
