"""Where sites and keys are kept: beside the events, so every server sees the same ones.

- Embedded store: tables ``sites`` and ``keys`` in the same SQLite file as the events
  (``METRONOME_DATA_DIR/metronome.sqlite3``), shared by every process on the machine; the
  file ``METRONOME_DATA_DIR/sites-created`` marks that sites exist.
- Elasticsearch: one small hidden index, ``<prefix>-sites`` (explicit strict mapping,
  one shard), shared by every host (:mod:`metronome.sites.elasticsearch`). Hidden, so
  Kibana data views and ``<prefix>-*`` searches never show it.

Either way the mark that sites exist is kept apart from them, written before the first
site and removed only by ``metronome sites reset --confirm``: while it is there, a registry
whose sites are missing or unreadable refuses requests (``503 store_unavailable``) rather
than answering "no sites", the single-user mode where nothing needs a key.

Either way there is one copy, so a key created or revoked with the CLI on any host is
seen by every server process within ``METRONOME_SITES_CACHE_S``
(:mod:`metronome.sites.cache`).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import orjson

from metronome.config import Settings
from metronome.errors import StoreUnavailable, UnknownSite
from metronome.events.fields import DEFAULT_SITE
from metronome.sites.base import DuplicateSite, Registry, sites_gone
from metronome.sites.model import Key, Site, Snapshot
from metronome.store.sqlite import DB_NAME, ConnectionThread, connect, setup_lock

__all__ = [
    "DEFAULT_SITE_NAME",
    "MARK_FILE",
    "DuplicateSite",
    "Registry",
    "SQLiteRegistry",
    "check_site",
    "create_site",
    "open_registry",
]

log = logging.getLogger("metronome.sites")

MARK_FILE = "sites-created"
"""In the data directory: sites exist (kept apart from the database, so a lost or broken
``sites`` table cannot open the server)."""

DEFAULT_SITE_NAME = "events from before sites"
"""The name the ``default`` site gets when it is created for the events stored before sites."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    origins TEXT NOT NULL,
    public_tock INTEGER NOT NULL DEFAULT 0,
    store_ip INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    site_id TEXT,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    last_used INTEGER,
    revoked INTEGER
);
"""


class SQLiteRegistry(ConnectionThread):
    """Sites and keys in the embedded store's database file."""

    def __init__(self, data_dir: str) -> None:
        super().__init__(Path(data_dir) / DB_NAME, "registry")
        self._mark = Path(data_dir) / MARK_FILE

    def _mark_sites(self) -> None:
        if not self._mark.exists():
            self._mark.parent.mkdir(parents=True, exist_ok=True)
            self._mark.write_text(
                "Sites exist: while this file is here, missing sites are an error, not the"
                " single-user mode. `metronome sites reset --confirm` removes it.\n"
            )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self._path)
            with setup_lock(self._path):
                conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def load(self) -> Snapshot:
        def _load() -> Snapshot:
            try:
                snapshot = _read()
            except sqlite3.DatabaseError as exc:
                if self._mark.exists():
                    raise sites_gone(f"the sites table cannot be read ({exc})") from None
                raise StoreUnavailable(f"the sites table cannot be read ({exc})") from None
            marked = self._mark.exists()
            if snapshot.open and marked:
                raise sites_gone(f"the sites table in {self._path} is empty")
            if not snapshot.open and not marked:  # sites made before marks existed
                try:
                    self._mark_sites()
                except OSError as exc:
                    log.warning("sites_mark_not_written path=%s reason=%s", self._mark, exc)
            return snapshot

        def _read() -> Snapshot:
            db = self._db()
            sites = [
                Site(
                    row[0], row[1], tuple(orjson.loads(row[2])), bool(row[3]), bool(row[4]), row[5]
                )
                for row in db.execute(
                    "SELECT id, name, origins, public_tock, store_ip,"
                    " created FROM sites ORDER BY created, id"
                )
            ]
            keys = tuple(
                Key(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    frozenset(orjson.loads(row[4])),
                    row[5],
                    row[6],
                    row[7],
                    row[8],
                )
                for row in db.execute(
                    "SELECT id, hash, prefix, site_id, scopes, name,"
                    " created, last_used, revoked FROM keys"
                    " ORDER BY created, id"
                )
            )
            return Snapshot({s.id: s for s in sites}, keys)

        result: Snapshot = await self._run(_load)
        return result

    async def add_site(self, site: Site) -> None:
        def _add() -> None:
            self._mark_sites()  # first: a site is never there without the mark
            try:
                self._db().execute(
                    "INSERT INTO sites (id, name, origins, public_tock, store_ip, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        site.id,
                        site.name,
                        orjson.dumps(list(site.origins)).decode(),
                        int(site.public_tock),
                        int(site.store_ip),
                        site.created_ms,
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicateSite(f"a site with id {site.id!r} exists already") from None

        await self._run(_add)

    async def update_site(self, site: Site) -> None:
        await self._run(
            lambda: self._db().execute(
                "UPDATE sites SET name = ?, origins = ?, public_tock = ?, store_ip = ?"
                " WHERE id = ?",
                (
                    site.name,
                    orjson.dumps(list(site.origins)).decode(),
                    int(site.public_tock),
                    int(site.store_ip),
                    site.id,
                ),
            )
        )

    async def add_key(self, key: Key) -> None:
        await self._run(
            lambda: self._db().execute(
                "INSERT INTO keys (id, hash, prefix, site_id, scopes, name, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.hash,
                    key.prefix,
                    key.site_id,
                    orjson.dumps(sorted(key.scopes)).decode(),
                    key.name,
                    key.created_ms,
                ),
            )
        )

    async def revoke_key(self, key_id: str, when_ms: int) -> Key | None:
        def _revoke() -> None:
            self._db().execute(
                "UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (when_ms, key_id)
            )

        await self._run(_revoke)
        for key in (await self.load()).keys:
            if key.id == key_id:
                return key
        return None

    async def touch_keys(self, last_used: dict[str, int]) -> None:
        if not last_used:
            return
        await self._run(
            lambda: self._db().executemany(
                "UPDATE keys SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?",
                [(ms, key_id) for key_id, ms in last_used.items()],
            )
        )

    async def reset(self) -> None:
        def _reset() -> None:
            db = self._db()
            db.executescript(_SCHEMA)  # a dropped table comes back, empty
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM keys")
                db.execute("DELETE FROM sites")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._mark.unlink(missing_ok=True)

        await self._run(_reset)
        log.warning("sites_reset path=%s (no sites: nothing needs a key now)", self._path)


