"""The ``metronome`` command."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click

from metronome import __version__
from metronome.config import Settings, settings_table
from metronome.errors import ConfigError, MetronomeError

__all__ = ["main"]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(os.environ, **{k: v for k, v in overrides.items()
                                                if v is not None})
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metronome")
def main() -> None:
    """Metronome: self-hosted usage analytics."""


@main.command()
@click.option("--host", help="Bind address [default: METRONOME_HOST or 127.0.0.1].")
@click.option("--port", type=int, help="Port [default: METRONOME_PORT or 8080].")
@click.option("--workers", type=click.IntRange(1, 256),
              help="Worker processes [default: METRONOME_WORKERS or 2].")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Run the HTTP API (gunicorn with uvicorn workers)."""
    from metronome.server import run_server

    settings = _settings(host=host, port=port, workers=workers)
    # the workers read their settings from the environment: pass the CLI's choices on
    os.environ["METRONOME_HOST"] = settings.host
    os.environ["METRONOME_PORT"] = str(settings.port)
    os.environ["METRONOME_WORKERS"] = str(settings.workers)
    store = f"Elasticsearch at {settings.elasticsearch_url}" if settings.elasticsearch_url \
        else f"the embedded store in {settings.data_dir}"
    click.echo(f"metronome {__version__} on http://{settings.host}:{settings.port}"
               f" with {settings.workers} workers, storing in {store}", err=True)
    run_server(settings)


@main.group()
def templates() -> None:
    """Manage the store's index templates (or tables)."""


@templates.command("install")
def templates_install() -> None:
    """Install or update the index templates; unchanged ones are left alone."""
    from metronome.store import open_store

    settings = _settings()

    async def _install() -> list[Any]:
        store = open_store(settings)
        await store.open()
        try:
            return await store.ensure_schema()
        finally:
            await store.close()

    try:
        changes = asyncio.run(_install())
    except MetronomeError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    for change in changes:
        click.echo(f"{change.action:9} {change.name}")


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Print the README's configuration table.")
def settings_cmd(markdown: bool) -> None:
    """Show the settings in effect (or, with --markdown, the documented table)."""
    if markdown:
        click.echo(settings_table())
        return
    settings = _settings()
    for name in settings.__slots__:  # type: ignore[attr-defined]
        click.echo(f"{name} = {getattr(settings, name)!r}")
