"""Sites and keys in Elasticsearch: one hidden index, ``<prefix>-sites``.

Documents ``site:<id>`` and ``key:<id>`` (field ``kind`` tells them apart) under an
explicit, strict mapping. The index is created on the first write (``metronome sites
create``); until it exists there are no sites.

Before the first site is stored, one document goes into a second hidden index,
``<prefix>-sites-created``: sites exist. It is kept apart from the sites so that losing
``<prefix>-sites`` (deleted by hand, a bad restore) is an error every API host sees, not
"no sites" (the single-user mode, with no keys): while the mark is there and the sites
are not, :meth:`ElasticsearchRegistry.load` raises StoreUnavailable. Only ``metronome
sites reset --confirm`` removes it. Writes refresh the index at once (they are
rare), so the next read anywhere sees them. It is ``index.hidden``: wildcard searches
(``<prefix>-*``, Kibana data views) skip it.
"""

from __future__ import annotations

import logging
from typing import Any, Self

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.sites.base import DuplicateSite, sites_gone
from metronome.sites.model import Key, Site, Snapshot
from metronome.store.connection import CONFLICT, NOT_FOUND, answering, open_client, search
from metronome.store.hidden_index import create_hidden_index

__all__ = ["PROPERTIES", "ElasticsearchRegistry", "mark_index", "registry_index"]

log = logging.getLogger("metronome.sites")

_MS = {"type": "date", "format": "epoch_millis"}
PROPERTIES: dict[str, Any] = {
    "kind": {"type": "keyword"},
    "id": {"type": "keyword"},
    "name": {"type": "keyword", "ignore_above": 1024},
    "origins": {"type": "keyword", "ignore_above": 2048},
    "public_tock": {"type": "boolean"},
    "store_ip": {"type": "boolean"},
    "created": _MS,
    "hash": {"type": "keyword"},
    "prefix": {"type": "keyword"},
    "site": {"type": "keyword"},
    "scopes": {"type": "keyword"},
    "last_used": _MS,
    "revoked": _MS,
}


def registry_index(prefix: str) -> str:
    return f"{prefix}-sites"


def mark_index(prefix: str) -> str:
    """Where the mark that sites exist is kept (apart from them)."""
    return f"{prefix}-sites-created"


_MARK_ID = "sites-created"


