"""Sites and keys in Elasticsearch: one hidden index, ``<prefix>-sites``.

Documents ``site:<id>`` and ``key:<id>`` (field ``kind`` tells them apart) under an
explicit, strict mapping. The index is created on the first write (``metronome sites
create``); until it exists there are no sites. Writes refresh the index at once (they are
rare), so the next read anywhere sees them. It is ``index.hidden``: wildcard searches
(``<prefix>-*``, Kibana data views) skip it.
"""

from __future__ import annotations

import logging
from typing import Any, Self

from elasticsearch import ApiError, AsyncElasticsearch, ConflictError, NotFoundError

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.sites.base import DuplicateSite
from metronome.sites.model import Key, Site, Snapshot
from metronome.store.elasticsearch import answering

__all__ = ["ElasticsearchRegistry", "registry_index"]

log = logging.getLogger("metronome.sites")

_MS = {"type": "date", "format": "epoch_millis"}
MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
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
    },
}
SETTINGS: dict[str, Any] = {
    "index": {"hidden": True, "number_of_shards": 1, "auto_expand_replicas": "0-1"}
}


def registry_index(prefix: str) -> str:
    return f"{prefix}-sites"


class ElasticsearchRegistry:
    """The registry in ``<prefix>-sites``, with a client of its own: it reads every few
    seconds at most, and the store's connections stay the store's."""

    def __init__(self, settings: Settings) -> None:
        self._index = registry_index(settings.index_prefix)
        self._client = AsyncElasticsearch(
            settings.elasticsearch_url,
            request_timeout=settings.elasticsearch_timeout_s,
            max_retries=2,
            retry_on_timeout=True,
        )
        self._ready = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ensure(self) -> None:
        if self._ready:
            return
        with answering("creating the sites index"):
            try:
                await self._client.indices.create(
                    index=self._index, settings=SETTINGS, mappings=MAPPINGS
                )
            except ApiError as exc:
                if exc.meta.status != 400 or "already_exists" not in str(exc):
                    raise
        self._ready = True

    async def load(self) -> Snapshot:
        sites: dict[str, Site] = {}
        keys: list[Key] = []
        after: list[Any] | None = None
        with answering("reading sites and keys"):
            while True:
                try:
                    resp = await self._client.search(
                        index=self._index,
                        size=1000,
                        sort=[{"kind": "asc"}, {"id": "asc"}],
                        search_after=after,
                        query={"match_all": {}},
                    )
                except NotFoundError:
                    return Snapshot.empty()  # no site was ever created
                hits = resp["hits"]["hits"]
                for hit in hits:
                    source = hit["_source"]
                    if source["kind"] == "site":
                        site = Site.from_dict(source)
                        sites[site.id] = site
                    else:
                        keys.append(Key.from_dict(source))
                if len(hits) < 1000:
                    break
                after = hits[-1]["sort"]
        keys.sort(key=lambda k: (k.created_ms, k.id))
        ordered = dict(sorted(sites.items(), key=lambda item: (item[1].created_ms, item[0])))
        return Snapshot(ordered, tuple(keys))

    async def add_site(self, site: Site) -> None:
        await self._ensure()
        with answering("storing the site"):
            try:
                await self._client.create(
                    index=self._index,
                    id=f"site:{site.id}",
                    document={"kind": "site", **site.to_dict()},
                    refresh=True,
                )
            except ConflictError:
                raise DuplicateSite(f"a site with id {site.id!r} exists already") from None

    async def update_site(self, site: Site) -> None:
        await self._ensure()
        with answering("updating the site"):
            await self._client.index(
                index=self._index,
                id=f"site:{site.id}",
                document={"kind": "site", **site.to_dict()},
                refresh=True,
            )

    async def add_key(self, key: Key) -> None:
        await self._ensure()
        with answering("storing the key"):
            await self._client.create(
                index=self._index,
                id=f"key:{key.id}",
                document={"kind": "key", **key.to_dict()},
                refresh=True,
            )

    async def revoke_key(self, key_id: str, when_ms: int) -> Key | None:
        # no scripts (not every distribution has painless): read, then a conditional write
        with answering("revoking the key"):
            for _ in range(5):
                try:
                    found = await self._client.get(index=self._index, id=f"key:{key_id}")
                except NotFoundError:
                    return None
                source = found["_source"]
                if source.get("revoked") is not None:
                    return Key.from_dict(source)
                source["revoked"] = when_ms
                try:
                    await self._client.update(
                        index=self._index,
                        id=f"key:{key_id}",
                        doc={"revoked": when_ms},
                        if_seq_no=found["_seq_no"],
                        if_primary_term=found["_primary_term"],
                        refresh=True,
                    )
                except ConflictError:
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
            resp = await self._client.bulk(operations=operations)
        if resp.get("errors"):
            log.warning(
                "key_touch_failed items=%s", [i["update"].get("error") for i in resp["items"]][:3]
            )

    async def close(self) -> None:
        await self._client.close()
