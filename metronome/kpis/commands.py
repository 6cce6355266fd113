"""``metronome kpis ...``: define, list and remove KPIs.

They write straight to the KPI registry beside the configured store (the SQLite file in
``METRONOME_DATA_DIR``, or ``<prefix>-kpis`` in Elasticsearch), like ``metronome sites``;
the worker evaluates every KPI each ``METRONOME_KPI_INTERVAL_S``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from metronome.cli_support import load_settings as _settings
from metronome.cli_support import run_with
from metronome.errors import MetronomeError
from metronome.kpis.model import parse_kpi
from metronome.kpis.registry import KpiRegistry, open_kpis

__all__ = ["kpis"]

T = TypeVar("T")


def _with_registry(job: Callable[[KpiRegistry], Awaitable[T]]) -> T:
    settings = _settings()
    return run_with(lambda: open_kpis(settings), job)


def _json_option(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise click.BadParameter(f"{what} must be JSON, such as {text!r} in quotes") from None


@click.group()
def kpis() -> None:
    """Define the KPIs the worker watches (trends, thresholds, anomalies)."""


@kpis.command("create")
@click.option("--site", "site_id", default="default", show_default=True, help="The KPI's site.")
@click.option("--name", required=True, help="A name for people.")
@click.option("--id", "kpi_id", help="The KPI id [default: generated].")
@click.option(
    "--metric",
    default="events",
    show_default=True,
    help='A /query metric: events, visitors, ... or JSON such as \'{"sum": "bytes"}\'.',
)
@click.option(
    "--source", default="all", show_default=True, help="ticks, logs or all (as in /query)."
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    help='A /query filter as JSON, such as \'["is", "item.id", ["home"]]\'. Repeatable.',
)
@click.option(
    "--interval",
    type=click.Choice(["hour", "day"]),
    default="hour",
    show_default=True,
    help="Bucket of the series.",
)
@click.option(
    "--window", default="24h", show_default=True, help="Period a trend compares: Nh or Nd."
)
@click.option("--above", type=float, help="Threshold: raise when a bucket is above it.")
@click.option("--below", type=float, help="Threshold: raise when a bucket is below it.")
@click.option("--target", type=float, help="A target, shown with the KPI.")
@click.option(
    "--sensitivity",
    type=float,
    default=1.0,
    show_default=True,
    help="Anomaly sensitivity, 0.25 to 4 (2 halves the threshold).",
)
@click.option(
    "--min-volume",
    type=float,
    default=20,
    show_default=True,
    help="Below this (per bucket, per window for trends) nothing is judged.",
)
@click.option("--webhook", help="URL that receives the KPI's insights (POST, JSON).")
@click.option("--dashboard", help="Place the KPI on this dashboard, as a widget.")
@click.option("--position", type=int, default=0, show_default=True, help="Widget position.")
def kpis_create(
    site_id: str,
    name: str,
    kpi_id: str | None,
    metric: str,
    source: str,
    filters: tuple[str, ...],
    interval: str,
    window: str,
    above: float | None,
    below: float | None,
    target: float | None,
    sensitivity: float,
    min_volume: float,
    webhook: str | None,
    dashboard: str | None,
    position: int,
) -> None:
    """Define a KPI (replacing one with the same id); prints it as JSON."""
    metric_value = _json_option(metric, "--metric") if metric.startswith("{") else metric
    body: dict[str, Any] = {
        "name": name,
        "query": {
            "source": source,
            "metrics": [metric_value],
            "filters": [_json_option(f, "--filter") for f in filters],
        },
        "interval": interval,
        "window": window,
        "above": above,
        "below": below,
        "target": target,
        "sensitivity": sensitivity,
        "min_volume": min_volume,
        "webhook": webhook,
        "dashboard": dashboard,
        "position": position,
    }
    if kpi_id:
        body["id"] = kpi_id
    try:
        kpi = parse_kpi(body, site_id)
    except MetronomeError as exc:
        raise click.UsageError(exc.message) from None

    async def _put(registry: KpiRegistry) -> None:
        await registry.put(kpi)

    _with_registry(_put)
    click.echo(orjson.dumps(kpi.to_json()).decode())


@kpis.command("list")
@click.option("--site", "site_id", help="Only this site's KPIs [default: every site's].")
def kpis_list(site_id: str | None) -> None:
    """List KPIs, one JSON object per line."""
    for kpi in _with_registry(lambda r: r.list(site_id)):
        click.echo(orjson.dumps(kpi.to_json()).decode())


@kpis.command("delete")
@click.argument("kpi_id")
@click.option("--site", "site_id", default="default", show_default=True, help="The KPI's site.")
def kpis_delete(kpi_id: str, site_id: str) -> None:
    """Remove a KPI (its insights stay)."""
    _with_registry(lambda r: r.delete(site_id, kpi_id))
    click.echo(f"removed KPI {kpi_id} of site {site_id}", err=True)
