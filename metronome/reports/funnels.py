"""Funnels saved per site: a name, the steps and window of a ``/query`` funnel, and the
visit filters it is counted over; its report is that ad hoc funnel for a range.

A definition is checked once, when it is saved: its funnel goes through the same
:func:`~metronome.reports.query.parse_query` as ``POST /query`` (so every step ``/query``
takes, on pages, events or parameter values, may be saved). Where definitions are kept,
beside the events so every server sees the same ones (as KPIs are):

- Embedded store: table ``funnels`` in the store's SQLite file (``METRONOME_DATA_DIR``).
- Elasticsearch: one small hidden index, ``<prefix>-funnels`` (one shard; each definition a
  document whose id is ``<site>:<funnel id>``); writes refresh it at once (they are rare).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance

from metronome.config import Settings
from metronome.errors import InvalidFunnel, InvalidQuery, UnknownFunnel
from metronome.reports.named import COMMON_PARAMETERS, NamedReport, Plan, report_query
from metronome.reports.query import MAX_FUNNEL_STEPS, QUERY_SCHEMA, parse_query
from metronome.store.hidden_index import HiddenIndexRegistry
from metronome.store.sqlite import SQLiteDefinitions

__all__ = [
    "FUNNEL_ID",
    "FUNNEL_SCHEMA",
    "MAX_FUNNELS",
    "Funnel",
    "FunnelRegistry",
    "funnel_report",
    "open_funnels",
    "parse_funnel",
    "unknown_funnel",
]

FUNNEL_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_FUNNELS = 500  # per site
_FUNNEL = QUERY_SCHEMA["properties"]["funnel"]["properties"]
FUNNEL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Funnel",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "id": {"type": "string", "pattern": FUNNEL_ID, "description": "default: generated"},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "steps": {
            "type": "array",
            "minItems": 2,
            "maxItems": MAX_FUNNEL_STEPS,
            "items": {"type": "object"},
            "description": "as in POST /query's funnel: each a page, an event or filters on"
            " events, eventually or next",
        },
        "within": {**_FUNNEL["within"]},
        "filters": {
            "type": "array",
            "default": [],
            "items": {"type": "array"},
            "description": "which visits count, as /query filters on the visits source",
        },
    },
}
_VALIDATOR = Draft202012Validator(FUNNEL_SCHEMA)
_REPORT_PARAMETERS = {name: COMMON_PARAMETERS[name] for name in ("range", "from", "to", "tz")}


@dataclass(frozen=True, slots=True)
class Funnel:
    """One saved funnel (``definition``: name, steps, within, filters; normalized)."""

    id: str
    site_id: str
    definition: dict[str, Any] = field(hash=False)
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site_id,
            **self.definition,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
        }


def _query_body(definition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "source": "visits",
        "filters": definition["filters"],
        "funnel": {"steps": definition["steps"], "within": definition["within"]},
    }


def parse_funnel(
    body: Any,
    site_id: str,
    *,
    typed: Mapping[str, str] | None = None,
    funnel_id: str | None = None,
    now_ms: int | None = None,
) -> Funnel:
    """Validate a funnel definition; raises :class:`InvalidFunnel` naming the part.
    ``funnel_id``: the id from the URL (``PUT``), which a body's ``id`` must not contradict."""
    errors = list(_VALIDATOR.iter_errors(body))
    if errors:
        error = max(errors, key=relevance)
        where = "funnel" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        raise InvalidFunnel(f"{where}: {error.message[:300]}", field=where)
    if funnel_id is not None and body.get("id", funnel_id) != funnel_id:
        raise InvalidFunnel(
            f"funnel.id: {body['id']!r} is not {funnel_id!r}, the funnel this URL names",
            field="funnel.id",
        )
    try:
        query = parse_query(
            _query_body({"within": "visit", "filters": [], **body}), now_ms, typed=typed
        )
    except InvalidQuery as exc:
        where = re.sub(r"^query(\.funnel)?", "funnel", str(exc.details.get("field", "query")))
        message = re.sub(r"^query(\.funnel)?", "funnel", exc.message)
        raise InvalidFunnel(message, field=where) from None
    definition = {
        "name": body["name"],
        "steps": query.normalized["funnel"]["steps"],
        "within": query.normalized["funnel"]["within"],
        "filters": query.normalized["filters"],
    }
    now = int(time.time() * 1000) if now_ms is None else now_ms
    chosen = funnel_id or body.get("id") or "funnel-" + secrets.token_hex(4)
    return Funnel(chosen, site_id, definition, now, now)


def funnel_report(funnel: Funnel) -> NamedReport:
    """The report of a saved funnel: its ad hoc ``/query`` funnel for the URL's range and
    time zone (``range``, ``from``, ``to``, ``tz``), with the funnel's id and name."""

    def plan(params: Mapping[str, str]) -> Plan:
        shell = NamedReport("funnel", "", lambda p: {}, _REPORT_PARAMETERS, common=False)
        body = {**report_query(shell, params), **_query_body(funnel.definition)}
        saved = {"id": funnel.id, "name": funnel.name}
        return Plan({"": body}, lambda answers: {"report": "funnel", "saved": saved, **answers[""]})

    return NamedReport(
        "funnel", "A saved funnel", None, _REPORT_PARAMETERS, plan=plan, common=False
    )


