"""``metronome sites ...`` and ``metronome keys ...``: manage sites and keys.

They write straight to the registry beside the configured store (the SQLite file in
``METRONOME_DATA_DIR``, or ``<prefix>-sites`` in Elasticsearch), so they work from any
host with the same settings; running servers pick changes up within
``METRONOME_SITES_CACHE_S``.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import orjson

from metronome.cli_support import load_settings as _settings
from metronome.cli_support import run_with
from metronome.config import Settings
from metronome.sites.model import SCOPES, Key, Site, Snapshot, new_key, new_site_id, now_ms
from metronome.sites.registry import (
    DuplicateSite,
    Registry,
    check_site,
    create_site,
    open_registry,
)

__all__ = ["keys", "require_sites", "sites"]

T = TypeVar("T")


def _with_registry(settings: Settings, job: Callable[[Registry], Awaitable[T]]) -> T:
    return run_with(lambda: open_registry(settings), job)


def require_sites(settings: Settings, named: dict[str, str]) -> None:
    """Exit with one line naming the site and where it was named (``{"--site": "shop"}``)
    unless every named site exists (or is ``default`` while no site exists)."""
    if not named:
        return

    async def _check(registry: Registry) -> None:
        snapshot = await registry.load()
        for named_by, site_id in named.items():
            check_site(snapshot, site_id, named_by)

    _with_registry(settings, _check)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _json(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=column != "origins")
    for row in rows:
        table.add_row(*row)
    # a pipe or file gets the whole table, not one folded to 80 columns
    Console(width=None if sys.stdout.isatty() else 400).print(table)


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _site_rows(snapshot: Snapshot) -> list[list[str]]:
    active: dict[str | None, int] = {}
    for key in snapshot.keys:
        if key.active:
            active[key.site_id] = active.get(key.site_id, 0) + 1
    return [
        [
            s.id,
            s.name,
            "\n".join(s.origins) or "-",
            _yes_no(s.public_tock),
            _yes_no(s.store_ip),
            str(active.get(s.id, 0)),
            _when(s.created_ms),
        ]
        for s in snapshot.sites.values()
    ]


def _make_site(**fields: Any) -> Site:
    try:
        return Site(**fields)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


# -- sites ------------------------------------------------------------------------------


@click.group()
def sites() -> None:
    """Sites: the web sites and apps whose events are kept apart.

    Once one site exists, ingestion and reports need a key or an allowed browser
    origin; with none, everything is open and stored as site `default`. The first
    `sites create` also creates site `default`, which keeps what was collected before.
    """


@sites.command("create")
@click.option("--name", required=True, help="A name for people.")
@click.option(
    "--origin",
    "origins",
    multiple=True,
    metavar="ORIGIN",
    help="A page origin allowed to send ticks: https://example.org,"
    " https://*.example.org (subdomains) or * (any). Repeatable.",
)
@click.option("--public-tock", is_flag=True, help="Anyone may read this site's item reports.")
@click.option("--store-ip", is_flag=True, help="The site opts in to storing client addresses.")
@click.option(
    "--id",
    "site_id",
    help="The public site id [default: 10 random characters]. Site `default` (the events"
    " stored before sites existed) is created with the first site.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the site as JSON.")
def sites_create(
    name: str,
    origins: tuple[str, ...],
    public_tock: bool,
    store_ip: bool,
    site_id: str | None,
    as_json: bool,
) -> None:
    """Create a site; prints its public id."""
    site = _make_site(
        id=site_id or new_site_id(),
        name=name,
        origins=origins,
        public_tock=public_tock,
        store_ip=store_ip,
        created_ms=now_ms(),
    )
    settings = _settings()
    try:
        created = _with_registry(settings, lambda r: create_site(r, site))
    except DuplicateSite as exc:
        raise click.UsageError(str(exc)) from None
    for adopted in created[:-1]:
        click.echo(
            f"created site {adopted.id} ({adopted.name}): the events collected before sites"
            f" existed are its events and stay in reports for its keys (metronome keys"
            f" create --site {adopted.id} ...) and all-sites admin keys (?site={adopted.id})",
            err=True,
        )
    if as_json:
        _json(site.to_dict())
        return
    click.echo(site.id)
    click.echo(
        f"created site {site.id} ({site.name}); pages at"
        f" {', '.join(site.origins) or 'no origin yet'} may send ticks with"
        f" ?site={site.id}. Servers need a key: metronome keys create --site"
        f" {site.id} --scope ingest",
        err=True,
    )


@sites.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sites_list(as_json: bool) -> None:
    """List the sites."""
    snapshot = _with_registry(_settings(), lambda r: r.load())
    if as_json:
        _json([s.to_dict() for s in snapshot.sites.values()])
        return
    if not snapshot.sites:
        click.echo(
            "no sites: Metronome is open to anyone who can reach it (single-user"
            " mode); create one with metronome sites create",
            err=True,
        )
        return
    _table(
        "sites",
        ["id", "name", "origins", "public tock", "store ip", "active keys", "created"],
        _site_rows(snapshot),
    )


@sites.command("update")
@click.argument("site_id")
@click.option("--name", help="A new name.")
@click.option(
    "--origin",
    "origins",
    multiple=True,
    metavar="ORIGIN",
    help="Replace the allowed origins with these. Repeatable.",
)
@click.option("--add-origin", multiple=True, metavar="ORIGIN", help="Allow one more origin.")
@click.option("--remove-origin", multiple=True, metavar="ORIGIN", help="Stop allowing one.")
@click.option(
    "--public-tock/--no-public-tock", default=None, help="Make item reports public, or not."
)
@click.option("--store-ip/--no-store-ip", default=None, help="Store client addresses, or not.")
def sites_update(
    site_id: str,
    name: str | None,
    origins: tuple[str, ...],
    add_origin: tuple[str, ...],
    remove_origin: tuple[str, ...],
    public_tock: bool | None,
    store_ip: bool | None,
) -> None:
    """Change a site's name, origins or flags."""
    settings = _settings()

    async def _update(registry: Registry) -> Site:
        site = (await registry.load()).sites.get(site_id)
        if site is None:
            raise click.UsageError(f"there is no site {site_id!r}")
        listed = list(origins) if origins else list(site.origins)
        listed += add_origin
        removed = {_make_site(id=site.id, name="", origins=(o,)).origins[0] for o in remove_origin}
        updated = _make_site(
            id=site.id,
            name=name if name is not None else site.name,
            origins=tuple(
                o
                for o in _make_site(id=site.id, name="", origins=tuple(listed)).origins
                if o not in removed
            ),
            public_tock=site.public_tock if public_tock is None else public_tock,
            store_ip=site.store_ip if store_ip is None else store_ip,
            created_ms=site.created_ms,
        )
        await registry.update_site(updated)
        return updated

    site = _with_registry(settings, _update)
    click.echo(
        f"updated site {site.id}: origins {', '.join(site.origins) or 'none'},"
        f" public tock {_yes_no(site.public_tock)}, store ip {_yes_no(site.store_ip)};"
        f" servers apply it within {settings.sites_cache_s} s",
        err=True,
    )


