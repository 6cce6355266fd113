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
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from elastic_transport import OrjsonSerializer

from metronome.config import Settings
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
from metronome.store.connection import (
    API_ERRORS,
    NOT_FOUND,
    UNREACHABLE,
    answering,
    denied_reason,
    explain,
    has_credentials,
    message_of,
    open_client,
    search,
    status_of,
    unverified_warning,
)
from metronome.store.es_query import (
    CARDINALITY_PRECISION,
    compile_groups,
    compile_item_baskets,
    compile_other_items,
    compile_popularity,
    compile_top,
    compile_where,
    read_basket_counts,
    read_groups,
    read_item_baskets,
    read_top,
)
from metronome.store.es_related import RelatedIndex
from metronome.store.query import BasketCounts, BasketQuery, GroupQuery
from metronome.store.roles import roles
from metronome.store.templates import Template, load_templates

__all__ = ["ElasticsearchStore", "answering", "bulk_items", "index_day_ms", "index_name"]

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
        op = "index" if doc.dataset in F.REPLACED_DATASETS else "create"  # summaries
        action = orjson.dumps({op: {"_index": index, "_id": doc.id}})
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
    """Documents and reports in a real Elasticsearch cluster (client and server major 8),
    or an OpenSearch one (2.x and later; ``METRONOME_OPENSEARCH_URL``): one implementation,
    the engines' differences kept to the client (store/connection.py) and the templates
    (store/templates.py). ``backend`` names the engine."""

    def __init__(self, settings: Settings) -> None:
        assert settings.uses_elasticsearch
        self._settings = settings
        self._prefix = settings.index_prefix
        self.backend = settings.search_engine
        self._client: Any = open_client(settings, serializer=OrjsonSerializer())
        self._templates: list[Template] = load_templates(settings)
        # slim copies of the basket events, in one index (store/es_related.py): related items
        self._related = RelatedIndex(self._client, self._prefix)
        self._related_on = settings.related_rollups

    async def open(self) -> None:
        """The client connects lazily; only the warning of unchecked certificates now."""
        warning = unverified_warning(self._settings)
        if warning:
            log.warning("elasticsearch_certificates_unchecked %s", warning)

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
        except NOT_FOUND:
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
        with answering("creating the related items' index"):
            await self._related.ensure()
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
                    body={"properties": properties},
                    allow_no_indices=True,
                    ignore_unavailable=True,
                    expand_wildcards="open",
                )
            except API_ERRORS as exc:
                log.warning(
                    "mapping_extend_failed template=%s reason=%s", template.name, message_of(exc)
                )

    async def _missing_privileges(self) -> str | None:
        """Which privileges of the ``serve`` role the configured credentials lack, asked of
        the cluster's ``_has_privileges``; None when all are held, or when there are no
        credentials or no security module to ask."""
        if not has_credentials(self._settings) or self.backend != "elasticsearch":
            return None
        role = roles(self._prefix)[f"{self._prefix}-serve"]
        try:
            resp = await self._client.security.has_privileges(
                cluster=role["cluster"], index=role["indices"]
            )
        except API_ERRORS as exc:
            if status_of(exc) in (401, 403):
                raise
            return None  # a cluster without the security module: nothing to check
        if resp.get("has_all_requested", True):
            return None
        lacking = [f"the cluster privilege {p!r}" for p, ok in resp["cluster"].items() if not ok]
        for names, held in resp.get("index", {}).items():
            lacking += [f"the index privilege {p!r} on {names}" for p, ok in held.items() if not ok]
        return (
            f"Elasticsearch user {resp.get('username')!r} lacks {', '.join(lacking)}"
            " (`metronome elasticsearch role` prints the roles Metronome needs)"
        )

    async def check_access(self) -> str | None:
        """Why the cluster cannot be used as configured (unreachable, untrusted, refused
        credentials, missing privileges, red), or None; the templates are not looked at."""
        try:
            health = await self._client.cluster.health()
            if health["status"] == "red":
                return "the Elasticsearch cluster is red"
            return await self._missing_privileges()
        except UNREACHABLE as exc:
            return explain(exc, "the health check") or "Elasticsearch is unreachable"
        except API_ERRORS as exc:
            return (
                explain(exc, "the health check")
                or f"Elasticsearch answered {status_of(exc)}: {message_of(exc)}"
            )

    async def check_ready(self) -> str | None:
        reason = await self.check_access()
        if reason is not None:
            return reason
        try:
            for template in self._templates:
                if await self._installed_digest(template) != template.digest:
                    return f"index template {template.name!r} is missing or outdated"
        except UNREACHABLE as exc:
            return explain(exc, "the health check") or "Elasticsearch is unreachable"
        except API_ERRORS as exc:
            return (
                explain(exc, "the health check")
                or f"Elasticsearch answered {status_of(exc)}: {message_of(exc)}"
            )
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
        ndjson = b"".join(lines for _, lines in items)
        with answering("creating the related items' index"):
            await self._related.ensure()  # before the first events: it then holds them all
        with answering("the bulk request"):
            # OpenSearch's client sends only text as NDJSON as is
            body = ndjson.decode() if self.backend == "opensearch" else ndjson
            resp = await self._client.bulk(body=body, filter_path=_BULK_FILTER)
        outcomes = []
        for (doc_id, _), item in zip(items, resp["items"], strict=True):
            result = item.get("create") or item["index"]
            status = result["status"]
            if status in (200, 201, 409):  # 409: this id is already stored
                outcomes.append(WriteOutcome(doc_id, True, existed=status == 409))
            else:
                error = result.get("error") or {}
                reason = f"{error.get('type', status)}: {error.get('reason', '')}".strip()
                # 401/403: the credentials or the role, not the document, are wrong: it
                # waits in the spool until they are fixed rather than being dead-lettered
                denied = status in (401, 403) and error.get("type") == "security_exception"
                if denied:
                    reason = denied_reason(str(error.get("reason", "")), "the bulk request")
                outcomes.append(
                    WriteOutcome(
                        doc_id, False, reason, retriable=denied or status == 429 or status >= 500
                    )
                )
        # stored now or before (a resend, or a retry after a failure here): idempotent
        with answering("the related items' basket index"):
            await self._related.add(items, [outcome.ok for outcome in outcomes])
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
                resp = await search(
                    self._client,
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
            resp = await search(
                self._client,
                index=index,
                body=compile_top(query, metric, descending, size),
                ignore_unavailable=True,
                allow_no_indices=True,
            )
        aggregations = resp.get("aggregations")
        return [] if aggregations is None else read_top(query, aggregations)

    async def _aggregations(self, query: GroupQuery, body: dict[str, Any]) -> dict[str, Any]:
        index = ",".join(f"{self._prefix}-{d}-*" for d in query.datasets)
        with answering("the query"):
            resp = await search(
                self._client, index=index, body=body, ignore_unavailable=True, allow_no_indices=True
            )
        aggregations: dict[str, Any] = resp.get("aggregations") or {}
        return aggregations

    async def _basket_search(
        self, query: BasketQuery, body: dict[str, Any], copies: bool
    ) -> dict[str, Any]:
        if not copies:
            return await self._aggregations(query.where, body)
        with answering("the query"):
            resp = await search(
                self._client,
                index=self._related.name,
                body=self._related.search_body(body, query),
                ignore_unavailable=True,
                allow_no_indices=True,
            )
        aggregations: dict[str, Any] = resp.get("aggregations") or {}
        return aggregations

    async def baskets(self, query: BasketQuery) -> BasketCounts:
        copies = False
        if self._related_on:
            with answering("the related items' index"):
                copies = self._related.usable(query, await self._related.complete_from())
        first = await self._basket_search(query, compile_item_baskets(query), copies)
        if not first:  # no index yet
            return BasketCounts(0, ())
        visits, days, complete = read_item_baskets(first)
        if not visits and not days:
            return BasketCounts(0, (), complete)
        item_baskets = len(visits) + len(days)
        other = compile_other_items(query, visits, days)
        second = await self._basket_search(query, other, copies)
        shared = read_basket_counts(second)
        ranked = sorted(
            ((item, n) for item, n in shared.items() if n >= query.min_support),
            key=lambda pair: (-pair[1], pair[0]),
        )[: query.candidates]
        if not ranked:
            return BasketCounts(item_baskets, (), complete)
        third = await self._basket_search(
            query, compile_popularity(query, [item for item, _ in ranked]), copies
        )
        popularity = read_basket_counts(third)
        pairs = tuple((item, n, max(n, popularity.get(item, n))) for item, n in ranked)
        # cardinality counts are exact below their precision threshold
        exact = complete and all(other < CARDINALITY_PRECISION for _, _, other in pairs)
        return BasketCounts(item_baskets, pairs, exact)

    async def documents(self, query: GroupQuery, *, limit: int) -> list[dict[str, Any]]:
        index = ",".join(f"{self._prefix}-{d}-*" for d in query.datasets)
        found: list[dict[str, Any]] = []
        after: list[Any] | None = None
        with answering("the search"):
            while len(found) < limit:
                body: dict[str, Any] = {
                    "query": compile_where(query),
                    "size": min(_COMPOSITE_PAGE, limit - len(found)),
                    "sort": [{F.TIMESTAMP: "asc"}, {F.EVENT_ID: "asc"}],
                }
                if after is not None:
                    body["search_after"] = after
                # body-style: the call both clients (Elasticsearch, OpenSearch) take
                resp = await search(
                    self._client,
                    index=index,
                    body=body,
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
                hits = resp["hits"]["hits"]
                found.extend(hit["_source"] for hit in hits)
                if len(hits) < min(_COMPOSITE_PAGE, limit - len(found) + len(hits)):
                    break
                after = hits[-1]["sort"]
        return found

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
        # a dict per index (the Elasticsearch client wraps it, OpenSearch's not)
        for mapping in getattr(resp, "body", resp).values():
            properties = mapping.get("mappings", {}).get("properties", {})
            names.update(properties.get(under, {}).get("properties", {}))
        return sorted(names)

    async def delete_matching(self, query: GroupQuery) -> int:
        index = ",".join(f"{self._prefix}-{d}-*" for d in query.datasets)
        deleted = 0
        with answering("the deletion"):
            while True:  # search, delete by id, refresh: until nothing matches
                resp = await search(
                    self._client,
                    index=index,
                    body={
                        "query": compile_where(query),
                        "size": _DELETE_ROUND,
                        "_source": False,
                        "sort": ["_doc"],
                    },
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
                hits = resp["hits"]["hits"]
                if not hits:
                    return deleted
                # their copies first: a deletion cut short is finished by the next
                await self._related.remove(hits)
                operations = [{"delete": {"_index": h["_index"], "_id": h["_id"]}} for h in hits]
                result = await self._client.bulk(body=operations, refresh=True)
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
        # format="json": a row per index (the Elasticsearch client wraps it, OpenSearch's not)
        rows = cast("list[dict[str, str]]", getattr(listing, "body", listing))
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
            with answering("the related items' index"):  # also ends a run cut short
                await self._related.drop_before(datasets, cutoff_ms)
        return RetentionResult("indices", tuple(old), dry_run)