# --- where they are kept ------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS funnels (
    site_id TEXT NOT NULL,
    id TEXT NOT NULL,
    definition TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (site_id, id)
) WITHOUT ROWID;
"""


class FunnelRegistry(Protocol):
    """Storage of saved funnels (each call one small read or write)."""

    async def list(self, site_id: str) -> list[Funnel]:
        """Every funnel of ``site_id``, by name."""
        ...

    async def get(self, site_id: str, funnel_id: str) -> Funnel:
        """One funnel; :class:`UnknownFunnel` when the site has none with this id."""
        ...

    async def put(self, funnel: Funnel) -> None:
        """Store a definition (replacing one with the same site and id)."""

    async def delete(self, site_id: str, funnel_id: str) -> None:
        """Remove a definition; :class:`UnknownFunnel` when there is none."""

    async def close(self) -> None:
        """Release connections."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


def _funnel(
    site_id: str, funnel_id: str, definition: str | dict[str, Any], created: int, updated: int
) -> Funnel:
    body = orjson.loads(definition) if isinstance(definition, str) else definition
    return Funnel(funnel_id, site_id, body, created, updated)


def _ordered(funnels: list[Funnel]) -> list[Funnel]:
    return sorted(funnels, key=lambda f: (f.site_id, f.name, f.id))


def unknown_funnel(funnel_id: str) -> UnknownFunnel:
    return UnknownFunnel(
        f"no funnel {funnel_id[:64]!r} on this site; GET /funnels lists them",
        funnel=funnel_id[:64],
    )


class SQLiteFunnels(SQLiteDefinitions):
    """Saved funnels in the embedded store's database file."""

    def __init__(self, data_dir: str) -> None:
        columns = ("site_id", "id", "definition", "created", "updated")
        super().__init__(data_dir, "funnels", columns, _SCHEMA)

    async def list(self, site_id: str) -> list[Funnel]:
        return _ordered([_funnel(*row) for row in await self._rows(site_id)])

    async def get(self, site_id: str, funnel_id: str) -> Funnel:
        row = await self._row(site_id, funnel_id)
        if row is None:
            raise unknown_funnel(funnel_id)
        return _funnel(*row)

    async def put(self, funnel: Funnel) -> None:
        definition = orjson.dumps(funnel.definition).decode()
        await self._put_row(
            (funnel.site_id, funnel.id, definition, funnel.created_ms, funnel.updated_ms)
        )

    async def delete(self, site_id: str, funnel_id: str) -> None:
        if not await self._delete_row(site_id, funnel_id):
            raise unknown_funnel(funnel_id)


class ElasticsearchFunnels(HiddenIndexRegistry):
    """Saved funnels in the hidden index ``<prefix>-funnels``, with a client of its own."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            settings,
            "funnels",
            "funnel",
            {
                "site": {"type": "keyword"},
                "id": {"type": "keyword"},
                "definition": {"type": "object", "enabled": False},
                "created": {"type": "date", "format": "epoch_millis"},
                "updated": {"type": "date", "format": "epoch_millis"},
            },
        )

    @staticmethod
    def _of(source: dict[str, Any]) -> Funnel:
        return _funnel(
            source["site"], source["id"], source["definition"], source["created"], source["updated"]
        )

    async def list(self, site_id: str) -> list[Funnel]:
        from metronome.store.connection import NOT_FOUND, answering, search

        with answering("reading funnels"):
            try:
                resp = await search(
                    self._client,
                    index=self._index,
                    body={"query": {"term": {"site": site_id}}, "size": MAX_FUNNELS},
                )
            except NOT_FOUND:
                return []
        return _ordered([self._of(h["_source"]) for h in resp["hits"]["hits"]])

    async def get(self, site_id: str, funnel_id: str) -> Funnel:
        from metronome.store.connection import NOT_FOUND, answering

        with answering("reading a funnel"):
            try:
                resp = await self._client.get(index=self._index, id=f"{site_id}:{funnel_id}")
            except NOT_FOUND:
                raise unknown_funnel(funnel_id) from None
        return self._of(resp["_source"])

    async def put(self, funnel: Funnel) -> None:
        from metronome.store.connection import answering

        await self._ensure()
        with answering("storing a funnel"):
            await self._client.index(
                index=self._index,
                id=f"{funnel.site_id}:{funnel.id}",
                body={
                    "site": funnel.site_id,
                    "id": funnel.id,
                    "definition": funnel.definition,
                    "created": funnel.created_ms,
                    "updated": funnel.updated_ms,
                },
                refresh=True,
            )

    async def delete(self, site_id: str, funnel_id: str) -> None:
        from metronome.store.connection import NOT_FOUND, answering

        with answering("removing a funnel"):
            try:
                await self._client.delete(
                    index=self._index, id=f"{site_id}:{funnel_id}", refresh=True
                )
            except NOT_FOUND:
                raise unknown_funnel(funnel_id) from None


def open_funnels(settings: Settings) -> FunnelRegistry:
    """The funnel registry beside the configured store (``async with`` closes it)."""
    if settings.uses_elasticsearch:
        return ElasticsearchFunnels(settings)
    return SQLiteFunnels(settings.data_dir)
