"""``metronome collect NAME --once``, and the collectors' lines of ``metronome status``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import click
import orjson

from metronome.cli_support import fail
from metronome.cli_support import load_settings as _settings
from metronome.config import Settings

__all__ = ["collect", "collector_status_lines"]


@click.command()
@click.argument("name")
@click.option(
    "--once",
    is_flag=True,
    required=True,
    help="Run the source once now (the only mode: the worker runs collectors on schedule).",
)
def collect(name: str, once: bool) -> None:
    """Run collector NAME once and print the points it would store (nothing is stored)."""
    # imported here, not with the CLI: `metronome serve` must set up the Prometheus
    # multiprocess directory before anything imports the metrics (cli._multiprocess_metrics)
    from metronome.jobs.collectors import collector_documents, measure_once, parse_collectors

    settings = _settings()
    specs = {s.name: s for s in parse_collectors(settings.collectors)}
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none in the configuration file"
        fail(f"no collector {name!r}; collectors: {known}")
    now_ms = int(time.time() * 1000)
    start_ms = now_ms // (spec.every_s * 1000) * spec.every_s * 1000
    try:
        measured = asyncio.run(measure_once(spec))
    except TimeoutError as exc:
        fail(str(exc))
    except Exception as exc:  # the platform's source failed: say how, as the worker logs it
        fail(f"{spec.source.describe()}: {type(exc).__name__}: {exc}")
    for document in collector_documents(spec, start_ms, measured):
        click.echo(orjson.dumps(document.source).decode())
    click.echo(f"{len(measured)} points from {spec.source.describe()}", err=True)


def _when(ms: object) -> str:
    if not isinstance(ms, int | float) or ms <= 0:
        return "never"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def collector_status_lines(settings: Settings) -> list[str]:
    """One line per declared collector: its last run, outcome and failures so far."""
    from metronome.jobs.collectors import parse_collectors  # not at import: see collect
    from metronome.store.leases import open_leases

    specs = parse_collectors(settings.collectors)
    if not specs:
        return []

    async def _load() -> dict[str, object]:
        async with open_leases(settings) as leases:
            return {lease.name: lease for lease in await leases.leases()}

    found = asyncio.run(_load())
    lines = []
    for spec in specs:
        lease = found.get(spec.lease_name)
        state = getattr(lease, "state", {}) or {}
        running = lease is not None and getattr(lease, "expires_ms", 0) > time.time() * 1000
        outcome = "running" if running else state.get("last_outcome", "never run")
        error = f" ({state['last_error']})" if state.get("last_error") else ""
        lines.append(
            f"collector {spec.name}: every {spec.every_s}s, last run"
            f" {_when(state.get('last_run_ms'))}: {outcome}{error};"
            f" last success {_when(state.get('last_success_ms'))};"
            f" {state.get('failed_total', 0)} failed, {state.get('missed_total', 0)} missed"
            f" of {state.get('runs_total', 0)} runs"
        )
    return lines