class ElasticsearchRegistry:
    """The registry in ``<prefix>-sites``, with a client of its own: it reads every few
    seconds at most, and the store's connections stay the store's."""

    def __init__(self, settings: Settings) -> None:
        self._index = registry_index(settings.index_prefix)
        self._mark = mark_index(settings.index_prefix)
        self._marked = False
        # the body-style calls below are the ones both clients (Elasticsearch, OpenSearch) take
        self._client: Any = open_client(settings)
        self._ready = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _create_index(self, index: str) -> None:
        await create_hidden_index(self._client, index, PROPERTIES)

    async def _ensure(self) -> None:
        if self._ready:
            return
        with answering("creating the sites index"):
            await self._create_index(self._index)
        self._ready = True

    async def _mark_sites(self) -> None:
        if self._marked:
            return
        with answering("marking that sites exist"):
            await self._create_index(self._mark)
            await self._client.index(
                index=self._mark,
                id=_MARK_ID,
                body={"kind": "mark", "id": _MARK_ID},
                refresh=True,
            )
        self._marked = True

    async def load(self) -> Snapshot:
        """One search over the sites index and the mark (either may be missing)."""
        sites: dict[str, Site] = {}
        keys: list[Key] = []
        marked = False
        after: list[Any] | None = None
        with answering("reading sites and keys"):
            while True:
                resp = await search(
                    self._client,
                    index=f"{self._index},{self._mark}",
                    ignore_unavailable=True,
                    allow_no_indices=True,
                    body={
                        "size": 1000,
                        "sort": [{"kind": "asc"}, {"id": "asc"}],
                        "query": {"match_all": {}},
                        **({"search_after": after} if after is not None else {}),
                    },
                )
                hits = resp["hits"]["hits"]
                for hit in hits:
                    source = hit["_source"]
                    if source["kind"] == "site":
                        site = Site.from_dict(source)
                        sites[site.id] = site
                    elif source["kind"] == "key":
                        keys.append(Key.from_dict(source))
                    else:
                        marked = True
                if len(hits) < 1000:
                    break
                after = hits[-1]["sort"]
        if not sites and marked:
            raise sites_gone(f"the index {self._index} is missing or holds no sites")
        if sites and not marked:  # sites made before marks existed, or a lost mark
            self._marked = False
            await self._mark_sites()
        keys.sort(key=lambda k: (k.created_ms, k.id))
        ordered = dict(sorted(sites.items(), key=lambda item: (item[1].created_ms, item[0])))
        return Snapshot(ordered, tuple(keys))

    async def add_site(self, site: Site) -> None:
        await self._mark_sites()  # first: a site is never there without the mark
        await self._ensure()
        with answering("storing the site"):
            try:
                await self._client.create(
                    index=self._index,
                    id=f"site:{site.id}",
                    body={"kind": "site", **site.to_dict()},
                    refresh=True,
                )
            except CONFLICT:
                raise DuplicateSite(f"a site with id {site.id!r} exists already") from None

    async def update_site(self, site: Site) -> None:
        await self._ensure()
        with answering("updating the site"):
            await self._client.index(
                index=self._index,
                id=f"site:{site.id}",
                body={"kind": "site", **site.to_dict()},
                refresh=True,
            )

    async def add_key(self, key: Key) -> None:
        await self._ensure()
        with answering("storing the key"):
            await self._client.create(
                index=self._index,
                id=f"key:{key.id}",
                body={"kind": "key", **key.to_dict()},
                refresh=True,
            )

    async def revoke_key(self, key_id: str, when_ms: int) -> Key | None:
        # no scripts (not every distribution has painless): read, then a conditional write
        with answering("revoking the key"):
            for _ in range(5):
                try:
                    found = await self._client.get(index=self._index, id=f"key:{key_id}")
                except NOT_FOUND:
                    return None
                source = found["_source"]
                if source.get("revoked") is not None:
                    return Key.from_dict(source)
                source["revoked"] = when_ms
                try:
                    await self._client.update(
                        index=self._index,
                        id=f"key:{key_id}",
                        body={"doc": {"revoked": when_ms}},
                        if_seq_no=found["_seq_no"],
                        if_primary_term=found["_primary_term"],
                        refresh=True,
                    )
                except CONFLICT:
                    continue  # changed meanwhile (last use recorded): read again
                return Key.from_dict(source)
        raise StoreUnavailable("the key kept changing while being revoked; try again")

    async def touch_keys(self, last_used: dict[str, int]) -> None:
        """Last use to the minute: concurrent writers may set a slightly older time."""
        if not last_used:
            return
        operations: list[dict[str, Any]] = []
        for key_id, ms in last_used.items():
            operations.append(
                {"update": {"_index": self._index, "_id": f"key:{key_id}", "retry_on_conflict": 3}}
            )
            operations.append({"doc": {"last_used": ms}})
        with answering("recording key use"):
            # a bulk update creates a missing index (with a dynamic mapping no search can
            # sort): never bring back a deleted or reset sites index by recording key use
            if not await self._client.indices.exists(index=self._index):
                return
            resp = await self._client.bulk(body=operations)
        if resp.get("errors"):
            log.warning(
                "key_touch_failed items=%s", [i["update"].get("error") for i in resp["items"]][:3]
            )

    async def reset(self) -> None:
        with answering("deleting the sites"):
            await self._client.indices.delete(
                index=f"{self._index},{self._mark}",
                ignore_unavailable=True,
                expand_wildcards="all",
            )
        self._ready = self._marked = False
        log.warning("sites_reset index=%s (no sites: nothing needs a key now)", self._index)

    async def close(self) -> None:
        await self._client.close()
