"""Where KPI definitions are kept: beside the events, so every server and the worker see
the same ones (as sites are).

- Embedded store: table ``kpis`` in the store's SQLite file (``METRONOME_DATA_DIR``).
- Elasticsearch: one small hidden index, ``<prefix>-kpis`` (one shard; each definition a
  document whose id is ``<site>:<kpi id>``); writes refresh it at once (they are rare).
"""

from __future__ import annotations

from typing import Any, Protocol, Self

import orjson

from metronome.config import Settings
from metronome.errors import UnknownKpi
from metronome.kpis.model import Kpi
from metronome.store.hidden_index import HiddenIndexRegistry
from metronome.store.sqlite import SQLiteDefinitions

__all__ = ["KpiRegistry", "SQLiteKpis", "open_kpis"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kpis (
    site_id TEXT NOT NULL,
    id TEXT NOT NULL,
    definition TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (site_id, id)
) WITHOUT ROWID;
"""


class KpiRegistry(Protocol):
    """Storage of KPI definitions (each call one small read or write)."""

    async def list(self, site_id: str | None = None) -> list[Kpi]:
        """Every KPI of ``site_id`` (of every site with None), by dashboard position."""
        ...

    async def get(self, site_id: str, kpi_id: str) -> Kpi:
        """One KPI; :class:`UnknownKpi` when the site has none with this id."""
        ...

    async def put(self, kpi: Kpi) -> None:
        """Store a definition (replacing one with the same site and id)."""

    async def delete(self, site_id: str, kpi_id: str) -> None:
        """Remove a definition; :class:`UnknownKpi` when there is none."""

    async def close(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


def _kpi(site_id: str, kpi_id: str, definition: str | dict[str, Any], created: int) -> Kpi:
    body = orjson.loads(definition) if isinstance(definition, str) else definition
    return Kpi(kpi_id, site_id, body, created)


def _ordered(kpis: list[Kpi]) -> list[Kpi]:
    return sorted(kpis, key=lambda k: (k.site_id, k.definition.get("position", 0), k.id))


def _unknown(kpi_id: str) -> UnknownKpi:
    return UnknownKpi(f"no KPI {kpi_id[:64]!r} on this site; GET /kpis lists them", kpi=kpi_id[:64])


class SQLiteKpis(SQLiteDefinitions):
    """KPI definitions in the embedded store's database file."""

    def __init__(self, data_dir: str) -> None:
        super().__init__(data_dir, "kpis", ("site_id", "id", "definition", "created"), _SCHEMA)

    async def list(self, site_id: str | None = None) -> list[Kpi]:
        return _ordered([_kpi(*row) for row in await self._rows(site_id)])

    async def get(self, site_id: str, kpi_id: str) -> Kpi:
        row = await self._row(site_id, kpi_id)
        if row is None:
            raise _unknown(kpi_id)
        return _kpi(*row)

    async def put(self, kpi: Kpi) -> None:
        definition = orjson.dumps(kpi.definition).decode()
        await self._put_row((kpi.site_id, kpi.id, definition, kpi.created_ms))

    async def delete(self, site_id: str, kpi_id: str) -> None:
        if not await self._delete_row(site_id, kpi_id):
            raise _unknown(kpi_id)


class ElasticsearchKpis(HiddenIndexRegistry):
    """KPI definitions in the hidden index ``<prefix>-kpis``, with a client of its own."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            settings,
            "kpis",
            "KPI",
            {
                "site": {"type": "keyword"},
                "id": {"type": "keyword"},
                "definition": {"type": "object", "enabled": False},
                "created": {"type": "date", "format": "epoch_millis"},
            },
        )

    async def list(self, site_id: str | None = None) -> list[Kpi]:
        from metronome.store.connection import NOT_FOUND, answering, search

        query = {"term": {"site": site_id}} if site_id is not None else {"match_all": {}}
        with answering("reading KPIs"):
            try:
                resp = await search(
                    self._client, index=self._index, body={"query": query, "size": 10_000}
                )
            except NOT_FOUND:
                return []
        return _ordered(
            [
                _kpi(
                    h["_source"]["site"],
                    h["_source"]["id"],
                    h["_source"]["definition"],
                    h["_source"]["created"],
                )
                for h in resp["hits"]["hits"]
            ]
        )

    async def get(self, site_id: str, kpi_id: str) -> Kpi:
        from metronome.store.connection import NOT_FOUND, answering

        with answering("reading a KPI"):
            try:
                resp = await self._client.get(index=self._index, id=f"{site_id}:{kpi_id}")
            except NOT_FOUND:
                raise _unknown(kpi_id) from None
        s = resp["_source"]
        return _kpi(s["site"], s["id"], s["definition"], s["created"])

    async def put(self, kpi: Kpi) -> None:
        from metronome.store.connection import answering

        await self._ensure()
        with answering("storing a KPI"):
            await self._client.index(
                index=self._index,
                id=f"{kpi.site_id}:{kpi.id}",
                body={
                    "site": kpi.site_id,
                    "id": kpi.id,
                    "definition": kpi.definition,
                    "created": kpi.created_ms,
                },
                refresh=True,
            )

    async def delete(self, site_id: str, kpi_id: str) -> None:
        from metronome.store.connection import NOT_FOUND, answering

        with answering("removing a KPI"):
            try:
                await self._client.delete(index=self._index, id=f"{site_id}:{kpi_id}", refresh=True)
            except NOT_FOUND:
                raise _unknown(kpi_id) from None


def open_kpis(settings: Settings) -> KpiRegistry:
    """The KPI registry beside the configured store (``async with`` closes it)."""
    if settings.uses_elasticsearch:
        return ElasticsearchKpis(settings)
    return SQLiteKpis(settings.data_dir)
