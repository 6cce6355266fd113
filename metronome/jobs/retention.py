"""Retention: how long to keep documents, and removing what is older.

``--keep 400d`` (days) or ``--keep 57w`` (weeks) keeps at least that long: the cutoff is the
start (00:00 UTC) of the UTC day that long ago, and everything from before it goes. Whole
days only, so both stores drop exactly the same documents: Elasticsearch deletes whole daily
indices ``<prefix>-<dataset>-YYYY.MM.DD`` named for days before the cutoff (by the date in the
name; deleting an index is instant and frees its disk at once), the embedded store deletes
the rows with an earlier ``@timestamp``.

The rejected access-log lines (``rejects.ndjson`` and its rotated ``rejects.1.ndjson``) go
with the logs: a rejects file last written before the cutoff is removed.

Visit summaries (dataset ``visits``, issue 25; by the visit's start) hold visitor ids and
pages as the events do, so they are kept to the same period: ``--dataset all`` removes
them too (``--dataset visits`` alone), and so do one site's retention and the periodic
policy, site by site.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from metronome.config import Settings
from metronome.logs.rejects import expire_rejects
from metronome.store import open_store
from metronome.store.base import RetentionResult, Store

__all__ = [
    "DATASETS",
    "RetentionPolicy",
    "apply_policy",
    "cutoff_ms",
    "expire_rejected_lines",
    "parse_keep",
    "run_retention",
    "run_site_retention",
]

DATASETS = ("ticks", "logs", "metrics", "visits")
_KEEP = re.compile(r"\s*(\d+)\s*([dw])\s*", re.IGNORECASE)
_MAX_DAYS = 100 * 366


def parse_keep(text: str) -> timedelta:
    """``400d`` or ``57w`` as a whole number of days (at least one, at most a century)."""
    match = _KEEP.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a retention period: use days or weeks, like 400d or 57w")
    days = int(match[1]) * (7 if match[2].lower() == "w" else 1)
    if not 1 <= days <= _MAX_DAYS:
        raise ValueError(f"{text!r}: keep from 1 day to {_MAX_DAYS} days")
    return timedelta(days=days)


def cutoff_ms(keep: timedelta, now: datetime | None = None) -> int:
    """Epoch ms of 00:00 UTC on the day ``keep`` before ``now``: documents before it go."""
    now = now or datetime.now(UTC)
    day = (now.astimezone(UTC) - keep).date()
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


async def run_retention(
    settings: Settings,
    keep: timedelta,
    datasets: tuple[str, ...],
    dry_run: bool = False,
    now: datetime | None = None,
) -> RetentionResult:
    """Remove (or, with ``dry_run``, only list) the documents of ``datasets`` older than
    ``keep`` from the configured store."""
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown datasets: {', '.join(sorted(unknown))}")
    async with open_store(settings) as store:
        return await store.delete_before(datasets, cutoff_ms(keep, now), dry_run=dry_run)


def expire_rejected_lines(
    settings: Settings, keep: timedelta, *, dry_run: bool = False, now: datetime | None = None
) -> list[Path]:
    """Remove (or only list) the rejects files whose lines are all older than ``keep``."""
    return expire_rejects(settings.data_dir, cutoff_ms(keep, now), dry_run=dry_run)


async def run_site_retention(
    settings: Settings,
    keep: timedelta,
    site: str,
    datasets: tuple[str, ...],
    dry_run: bool = False,
    now: datetime | None = None,
) -> int:
    """Remove (or, with ``dry_run``, only count) the documents of one site (ticks, logs and
    visit summaries: ``metrics`` points belong to no site) from before the cutoff of
    ``keep``."""
    from metronome.jobs.forget import forget, forget_query

    if not datasets or set(datasets) - {"ticks", "logs", "visits"}:
        raise ValueError("one site's documents are ticks, logs and visits (metrics have no site)")
    events = [d for d in datasets if d != "visits"]
    sources = [events[0] if len(events) == 1 else "all"] if events else []
    if "visits" in datasets:
        sources.append("visits")
    before = {"from": "0", "to": str(cutoff_ms(keep, now) - 1)}
    removed = 0
    async with open_store(settings) as store:
        for source in sources:
            query = forget_query([], source, before, site=site)
            removed += await forget(store, query, dry_run=dry_run)
    return removed


# -- the periodic policy (METRONOME_RETENTION), per site -------------------------------


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long to keep events: ``default`` for every site, ``sites`` overriding it."""

    default: timedelta | None
    sites: dict[str, timedelta]

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """``400d``, ``400d,shop=90d`` or ``shop=90d`` (only that site); empty: keep all."""
        default: timedelta | None = None
        sites: dict[str, timedelta] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            site, sep, period = part.rpartition("=")
            if sep:
                if not site.strip():
                    raise ValueError(f"{part!r}: name the site before '='")
                sites[site.strip()] = parse_keep(period)
            elif default is not None:
                raise ValueError("give one default period, and site=period for the others")
            else:
                default = parse_keep(period)
        return cls(default, sites)

    @property
    def enabled(self) -> bool:
        return self.default is not None or bool(self.sites)


async def apply_policy(
    store: Store,
    policy: RetentionPolicy,
    now: datetime | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> int:
    """Remove what ``policy`` no longer keeps; the number of documents removed.
    With ``data_dir``, its rejects files older than the longest period go too.

    With a default period, whole daily indices (or rows) older than the longest period any
    site keeps are dropped first; then each site kept shorter than that loses its older
    events one by one (a filtered delete), and so do the sites on the default period.
    """
    from metronome.events import fields as F
    from metronome.jobs.forget import forget_query

    removed = 0
    periods = [*policy.sites.values(), *([policy.default] if policy.default else [])]
    if not periods:
        return 0
    longest = max(periods)
    if data_dir is not None:
        expire_rejects(data_dir, cutoff_ms(longest, now))
    if policy.default is not None:
        # visit summaries (issue 25) hold visitor ids too: they go with the events
        result = await store.delete_before(("ticks", "logs", "visits"), cutoff_ms(longest, now))
        removed += result.documents

    def before(keep: timedelta) -> dict[str, str]:
        return {"from": "0", "to": str(cutoff_ms(keep, now) - 1)}

    for site, keep in policy.sites.items():
        if policy.default is None or keep < longest:
            for source in ("all", "visits"):  # events, and their visits' summaries
                query = forget_query([], source, before(keep), site=site)
                removed += await store.delete_matching(query)
    if policy.default is not None and policy.default < longest:
        others = [["is_not", F.SITE_ID, sorted(policy.sites)]] if policy.sites else []
        for source in ("all", "visits"):
            query = forget_query(others, source, before(policy.default))
            removed += await store.delete_matching(query)
    return removed
