"""The Elasticsearch store: daily Logstash-format indices, bulk writes, aggregations.

Documents go to ``<prefix>-<dataset>-YYYY.MM.DD`` (the UTC day of ``@timestamp``; points,
dataset ``metrics`` with an ``app``, to ``<prefix>-metrics-<app>-YYYY.MM.DD``) with
``op_type=create`` and the event id as ``_id``: a second write of the same event answers
409, which means "already stored". Reports compile to one search with ``size: 0``.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, OrjsonSerializer
from elasticsearch import ApiError, AsyncElasticsearch, NotFoundError

from metronome.config import Settings
from metronome.errors import StoreUnavailable
from metronome.events import fields as F
from metronome.events.document import Document
from metronome.store.base import (
    EncodedWrite,
    GroupRow,
    Removal,
    RetentionResult,
    SchemaChange,
    WriteOutcome,
)
from metronome.store.es_query import (
    compile_groups,
    compile_top,
    compile_where,
    read_groups,
    read_top,
)
from metronome.store.query import GroupQuery
from metronome.store.templates import Template, load_templates

__all__ = [
    "ElasticsearchStore",
    "answering",
    "bulk_items",
    "index_day_ms",
    "index_name",
    "registry_client",
]

_UNREACHABLE = (TransportConnectionError, ConnectionTimeout)
_BULK_FILTER = "errors,items.*.status,items.*.error"  # what write() reads of the answer
_COMPOSITE_PAGE = 1000  # groups per search while reading a whole result
_DELETE_ROUND = 5000  # ids per search-and-delete round

log = logging.getLogger("metronome.store")


def _page_size(query: GroupQuery) -> int:
    """Groups per search: fewer when each group holds a bucket per instance."""
    if any(m.kind in ("last_sum", "last_avg") for m in query.metrics):
        return _COMPOSITE_PAGE // 10
    return _COMPOSITE_PAGE


def _merge_properties(into: dict[str, Any], properties: dict[str, Any]) -> None:
    for name, mapping in properties.items():
        if name in into and "properties" in into[name] and "properties" in mapping:
            _merge_properties(into[name]["properties"], mapping["properties"])
        else:
            into[name] = copy.deepcopy(mapping)


def registry_client(settings: Settings) -> AsyncElasticsearch:
    """The client of a small registry kept beside the data in a hidden index (sites, apps,
    KPIs, leases): its own connection, so the store's stay the store's."""
    return AsyncElasticsearch(
        settings.elasticsearch_url,
        request_timeout=settings.elasticsearch_timeout_s,
        max_retries=2,
        retry_on_timeout=True,
    )


@contextmanager
def answering(what: str) -> Iterator[None]:
    """Turn the client's connection and API errors into StoreUnavailable naming ``what``."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"Elasticsearch is unreachable: {exc}") from exc
    except ApiError as exc:
        raise StoreUnavailable(
            f"Elasticsearch refused {what} ({exc.meta.status}): {exc.message}"
        ) from exc


PARTITIONED = frozenset({F.POINT_DATASET, "rollups"})
"""Datasets whose documents go to one daily index per producer (their ``app``)."""


def index_name(prefix: str, dataset: str, timestamp_ms: int, partition: str | None = None) -> str:
    """``metronome-ticks-2015.01.22``: the daily index for a document's UTC day
    (``metronome-metrics-longhorn-2015.01.22`` with a ``partition``)."""
    day = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    if partition:
        return f"{prefix}-{dataset}-{partition}-{day:%Y.%m.%d}"
    return f"{prefix}-{dataset}-{day:%Y.%m.%d}"


def _partition(doc: Document) -> str | None:
    if doc.dataset not in PARTITIONED:
        return None
    app = doc.source.get(F.APP)
    return app if isinstance(app, str) and F.APP_ID_PATTERN.match(app) else None


def bulk_items(prefix: str, documents: Sequence[Document]) -> list[tuple[str, bytes]]:
    """``(id, NDJSON lines)`` of each document for a ``_bulk`` body: the ``create`` action
    (its daily index, its id) and the document, each line ended (a pure function:
    ``metronome import`` runs it in its parsing process)."""
    items = []
    for doc in documents:
        index = index_name(prefix, doc.dataset, doc.timestamp_ms, _partition(doc))
        action = orjson.dumps({"create": {"_index": index, "_id": doc.id}})
        items.append((doc.id, b"%b\n%b\n" % (action, orjson.dumps(doc.source))))
    return items


def index_day_ms(prefix: str, datasets: Sequence[str], index: str) -> int | None:
    """Epoch ms of 00:00 UTC of the day a daily index is named for; None for any other
    index (another prefix or dataset, or a name that is not ``...-YYYY.MM.DD``)."""
    names = "|".join(re.escape(d) for d in datasets)
    parted = "|".join(re.escape(d) for d in datasets if d in PARTITIONED) or "(?!)"
    match = re.fullmatch(
        rf"{re.escape(prefix)}-(?:{names}|(?:{parted})-[a-z0-9][a-z0-9_-]{{0,63}})"
        r"-(\d{4})\.(\d{2})\.(\d{2})",
        index,
    )
    if not match:
        return None
    try:
        day = datetime(int(match[1]), int(match[2]), int(match[3]), tzinfo=UTC)
    except ValueError:
        return None
    return int(day.timestamp() * 1000)


