"""Where apps are kept: beside the sites, so every server sees the same ones.

- Embedded store: table ``apps`` (id, the app as JSON) in the same SQLite file as the
  events and sites (``METRONOME_DATA_DIR/metronome.sqlite3``).
- Elasticsearch: one small hidden index, ``<prefix>-apps`` (one shard, the app as an
  unindexed object), shared by every host.

Apps may also be declared in the configuration file (``[[apps]]`` tables with the keys of
:meth:`~metronome.telemetry.model.App.to_dict`); one stored with the CLI wins over one of
the same id in the file. Servers read them through :class:`AppCache` (at most
``METRONOME_SITES_CACHE_S`` old).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol, Self

import orjson

from metronome.config import Settings
from metronome.errors import ConfigError, StoreUnavailable
from metronome.events import fields as F
from metronome.store.hidden_index import HiddenIndexRegistry
from metronome.store.sqlite import DB_NAME, ConnectionThread, connect, setup_lock
from metronome.store.templates import app_template
from metronome.telemetry.model import App

__all__ = [
    "AppCache",
    "AppRegistry",
    "ElasticsearchApps",
    "SQLiteApps",
    "apps_from_settings",
    "apps_index",
    "open_apps",
]

_SCHEMA = "CREATE TABLE IF NOT EXISTS apps (id TEXT PRIMARY KEY, doc TEXT NOT NULL)"


class AppRegistry(Protocol):
    """Storage of apps: each call is one small read or write."""

    async def load(self) -> dict[str, App]:
        """Every stored app by id."""
        ...

    async def put(self, app: App) -> None:
        """Store ``app`` (a new one, or a new version of one)."""

    async def close(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> Self:
        """The registry (it connects on first use)."""
        ...

    async def __aexit__(self, *exc_info: object) -> None:
        """:meth:`close`."""


class SQLiteApps(ConnectionThread):
    """Apps in the embedded store's database file."""

    def __init__(self, data_dir: str) -> None:
        super().__init__(Path(data_dir) / DB_NAME, "apps")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(self._path)
            with setup_lock(self._path):
                conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    async def load(self) -> dict[str, App]:
        def _load() -> dict[str, App]:
            rows = self._db().execute("SELECT doc FROM apps ORDER BY id").fetchall()
            apps = [App.from_dict(orjson.loads(row[0])) for row in rows]
            return {a.id: a for a in apps}

        result: dict[str, App] = await self._run(_load)
        return result

    async def put(self, app: App) -> None:
        doc = orjson.dumps(app.to_dict()).decode()

        def _put() -> None:
            self._db().execute(
                "INSERT INTO apps (id, doc) VALUES (?, ?)"
                " ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (app.id, doc),
            )

        await self._run(_put)


def apps_index(prefix: str) -> str:
    return f"{prefix}-apps"


_PROPERTIES: dict[str, Any] = {
    "id": {"type": "keyword"},
    "app": {"type": "object", "enabled": False},
}


class ElasticsearchApps(HiddenIndexRegistry):
    """Apps in ``<prefix>-apps``, with a client of its own."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "apps", "apps", _PROPERTIES)
        self._settings = settings

    async def load(self) -> dict[str, App]:
        # here, not at the top: every CLI command imports this module, and the clients
        # take a second to import (a second of `metronome import` on the embedded store)
        from metronome.store.connection import NOT_FOUND, answering, search

        with answering("reading apps"):
            try:
                resp = await search(
                    self._client,
                    index=self._index,
                    body={"size": 10_000, "query": {"match_all": {}}, "sort": [{"id": "asc"}]},
                )
            except NOT_FOUND:
                return {}
        apps = [App.from_dict(hit["_source"]["app"]) for hit in resp["hits"]["hits"]]
        return {a.id: a for a in apps}

    async def put(self, app: App) -> None:
        from metronome.store.connection import answering

        await self._ensure()
        with answering("storing the app"):
            await self._client.index(
                index=self._index,
                id=app.id,
                body={"id": app.id, "app": app.to_dict()},
                refresh=True,
            )
            if app.max_field_names:  # the app's own template (new daily indices follow it)
                template = app_template(
                    self._settings, F.POINT_DATASET, app.id, app.max_field_names
                )
                await self._client.indices.put_index_template(
                    name=template.name, body=template.body
                )


def open_apps(settings: Settings) -> AppRegistry:
    """The apps registry beside the configured store."""
    if settings.uses_elasticsearch:
        return ElasticsearchApps(settings)
    return SQLiteApps(settings.data_dir)


def apps_from_settings(settings: Settings) -> dict[str, App]:
    """The ``[[apps]]`` tables of the configuration file, as apps."""
    apps: dict[str, App] = {}
    for index, raw in enumerate(settings.apps):
        try:
            app = App.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"[[apps]] number {index + 1}: {exc}") from None
        if not F.APP_ID_PATTERN.match(app.id):
            raise ConfigError(f"[[apps]] number {index + 1}: {app.id!r} is not an app id")
        apps[app.id] = app
    return apps


class AppCache:
    """Each process's copy of the apps, read again once it is ``ttl_s`` old."""

    def __init__(self, registry: AppRegistry, settings: Settings) -> None:
        self.registry = registry
        self._ttl_s = float(settings.sites_cache_s)
        self._declared = apps_from_settings(settings)
        self._apps: dict[str, App] | None = None
        self._loaded = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, App]:
        now = time.monotonic()
        if self._apps is not None and now - self._loaded < self._ttl_s:
            return self._apps
        async with self._lock:
            if self._apps is None or time.monotonic() - self._loaded >= self._ttl_s:
                try:
                    stored = await self.registry.load()
                except StoreUnavailable:
                    if self._apps is None:
                        raise
                    self._loaded = time.monotonic()  # keep the last copy while the store is out
                    return self._apps
                self._apps = {**self._declared, **stored}
                self._loaded = time.monotonic()
        return self._apps

    async def close(self) -> None:
        await self.registry.close()