# -- keys -------------------------------------------------------------------------------


@sites.command("reset")
@click.option(
    "--confirm", is_flag=True, help="Yes: delete every site and key, and open the server."
)
def sites_reset(confirm: bool) -> None:
    """Delete every site and key: back to single-user mode, where nothing needs a key.

    Once sites exist, a server whose sites cannot be read (a deleted index, a broken
    table) refuses requests rather than opening up; this is the one way to open it again.
    """
    if not confirm:
        raise click.UsageError(
            "this deletes every site and key, and then anyone who can reach the server may"
            " send ticks and read every report; add --confirm to do it"
        )
    _with_registry(_settings(), lambda r: r.reset())
    click.echo(
        "deleted every site and key: Metronome is open to anyone who can reach it"
        " (single-user mode) once running servers reload (METRONOME_SITES_CACHE_S)",
        err=True,
    )


@click.group()
def keys() -> None:
    """Keys: secrets for servers and scripts (ingest, query, admin)."""


@keys.command("create")
@click.option("--site", "site_id", help="The site the key is for.")
@click.option("--all-sites", is_flag=True, help="An admin key for every site.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(SCOPES),
    help="ingest, query or admin. Repeatable.",
)
@click.option("--name", default="", help="A note to tell keys apart.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the secret).")
def keys_create(
    site_id: str | None, all_sites: bool, scopes: tuple[str, ...], name: str, as_json: bool
) -> None:
    """Create a key; prints its secret once (only a hash is stored)."""
    if all_sites == (site_id is not None):
        raise click.UsageError("give either --site SITE or --all-sites (admin keys only)")
    try:
        made = new_key(site_id, scopes, name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings()

    async def _create(registry: Registry) -> None:
        if site_id is not None and site_id not in (await registry.load()).sites:
            raise click.UsageError(f"there is no site {site_id!r}; metronome sites list shows them")
        await registry.add_key(made.key)

    _with_registry(settings, _create)
    if as_json:
        _json({**made.key.to_dict(with_hash=False), "secret": made.secret})
        return
    click.echo(made.secret)
    click.echo(
        f"created key {made.key.id} for {'every site' if site_id is None else site_id}"
        f" with scopes {', '.join(sorted(made.key.scopes))}. This is the only time the"
        " secret is shown; send it as 'Authorization: Bearer <secret>'.",
        err=True,
    )


def _key_rows(key_list: list[Key]) -> list[list[str]]:
    return [
        [
            k.id,
            k.prefix + "…",
            k.site_id or "(all)",
            ", ".join(sorted(k.scopes)),
            k.name or "-",
            _when(k.created_ms),
            _when(k.last_used_ms),
            _when(k.revoked_ms),
        ]
        for k in key_list
    ]


@keys.command("list")
@click.option("--site", "site_id", help="Only this site's keys (and all-sites keys).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_list(site_id: str | None, as_json: bool) -> None:
    """List keys (never their secrets): id, prefix, site, scopes, use, revocation."""
    snapshot = _with_registry(_settings(), lambda r: r.load())
    listed = [k for k in snapshot.keys if site_id is None or k.site_id in (site_id, None)]
    if as_json:
        _json([k.to_dict(with_hash=False) for k in listed])
        return
    if not listed:
        click.echo("no keys", err=True)
        return
    _table(
        "keys",
        ["id", "prefix", "site", "scopes", "name", "created", "last used", "revoked"],
        _key_rows(listed),
    )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key for good; servers refuse it within METRONOME_SITES_CACHE_S."""
    settings = _settings()
    key = _with_registry(settings, lambda r: r.revoke_key(key_id, now_ms()))
    if key is None:
        click.echo(f"error: there is no key {key_id!r}; metronome keys list shows them", err=True)
        sys.exit(1)
    click.echo(
        f"revoked key {key.id} ({key.site_id or 'every site'}) at"
        f" {_when(key.revoked_ms)}; servers refuse it within"
        f" {settings.sites_cache_s} s",
        err=True,
    )
