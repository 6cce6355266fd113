"""``metronome apps ...``: the apps that report telemetry.

They write straight to the apps registry beside the configured store (the SQLite file in
``METRONOME_DATA_DIR``, or ``<prefix>-apps`` in Elasticsearch), so they work from any host
with the same settings; running servers pick changes up within
``METRONOME_SITES_CACHE_S``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from metronome.cli_support import load_settings as _settings
from metronome.cli_support import run_with
from metronome.config import Settings
from metronome.errors import MetronomeError
from metronome.events import fields as F
from metronome.events.point import NAME_PATTERN
from metronome.sites.model import now_ms
from metronome.sites.registry import check_site, open_registry
from metronome.telemetry.model import ENDPOINTS, App, Rollup, Version, parse_rollup, parse_versions
from metronome.telemetry.registry import AppRegistry, open_apps

__all__ = ["apps"]

T = TypeVar("T")


def _with_apps(settings: Settings, job: Callable[[AppRegistry], Awaitable[T]]) -> T:
    return run_with(lambda: open_apps(settings), job)


async def _check_site(settings: Settings, site_id: str) -> None:
    async with open_registry(settings) as registry:
        snapshot = await registry.load()
    try:
        check_site(snapshot, site_id, "--site")
    except MetronomeError as exc:
        raise click.UsageError(exc.message) from None


def _versions(path: str | None) -> tuple[Version, ...] | None:
    if path is None:
        return None
    try:
        return parse_versions(orjson.loads(Path(path).read_bytes()))
    except (OSError, orjson.JSONDecodeError, ValueError) as exc:
        raise click.UsageError(f"--versions {path}: {exc}") from None


def _rollups(texts: tuple[str, ...]) -> tuple[Rollup, ...]:
    try:
        return tuple(parse_rollup(t) for t in texts)
    except ValueError as exc:
        raise click.UsageError(f"--rollup {exc}") from None


def _rollups_file(path: str | None) -> tuple[Rollup, ...]:
    """A rollups file: one rollup a line (``#`` comments), or a JSON array of them."""
    if path is None:
        return ()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise click.UsageError(f"--rollups-file {path}: {exc}") from None
    if text.lstrip().startswith("["):
        lines = tuple(str(x) for x in orjson.loads(text))
    else:
        lines = tuple(line.strip() for line in text.splitlines() if line.strip() and line[0] != "#")
    return _rollups(lines)


def _json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


_OPTIONS = [
    click.option(
        "--interval",
        type=click.IntRange(1, 7 * 24 * 60),
        help="Minutes clients wait between reports (requestIntervalInMinutes) [create: 60].",
    ),
    click.option(
        "--versions",
        "versions_path",
        type=click.Path(dir_okay=False),
        help="JSON file of the versions /v1/checkupgrade answers:"
        ' {"versions": [{"name", "releaseDate", "tags"}]}.',
    ),
    click.option("--site", help="The site whose query keys read this app's telemetry."),
    click.option("--instance-tag", help="The tag that tells instances apart [instance_uuid]."),
    click.option(
        "--new-token",
        is_flag=True,
        help="Require a URL token (?token=...); prints a new one.",
    ),
    click.option("--no-token", is_flag=True, help="Take telemetry without a token."),
    click.option(
        "--disable",
        multiple=True,
        type=click.Choice(ENDPOINTS),
        help="Switch an endpoint off. Repeatable.",
    ),
    click.option(
        "--enable", multiple=True, type=click.Choice(ENDPOINTS), help="Switch one on again."
    ),
    click.option(
        "--rollup",
        "rollup_texts",
        multiple=True,
        metavar="'METRIC every 1h|1d STATS'",
        help="Roll a metric's fields up (stats: sum,avg,min,max,last). Repeatable;"
        " replaces the app's rollups.",
    ),
    click.option(
        "--rollups-file",
        type=click.Path(dir_okay=False),
        help="A file of rollups, one a line; replaces the app's rollups.",
    ),
    click.option("--raw-days", type=click.IntRange(0, 100_000), help="Keep raw points N days."),
    click.option("--rollup-days", type=click.IntRange(0, 100_000), help="Keep rollups N days."),
    click.option("--max-metrics", type=click.IntRange(1, 100_000), help="Metrics per request."),
    click.option("--max-tags", type=click.IntRange(1, 1000), help="Tags per metric."),
    click.option("--max-fields", type=click.IntRange(1, 1000), help="Fields per metric."),
    click.option(
        "--max-field-names",
        type=click.IntRange(1, 100_000),
        help="Elasticsearch: tag and field names indexed in each of the app's daily"
        " indices; later names stay in _source, unindexed.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the app as JSON."),
]


def _with_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


async def _apply(app: App, settings: Settings, options: dict[str, Any]) -> tuple[App, str | None]:
    """``app`` with the options given; the new token, if one was made."""
    changes: dict[str, Any] = {}
    if options["interval"] is not None:
        changes["interval_min"] = options["interval"]
    versions = _versions(options["versions_path"])
    if versions is not None:
        changes["versions"] = versions
    if options["site"] is not None:
        await _check_site(settings, options["site"])
        changes["site_id"] = options["site"]
    if options["instance_tag"] is not None:
        if not NAME_PATTERN.match(options["instance_tag"]):
            raise click.UsageError(f"--instance-tag {options['instance_tag']!r} is no tag name")
        changes["instance_tag"] = options["instance_tag"]
    token = None
    if options["new_token"] and options["no_token"]:
        raise click.UsageError("give --new-token or --no-token, not both")
    if options["new_token"]:
        token = changes["token"] = secrets.token_urlsafe(24)
    if options["no_token"]:
        changes["token"] = None
    disabled = (set(app.disabled) | set(options["disable"])) - set(options["enable"])
    changes["disabled"] = frozenset(disabled)
    if options["rollup_texts"] or options["rollups_file"]:
        changes["rollups"] = _rollups(options["rollup_texts"]) + _rollups_file(
            options["rollups_file"]
        )
    if options["max_field_names"] is not None:
        changes["max_field_names"] = options["max_field_names"]
    for name in ("raw_days", "rollup_days"):
        if options[name] is not None:
            changes[name] = options[name] or None
    limits = {k: options[f"max_{k}"] for k in ("metrics", "tags", "fields") if options[f"max_{k}"]}
    if limits:
        changes["limits"] = replace(app.limits, **{f"max_{k}": v for k, v in limits.items()})
    return replace(app, **changes), token


def _report(app: App, token: str | None, as_json: bool, verb: str) -> None:
    if as_json:
        _json({**app.public_dict(), "token": token} if token else app.public_dict())
        return
    click.echo(app.id)
    if token:
        click.echo(f"token: {token}")
    where = f"/apps/{app.id}/v1/metrics" + (f"?token={token}" if token else "")
    click.echo(
        f"{verb} app {app.id}: clients report every {app.interval_min} min to {where};"
        f" {len(app.versions)} versions for /v1/checkupgrade; read with a query key of"
        f" site {app.site_id!r}",
        err=True,
    )


@click.group()
def apps() -> None:
    """Apps: installed software that reports telemetry (binoculars, upgrade-responder).

    Each app has its own daily indices (or embedded-store rows), interval, versions file,
    limits, optional URL token and rollups. The default app
    (METRONOME_TELEMETRY_APP) answers /v1/... before it is created.
    """


@apps.command("create")
@click.argument("name")
@_with_options
def apps_create(name: str, as_json: bool, **options: Any) -> None:
    """Create an app; clients then report to /apps/NAME/v1/metrics."""
    if not F.APP_ID_PATTERN.match(name):
        raise click.UsageError(
            f"{name!r}: an app id is 1 to 64 lowercase letters, digits, '-' and '_',"
            " starting with a letter or digit"
        )
    settings = _settings()

    async def _create(registry: AppRegistry) -> tuple[App, str | None]:
        if name in await registry.load():
            raise click.UsageError(f"app {name!r} exists; change it with metronome apps update")
        app, token = await _apply(App(name, created_ms=now_ms()), settings, options)
        await registry.put(app)
        return app, token

    app, token = _with_apps(settings, _create)
    _report(app, token, as_json, "created")


@apps.command("update")
@click.argument("name")
@_with_options
def apps_update(name: str, as_json: bool, **options: Any) -> None:
    """Change an app's interval, versions, token, endpoints, limits or rollups."""
    settings = _settings()

    async def _update(registry: AppRegistry) -> tuple[App, str | None]:
        app = (await registry.load()).get(name)
        if app is None:
            raise click.UsageError(f"there is no app {name!r}; metronome apps create {name}")
        updated, token = await _apply(app, settings, options)
        await registry.put(updated)
        return updated, token

    app, token = _with_apps(settings, _update)
    _report(app, token, as_json, "updated")


@apps.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def apps_list(as_json: bool) -> None:
    """List the apps (tokens are shown as set or not)."""
    stored = _with_apps(_settings(), lambda r: r.load())
    if as_json:
        _json([a.public_dict() for a in stored.values()])
        return
    if not stored:
        click.echo("no apps yet: metronome apps create NAME", err=True)
        return
    for app in stored.values():
        rollups = "; ".join(r.text for r in app.rollups) or "none"
        click.echo(
            f"{app.id}\tinterval {app.interval_min} min\tsite {app.site_id}\t"
            f"versions {len(app.versions)}\ttoken {'yes' if app.token else 'no'}\t"
            f"disabled {','.join(sorted(app.disabled)) or '-'}\trollups {rollups}"
        )
