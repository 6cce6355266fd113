"""The basket events in one index beside the daily ones: what keeps
``GET /items/{id}/related`` fast on Elasticsearch and OpenSearch.

Why: a related-items answer is three searches (the item's baskets, the other items in them,
the candidates' own baskets; :mod:`.es_query`). Over the events they each reach every daily
index of the range, and at a year a bare term query over 365 indices costs 45 to 100 ms
here before any document is read (4.8 s per answer at load average 20). The same three
searches over one index take milliseconds.

What is kept: ``<prefix>-related`` (hidden, one shard) holds a slim copy of every event
that is in a basket (ticks and access-log lines with an item, and a visitor or a visit):
its time and the fields baskets are formed from and the related-items filters read --
site, visitor, visit, item, event action, bot, referrer spam -- under the events' own
names and the event's id, plus its ``dataset``. The searches of :mod:`.es_query` run on
it unchanged (a term on ``dataset`` added), over the same documents' same values: the
answers, counts and ``cardinality`` estimates included, are the events' own.

Why copies, not counts per day: counts summed over days count a basket crossing midnight
twice unless corrected per basket (the embedded store's ``related_multi``), and keeping
them idempotently needs update scripts, which a cluster without the scripting module
(Elasticsearch's integration-test distribution) refuses. A copy is written with
``create`` under the event's id: a resent, replayed or out-of-order event is copied once,
and a batch retried after a failure between the two requests completes it.

How it stays exact: :meth:`RelatedIndex.add` runs after every ``_bulk`` of events, for
those stored now or before (409). Deleting events deletes their copies first
(:meth:`remove`; ``metronome forget``, retention per site); deleting old daily indices
deletes the copies of those days (:meth:`drop_before`; retention), also of a run that
was cut short.

Coverage: the index records, when it is created, from when it holds every event
(``_meta.complete_from``): the start of time on a cluster without events yet, else the
moment of creation (events written before an upgrade are not in it). A range starting
before that is answered from the events as before, as is every range with
``METRONOME_RELATED_ROLLUPS=off``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from metronome.events import fields as F
from metronome.events.document import parse_iso_ms
from metronome.store.connection import search
from metronome.store.query import BasketQuery, FilterNode, Leaf

__all__ = [
    "BASKET_DATASETS",
    "RELATED_FIELDS",
    "RelatedIndex",
    "copies_of_bulk",
    "copy_of",
]

BASKET_DATASETS = ("ticks", "logs")  # the datasets whose events are in baskets (SOURCES)
DAY_MS = 86_400_000
_DELETE_ROUND = 5000  # ids per search-and-delete round
# the event fields copied (baskets are formed from them; the filters read them)
_KEY_FIELDS = (
    F.SITE_ID,
    F.VISITOR_ID,
    F.VISIT_ID,
    F.ITEM_ID,
    F.EVENT_ACTION,
    F.BOT,
    F.REFERRER_SPAM,
)
RELATED_FIELDS = frozenset({F.SITE_ID, F.ITEM_ID, F.EVENT_ACTION, F.BOT, F.REFERRER_SPAM})
"""The fields a related-items filter may read for the index to answer it."""

_PROPERTIES: dict[str, Any] = {
    F.TIMESTAMP: {"type": "date", "format": "epoch_millis"},
    "dataset": {"type": "keyword"},
    "site": {"properties": {"id": {"type": "keyword", "ignore_above": 64}}},
    "visitor": {"properties": {"id": {"type": "keyword", "ignore_above": 64}}},
    "visit": {"properties": {"id": {"type": "keyword", "ignore_above": 64}}},
    "item": {"properties": {"id": {"type": "keyword", "ignore_above": 8192}}},
    "event": {"properties": {"action": {"type": "keyword", "ignore_above": 256}}},
    "bot": {"type": "boolean"},
    "referrer": {"properties": {"spam": {"type": "boolean"}}},
}


def _get(source: dict[str, Any], path: str) -> Any:
    node: Any = source
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _dataset_of(prefix: str, index: str) -> str | None:
    match = re.fullmatch(rf"{re.escape(prefix)}-([a-z]+)-\d{{4}}\.\d{{2}}\.\d{{2}}", index)
    return match[1] if match and match[1] in BASKET_DATASETS else None


def copy_of(dataset: str, source: dict[str, Any]) -> dict[str, Any] | None:
    """The slim copy of an event: its time and the fields baskets and their filters read,
    under the events' own names; None when no search of :mod:`.es_query` can find the
    event (no item, or neither a visitor nor a visit)."""
    ts = _timestamp_ms(source.get(F.TIMESTAMP))
    if ts is None or _get(source, F.ITEM_ID) is None:
        return None
    if _get(source, F.VISITOR_ID) is None and _get(source, F.VISIT_ID) is None:
        return None
    doc: dict[str, Any] = {F.TIMESTAMP: ts, "dataset": dataset}
    for name in _KEY_FIELDS:
        value = _get(source, name)
        if value is None:
            continue
        head, _, tail = name.partition(".")
        if tail:
            doc.setdefault(head, {})[tail] = value
        else:
            doc[head] = value
    return doc


def copies_of_bulk(
    prefix: str, items: Sequence[tuple[str, bytes]], stored: Sequence[bool]
) -> list[tuple[str, dict[str, Any]]]:
    """``(event id, slim copy)`` of the stored events of a ``_bulk`` body's items (``(id,
    action and document lines)``) that are in baskets."""
    copies = []
    for (doc_id, lines), ok in zip(items, stored, strict=True):
        if not ok:
            continue
        action_line, _, rest = lines.partition(b"\n")
        action = orjson.loads(action_line)
        op = action.get("create") or action.get("index") or {}
        dataset = _dataset_of(prefix, str(op.get("_index", "")))
        if dataset is None:
            continue
        doc = copy_of(dataset, orjson.loads(rest))
        if doc is not None:
            copies.append((doc_id, doc))
    return copies


def _timestamp_ms(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return parse_iso_ms(value)
    return None


def _fields(node: FilterNode | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, Leaf):
        return {f"params:{node.field.name}" if node.field.param else node.field.name}
    return {name for item in node.items for name in _fields(item)}


class RelatedIndex:
    """``<prefix>-related`` through the store's client (see the module's text)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self.name = f"{prefix}-related"
        self._ready = False
        self._complete_from: int | None = None

    async def ensure(self) -> None:
        """Create the index once, recording from when it holds every event."""
        from metronome.store.hidden_index import create_hidden_index

        if self._ready:
            return
        if not await self._client.indices.exists(index=self.name):
            events = ",".join(f"{self._prefix}-{d}-*" for d in BASKET_DATASETS)
            resp = await self._client.count(
                index=events, ignore_unavailable=True, allow_no_indices=True
            )
            since = 0 if not resp.get("count") else int(time.time() * 1000)
            await create_hidden_index(
                self._client, self.name, _PROPERTIES, {"complete_from": since}
            )
        self._ready = True

    async def complete_from(self) -> int | None:
        """Epoch ms from which every event is in the index; None without an index."""
        if self._complete_from is None:
            resp = await self._client.indices.get_mapping(
                index=self.name, ignore_unavailable=True, allow_no_indices=True
            )
            for mapping in getattr(resp, "body", resp).values():
                meta = mapping.get("mappings", {}).get("_meta") or {}
                if "complete_from" in meta:
                    self._complete_from = int(meta["complete_from"])
        return self._complete_from

    async def add(self, items: Sequence[tuple[str, bytes]], stored: Sequence[bool]) -> None:
        """Copy the stored events of a ``_bulk`` body (idempotent: ``create`` by event id)."""
        copies = copies_of_bulk(self._prefix, items, stored)
        if not copies:
            return
        await self.ensure()
        operations: list[Any] = []
        for doc_id, doc in copies:
            operations.append({"create": {"_index": self.name, "_id": doc_id}})
            operations.append(doc)
        await self._run(operations, ok=(200, 201, 409))  # 409: copied before

    async def remove(self, hits: Sequence[dict[str, Any]]) -> None:
        """Delete the copies of events about to be deleted (search hits: index and id)."""
        ids = [h["_id"] for h in hits if _dataset_of(self._prefix, h["_index"]) is not None]
        if not ids or not await self._client.indices.exists(index=self.name):
            return
        operations = [{"delete": {"_index": self.name, "_id": i}} for i in ids]
        await self._run(operations, ok=(200, 404), refresh=True)  # 404: never copied

    async def drop_before(self, datasets: Sequence[str], cutoff_ms: int) -> None:
        """Delete the copies of the events in daily indices named for days before
        ``cutoff_ms`` (those :meth:`.ElasticsearchStore.delete_before` deletes)."""
        wanted = [d for d in datasets if d in BASKET_DATASETS]
        if not wanted or not await self._client.indices.exists(index=self.name):
            return
        # an index of day D goes when D < cutoff: its events are before cutoff's next midnight
        body = {
            "query": {
                "bool": {
                    "filter": [
                        {"terms": {"dataset": wanted}},
                        {"range": {F.TIMESTAMP: {"lt": -(-cutoff_ms // DAY_MS) * DAY_MS}}},
                    ]
                }
            },
            "size": _DELETE_ROUND,
            "_source": False,
            "sort": ["_doc"],
        }
        while True:  # search, delete by id, refresh: until nothing matches
            resp = await search(self._client, index=self.name, body=body)
            hits = resp["hits"]["hits"]
            if not hits:
                return
            operations = [{"delete": {"_index": self.name, "_id": h["_id"]}} for h in hits]
            await self._run(operations, ok=(200, 404), refresh=True)

    async def _run(
        self, operations: list[Any], *, ok: tuple[int, ...], refresh: bool = False
    ) -> None:
        from metronome.errors import StoreUnavailable

        resp = await self._client.bulk(
            body=operations,
            filter_path="errors,items.*.status,items.*.error",
            **({"refresh": True} if refresh else {}),
        )
        if not resp.get("errors"):
            return
        failed = [
            result
            for item in resp["items"]
            for result in item.values()
            if result["status"] not in ok
        ]
        if failed:
            raise StoreUnavailable(
                f"the related items' index refused {len(failed)} of {len(resp['items'])}"
                f" operations: {failed[0].get('error')}"
            )

    def usable(self, query: BasketQuery, complete_from: int | None) -> bool:
        """Whether the index answers ``query`` exactly as the events would."""
        where = query.where
        return (
            complete_from is not None
            and where.start_ms >= complete_from
            and bool(where.datasets)
            and all(d in BASKET_DATASETS for d in where.datasets)
            and _fields(where.filter) <= RELATED_FIELDS
        )

    def search_body(self, body: dict[str, Any], query: BasketQuery) -> dict[str, Any]:
        """A search of :mod:`.es_query` for the events, restricted to the query's
        datasets, for this index."""
        inner = dict(body["query"]["bool"])
        inner["filter"] = [*inner["filter"], {"terms": {"dataset": list(query.where.datasets)}}]
        return {**body, "query": {"bool": inner}}
