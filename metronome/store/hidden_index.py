"""The lifecycle shared by small registries kept in a hidden index of their own.

Saved KPIs (``<prefix>-kpis``), saved funnels (``<prefix>-funnels``), the jobs' leases
(``<prefix>-leases``), the sites and keys (``<prefix>-sites``) and the related items'
copies (``<prefix>-related``) each live in one
hidden, single-shard index beside the events, reached through a client of their own that
takes the body-style calls both Elasticsearch and OpenSearch accept. The index is created
with a strict mapping on the first write, and creating it twice (another worker was first)
is not an error.
"""

from __future__ import annotations

from typing import Any, Self

from metronome.config import Settings

__all__ = ["HiddenIndexRegistry", "create_hidden_index", "hidden_index_body"]


def hidden_index_body(
    properties: dict[str, Any], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The body that creates a hidden, single-shard index with a strict mapping (and
    ``_meta``): one replica where the cluster has a second node."""
    mappings: dict[str, Any] = {"dynamic": "strict", "properties": properties}
    if meta is not None:
        mappings["_meta"] = meta
    settings = {"index": {"hidden": True, "number_of_shards": 1, "auto_expand_replicas": "0-1"}}
    return {"settings": settings, "mappings": mappings}


async def create_hidden_index(
    client: Any, index: str, properties: dict[str, Any], meta: dict[str, Any] | None = None
) -> None:
    """Create a hidden index (:func:`hidden_index_body`); an index that already exists
    (another worker was first) is not an error."""
    from metronome.store.connection import API_ERRORS, status_of

    try:
        await client.indices.create(index=index, body=hidden_index_body(properties, meta))
    except API_ERRORS as exc:
        if status_of(exc) != 400 or "already_exists" not in str(exc):
            raise


class HiddenIndexRegistry:
    """Open the client for ``<prefix>-<name>``; :meth:`_ensure` creates the index once."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        what: str,
        properties: dict[str, Any],
        *,
        wait_for_shard: bool = False,
    ):
        from metronome.store.connection import open_client

        self._index = f"{settings.index_prefix}-{name}"
        self._what = what  # "KPI", "funnel": named in the error when the store cannot answer
        self._properties = properties
        # reads that must see another process's fresh index wait for its shard to start
        self._wait_for_shard = wait_for_shard
        # the body-style calls made on it are the ones both clients (Elasticsearch, OpenSearch) take
        self._client: Any = open_client(settings)
        self._ready = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def _ensure(self) -> None:
        from metronome.store.connection import answering

        if self._ready:
            return
        with answering(f"creating the {self._what} index"):
            await create_hidden_index(self._client, self._index, self._properties)
            if self._wait_for_shard:
                # another process may have created it a moment ago: wait for its shard (the
                # cluster's own 30 s limit: OpenSearch's client takes timeout= as its own)
                await self._client.cluster.health(index=self._index, wait_for_status="yellow")
        self._ready = True