def open_registry(settings: Settings) -> Registry:
    """The registry beside the configured store: ``<prefix>-sites`` in Elasticsearch (with
    its own client), else the tables in the embedded store's file. Use it as ``async with
    open_registry(settings) as registry:``."""
    if settings.uses_elasticsearch:
        # imported here, like the stores in open_store: the embedded store never loads
        # the Elasticsearch client
        from metronome.sites.elasticsearch import ElasticsearchRegistry

        return ElasticsearchRegistry(settings)
    return SQLiteRegistry(settings.data_dir)


async def create_site(registry: Registry, site: Site) -> tuple[Site, ...]:
    """Store ``site`` (DuplicateSite if its id is taken); the sites created, in order.

    Events stored while no site existed belong to site ``default``; once one site exists
    only sites are readable, so ``default`` is created first whenever it is missing (the
    first ``metronome sites create`` adopts everything collected so far).
    """
    created: list[Site] = []
    if site.id != DEFAULT_SITE and DEFAULT_SITE not in (await registry.load()).sites:
        adopted = Site(DEFAULT_SITE, DEFAULT_SITE_NAME, created_ms=site.created_ms)
        try:
            await registry.add_site(adopted)
            created.append(adopted)
        except DuplicateSite:  # another `sites create` made it a moment ago
            pass
    await registry.add_site(site)
    return (*created, site)


def check_site(snapshot: Snapshot, site_id: str, named_by: str) -> None:
    """Raise UnknownSite unless events may be stored as (or read from) ``site_id``: a
    site that exists, or ``default`` while no site exists. ``named_by`` says where the
    name came from (``--site``, ``METRONOME_LOG_SITE``) for the message."""
    if site_id in snapshot.sites or (snapshot.open and site_id == DEFAULT_SITE):
        return
    shown = site_id[:64]
    if snapshot.open:
        message = (
            f"there is no site {shown!r} (named by {named_by}): no sites exist, so every"
            f" event belongs to site {DEFAULT_SITE!r}; create the site first with"
            f" `metronome sites create --id {shown} --name ...`"
        )
    else:
        known = ", ".join(list(snapshot.sites)[:10])
        message = (
            f"there is no site {shown!r} (named by {named_by}); the sites are {known}"
            " (`metronome sites list` shows them)"
        )
    raise UnknownSite(message, site=shown)
