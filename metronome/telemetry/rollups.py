"""An app's declared rollups as the query model sees them (:mod:`metronome.reports.rollup`)."""

from __future__ import annotations

from collections.abc import Iterable

from metronome.reports.rollup import RollupSource, bucket_floor
from metronome.reports.timebuckets import EARLIEST_MS
from metronome.telemetry.model import App, Rollup

__all__ = ["rollup_sources", "source_of"]


def source_of(app: App, rollup: Rollup) -> RollupSource:
    """The rollup as the query model sees it: complete up to the last whole bucket before
    the app's watermark."""
    rolled = dict(app.rolled).get(rollup.text)
    complete = EARLIEST_MS if rolled is None else bucket_floor(rolled, rollup.interval)
    return RollupSource(
        app.id, rollup.metric, rollup.interval, rollup.stats, app.rollup_tags(rollup), complete
    )


def rollup_sources(apps: Iterable[App]) -> list[RollupSource]:
    """Every rollup of ``apps``, ready for :func:`~metronome.reports.rollup.from_rollup`."""
    return [source_of(app, rollup) for app in apps for rollup in app.rollups]
