"""``metronome apps roll``: one pass of telemetry rollups and retention, as the worker runs
every ``METRONOME_TELEMETRY_ROLLUP_INTERVAL_S``."""

from __future__ import annotations

import asyncio
import sys

import click
import orjson

from metronome.cli_support import load_settings
from metronome.errors import MetronomeError
from metronome.jobs.rollups import RollupPass, roll_apps
from metronome.store import open_store
from metronome.telemetry.registry import open_apps

__all__ = ["roll"]


@click.command("roll")
@click.option("--app", "only", multiple=True, help="Only this app. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print what the pass did as JSON.")
def roll(only: tuple[str, ...], as_json: bool) -> None:
    """Roll up what arrived since the last pass (catching up after downtime), then apply
    the apps' retention."""
    settings = load_settings()

    async def _run() -> RollupPass:
        async with open_store(settings) as store, open_apps(settings) as registry:
            await store.ensure_schema()
            return await roll_apps(store, registry, settings, only=only)

    try:
        done = asyncio.run(_run())
    except (MetronomeError, RuntimeError) as exc:
        click.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        sys.exit(1)
    summary = {"buckets": done.buckets, "documents": done.documents, "removed": done.removed}
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(
            f"rolled {done.buckets} buckets into {done.documents} rollup documents;"
            f" removed {done.removed} past retention",
            err=True,
        )