class ElasticsearchStore:
    """Documents and reports in a real Elasticsearch cluster (client and server major 8)."""

    backend = "elasticsearch"

    def __init__(self, settings: Settings) -> None:
        assert settings.elasticsearch_url
        self._settings = settings
        self._prefix = settings.index_prefix
        self._client = AsyncElasticsearch(
            settings.elasticsearch_url,
            serializer=OrjsonSerializer(),
            request_timeout=settings.elasticsearch_timeout_s,
            max_retries=2,
            retry_on_timeout=True,
        )
        self._templates: list[Template] = load_templates(settings)

    async def open(self) -> None:
        """The client connects lazily; nothing to do until the first request."""

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> ElasticsearchStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _installed_digest(self, template: Template) -> str | None:
        try:
            if template.kind == "component":
                resp = await self._client.cluster.get_component_template(name=template.name)
                found = resp["component_templates"][0]["component_template"]
            else:
                resp = await self._client.indices.get_index_template(name=template.name)
                found = resp["index_templates"][0]["index_template"]
        except NotFoundError:
            return None
        meta = found.get("_meta") or {}
        return meta.get("metronome_hash")

    async def ensure_schema(self) -> list[SchemaChange]:
        changes = []
        with answering("the index templates"):
            for template in self._templates:
                installed = await self._installed_digest(template)
                if installed == template.digest:
                    changes.append(SchemaChange(template.name, "unchanged"))
                    continue
                if template.kind == "component":
                    await self._client.cluster.put_component_template(
                        name=template.name, body=template.body
                    )
                else:
                    await self._client.indices.put_index_template(
                        name=template.name, body=template.body
                    )
                changes.append(
                    SchemaChange(template.name, "created" if installed is None else "updated")
                )
        if any(c.action == "updated" for c in changes):
            await self._extend_existing_indices()
        return changes

    async def _extend_existing_indices(self) -> None:
        """Add fields new in the templates to indices that exist already.

        Templates shape only indices created after them, and the mapping is strict: without
        this, a field added by an upgrade (``site.id``) would be refused by today's index
        until tomorrow's is created. Only plain field mappings are pushed (never ``params``,
        whose object settings cannot change); a conflict is logged, not fatal.
        """
        components = {t.name: t.body for t in self._templates if t.kind == "component"}
        for template in self._templates:
            if template.kind != "index":
                continue
            properties: dict[str, Any] = {}
            for name in template.body["composed_of"]:
                mappings = components[name]["template"].get("mappings", {})
                _merge_properties(properties, mappings.get("properties", {}))
            properties = {
                name: mapping
                for name, mapping in properties.items()
                if "subobjects" not in mapping and "dynamic" not in mapping
            }
            try:
                await self._client.indices.put_mapping(
                    index=",".join(template.body["index_patterns"]),
                    properties=properties,
                    allow_no_indices=True,
                    ignore_unavailable=True,
                    expand_wildcards="open",
                )
            except ApiError as exc:
                log.warning(
                    "mapping_extend_failed template=%s reason=%s", template.name, exc.message
                )

    async def check_ready(self) -> str | None:
        try:
            health = await self._client.cluster.health(timeout="2s")
            if health["status"] == "red":
                return "the Elasticsearch cluster is red"
            for template in self._templates:
                if await self._installed_digest(template) != template.digest:
                    return f"index template {template.name!r} is missing or outdated"
        except _UNREACHABLE as exc:
            return f"Elasticsearch is unreachable: {exc.__class__.__name__}"
        except ApiError as exc:
            return f"Elasticsearch answered {exc.meta.status}: {exc.message}"
        return None

    async def write(self, documents: Sequence[Document]) -> list[WriteOutcome]:
        return await self._bulk(bulk_items(self._prefix, documents))

    async def write_encoded(self, batch: Sequence[Any], *, durable: bool = True) -> EncodedWrite:
        """One ``_bulk`` request of :func:`bulk_items` items (always durable: Elasticsearch
        answers once its translog is on disk)."""
        outcomes = await self._bulk(batch)
        stored = already = 0
        failed = []
        for position, outcome in enumerate(outcomes):
            if not outcome.ok:
                failed.append((position, outcome))
            elif outcome.existed:
                already += 1
            else:
                stored += 1
        return EncodedWrite(stored, already, tuple(failed))

    async def _bulk(self, items: Sequence[tuple[str, bytes]]) -> list[WriteOutcome]:
        if not items:
            return []
        # the NDJSON body is built with orjson (the client would encode every line with
        # the json module), and only the status and error of each item come back
        with answering("the bulk request"):
            resp = await self._client.bulk(
                operations=b"".join(lines for _, lines in items),  # type: ignore[arg-type]  # NDJSON bytes are sent as is
                filter_path=_BULK_FILTER,
            )
        outcomes = []
        for (doc_id, _), item in zip(items, resp["items"], strict=True):
            result = item["create"]
            status = result["status"]
            if status in (200, 201, 409):  # 409: this id is already stored
                outcomes.append(WriteOutcome(doc_id, True, existed=status == 409))
            else:
                error = result.get("error") or {}
                reason = f"{error.get('type', status)}: {error.get('reason', '')}".strip()
                outcomes.append(
                    WriteOutcome(doc_id, False, reason, retriable=status == 429 or status >= 500)
                )
        return outcomes

    async def groups(
        self, query: GroupQuery, *, after: tuple[Any, ...] | None, limit: int
    ) -> list[GroupRow]:
        rows: list[GroupRow] = []
        es_after: dict[str, Any] | None = None
        if after is not None:
            es_after = {f"d{i}": value for i, value in enumerate(after)}
        index = ",".join(f"{self._prefix}-{d}-*" for d in query.datasets)
        while True:
            page = min(_page_size(query), limit - len(rows))
            with answering("the query"):
                resp = await self._client.search(
                    index=index,
                    body=compile_groups(query, es_after, page),
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
            aggregations = resp.get("aggregations")
            if aggregations is None:  # no index yet: no documents
                return (
                    [
                        (
                            (),
                            tuple(
                                0
                                if m.kind in ("count", "distinct", "sum", "last_sum")
                                else (0, 0)
                                if m.kind == "error_rate"
                                else None
                                for m in query.metrics
                            ),
                        )
                    ]
                    if not query.dimensions
                    else []
                )
            got, es_after = read_groups(query, aggregations)
            rows += got
            if not query.dimensions or es_after is None or len(got) < page or len(rows) >= limit:
                return rows

    async def top(
        self, query: GroupQuery, *, metric: int, descending: bool, size: int
    ) -> list[GroupRow]:
        index = ",".join(f"{self._prefix}-{d}-*" for d in query.datasets)
        with answering("the query"):
            resp = await self._client.search(
                index=index,
                body=compile_top(query, metric, descending, size),
                ignore_unavailable=True,
                allow_no_indices=True,
            )
        aggregations = resp.get("aggregations")
        return [] if aggregations is None else read_top(query, aggregations)

    async def field_names(
        self, query: GroupQuery, under: str, partition: str | None = None
    ) -> list[str]:
        part = f"{partition}-" if partition else ""
        index = ",".join(f"{self._prefix}-{d}-{part}*" for d in query.datasets)
        with answering("the mappings"):
            resp = await self._client.indices.get_mapping(
                index=index, ignore_unavailable=True, allow_no_indices=True
            )
        names: set[str] = set()
        for mapping in resp.body.values():
            properties = mapping.get("mappings", {}).get("properties", {})
            names.update(properties.get(under, {}).get("properties", {}))
        return sorted(names)

    async def delete_matching(self, query: GroupQuery) -> int:
        index = ",".join(f"{self._prefix}-{d}-*" for d in query.datasets)
        deleted = 0
        with answering("the deletion"):
            while True:  # search, delete by id, refresh: until nothing matches
                resp = await self._client.search(
                    index=index,
                    query=compile_where(query),
                    size=_DELETE_ROUND,
                    source=False,
                    sort=["_doc"],
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
                hits = resp["hits"]["hits"]
                if not hits:
                    return deleted
                operations = [{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits]
                result = await self._client.bulk(operations=operations, refresh=True)
                deleted += sum(1 for item in result["items"] if item["delete"]["status"] == 200)

    async def delete_before(
        self, datasets: Sequence[str], cutoff_ms: int, *, dry_run: bool = False
    ) -> RetentionResult:
        """Delete whole daily indices named for days before the cutoff's day."""
        if not datasets:
            return RetentionResult("indices", (), dry_run)
        pattern = ",".join(f"{self._prefix}-{d}-*" for d in datasets)
        with answering("the index listing"):
            listing = await self._client.cat.indices(
                index=pattern, format="json", h="index,docs.count", expand_wildcards="open,closed"
            )
        rows = cast("list[dict[str, str]]", listing.body)  # format="json": a row per index
        old = sorted(
            (
                Removal(row["index"], int(row.get("docs.count") or 0))
                for row in rows
                if (day := index_day_ms(self._prefix, datasets, row["index"])) is not None
                and day < cutoff_ms
            ),
            key=lambda r: r.name,
        )
        if not dry_run:
            for start in range(0, len(old), 50):  # explicit names: URLs stay short
                batch = ",".join(r.name for r in old[start : start + 50])
                with answering("deleting old indices"):
                    await self._client.indices.delete(index=batch, ignore_unavailable=True)
        return RetentionResult("indices", tuple(old), dry_run)
