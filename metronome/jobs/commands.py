"""``metronome collect NAME --once``, ``metronome probe``, and the collectors' lines of
``metronome status``."""

from __future__ import annotations

import asyncio
import signal
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from metronome.cli_support import fail
from metronome.cli_support import load_settings as _settings
from metronome.config import Settings
from metronome.errors import MetronomeError
from metronome.events import fields as F
from metronome.logconfig import configure_logging

__all__ = ["collect", "collector_status_lines", "probe"]


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


@click.command()
@click.option("--server", required=True, help="The Metronome server's URL (https://...).")
@click.option(
    "--key",
    required=True,
    envvar="METRONOME_PROBE_KEY",
    help="A key with the probe scope (or set METRONOME_PROBE_KEY, kept out of `ps`).",
)
@click.option("--region", required=True, help="Where this probe runs, like eu-west.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TOML file whose [[monitors]] to run (default: METRONOME_CONFIG's).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the probe keeps its queue (default: <METRONOME_DATA_DIR>/probe).",
)
@click.option(
    "--max-backoff",
    type=click.FloatRange(min=0.5),
    default=30.0,
    show_default=True,
    help="The longest wait, in seconds, between deliveries while the server is unreachable.",
)
def probe(
    server: str,
    key: str,
    region: str,
    config_file: Path | None,
    data_dir: Path | None,
    max_backoff: float,
) -> None:
    """Run the [[monitors]] checks from this machine and post the results to SERVER.

    Results wait in a local durable queue until the server has them, so a probe cut
    off from the server delivers what it measured meanwhile (oldest first) once it
    can. Stop it with Ctrl-C or SIGTERM: running checks finish, the queue is sent if
    the server answers, and the rest waits for the next start.
    """
    from metronome.jobs.monitors import parse_monitors  # not at import: see collect
    from metronome.jobs.probe import run_probe

    settings = _settings()
    configure_logging(settings)
    if not F.APP_ID_PATTERN.match(region):
        fail(f"--region {region!r}: 1 to 64 lowercase letters, digits, '-' and '_'")
    if not server.startswith(("http://", "https://")):
        fail(f"--server {server!r}: expected an http:// or https:// URL")
    raw: Any = settings.monitors
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text()).get("monitors", [])
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(f"{config_file}: {exc}")
        if not isinstance(raw, list) or not all(isinstance(m, dict) for m in raw):
            fail(f"{config_file}: [[monitors]] must be tables")
    try:
        specs = parse_monitors(raw)
    except MetronomeError as exc:
        fail(exc.message)
    if not specs:
        fail("no [[monitors]] to run: give --config FILE or set METRONOME_CONFIG")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stats = await run_probe(
            specs,
            server=server.rstrip("/"),
            key=key,
            region=region,
            data_dir=data_dir or settings.data_path / "probe",
            stop=stop,
            max_backoff_s=max_backoff,
        )
        click.echo(
            f"probe stopped: {stats.measured} measured, {stats.delivered} delivered,"
            f" {stats.dropped} dropped",
            err=True,
        )

    asyncio.run(_main())
