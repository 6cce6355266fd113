"""A :class:`~metronome.reports.query.GroupQuery` as Elasticsearch query DSL.

Only structured queries: ``terms``, ``range``, ``wildcard`` (with the user's text
escaped) and ``bool``; no ``query_string`` and no scripts, so nothing a user sends is ever
parsed as query syntax. Groups come from a ``composite`` aggregation (exact, and paged
with ``after``), with one sub-aggregation per metric.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from metronome.events import fields as F
from metronome.store.query import (
    BasketQuery,
    BoolNode,
    FilterNode,
    GroupQuery,
    Leaf,
    MetricSpec,
)

__all__ = [
    "BASKET_SAMPLE",
    "CARDINALITY_PRECISION",
    "compile_item_baskets",
    "compile_other_items",
    "compile_popularity",
    "read_basket_counts",
    "read_item_baskets",
    "compile_filter",
    "compile_groups",
    "compile_top",
    "compile_where",
    "read_groups",
    "read_top",
]

CARDINALITY_PRECISION = 3000
LAST_INSTANCES = 10_000  # instances per group a last_sum/last_avg reads (the rest are left out)
Row = tuple[tuple[Any, ...], tuple[Any, ...]]


def _escape_wildcard(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def compile_filter(node: FilterNode) -> dict[str, Any]:
    """Query DSL for a filter tree; a document without the field never matches a leaf
    (so ``is_not`` and ``not`` include it, as in SQL with COALESCE)."""
    if isinstance(node, BoolNode):
        items = [compile_filter(item) for item in node.items]
        if node.op == "and":
            return {"bool": {"filter": items}}
        if node.op == "or":
            return {"bool": {"should": items, "minimum_should_match": 1}}
        return {"bool": {"must_not": items}}
    assert isinstance(node, Leaf)
    name = node.field.name
    if node.op in ("is", "is_not"):
        terms = {"terms": {name: list(node.values)}}
        return terms if node.op == "is" else {"bool": {"must_not": [terms]}}
    if node.op in ("gt", "lt"):
        return {"range": {node.field.numeric_field: {node.op: node.values[0]}}}
    if node.op == "matches" and "*" in node.values:  # any value: the field exists
        return {"exists": {"field": name}}
    patterns = (
        [f"*{_escape_wildcard(v)}*" for v in node.values]
        if node.op == "contains"
        else [v.replace("\\", "\\\\") for v in node.values]
    )
    should = [{"wildcard": {name: {"value": p}}} for p in patterns]
    return {"bool": {"should": should, "minimum_should_match": 1}}


def compile_where(query: GroupQuery) -> dict[str, Any]:
    """The documents of a query: its time range and its filter."""
    filters: list[dict[str, Any]] = [
        {
            "range": {
                F.TIMESTAMP: {"gte": query.start_ms, "lt": query.end_ms, "format": "epoch_millis"}
            }
        }
    ]
    if query.filter is not None:
        filters.append(compile_filter(query.filter))
    return {"bool": {"filter": filters}}


def _metric_aggs(metrics: Sequence[MetricSpec]) -> dict[str, Any]:
    aggs: dict[str, Any] = {}
    for index, metric in enumerate(metrics):
        key = f"m{index}"
        ref = metric.field
        if metric.kind == "count":
            continue
        assert ref is not None
        if metric.kind == "distinct":
            aggs[key] = {
                "cardinality": {"field": ref.name, "precision_threshold": CARDINALITY_PRECISION}
            }
        elif metric.kind == "percentile":
            aggs[key] = {
                "percentiles": {
                    "field": ref.numeric_field,
                    "percents": [metric.percent],
                    "keyed": False,
                }
            }
        elif metric.kind == "error_rate":
            aggs[key + "e"] = {"filter": {"range": {ref.name: {"gte": 500}}}}
            aggs[key + "t"] = {"value_count": {"field": ref.name}}
        elif metric.kind in ("last_sum", "last_avg"):
            assert metric.instance is not None
            last = {  # top_hits: top_metrics is not in every distribution (x-pack)
                "top_hits": {
                    "size": 1,
                    "sort": [{F.TIMESTAMP: "desc"}],
                    "_source": False,
                    "docvalue_fields": [ref.name],
                }
            }
            instances = {
                "terms": {"field": metric.instance.name, "size": LAST_INSTANCES},
                "aggs": {"last": last},
            }
            aggs[key] = {"filter": {"exists": {"field": ref.name}}, "aggs": {"i": instances}}
        else:
            aggs[key] = {metric.kind: {"field": ref.numeric_field}}
    return aggs


def compile_groups(query: GroupQuery, after: dict[str, Any] | None, size: int) -> dict[str, Any]:
    """The search body for one page of groups (``size`` at most)."""
    if not query.dimensions:
        groups: dict[str, Any] = {"filter": {"match_all": {}}}
    else:
        sources = []
        for index, dim in enumerate(query.dimensions):
            if dim.interval:
                source: dict[str, Any] = {
                    "date_histogram": {
                        "field": F.TIMESTAMP,
                        "calendar_interval": dim.interval,
                        "time_zone": query.tz,
                    }
                }
            else:
                assert dim.field is not None
                source = {"terms": {"field": dim.field.name, "missing_bucket": True}}
            sources.append({f"d{index}": source})
        composite: dict[str, Any] = {"size": size, "sources": sources}
        if after is not None:
            composite["after"] = after
        groups = {"composite": composite}
    return _search(query, groups)


def _search(query: GroupQuery, groups: dict[str, Any]) -> dict[str, Any]:
    """The search body: the query's documents, grouped by ``groups`` with its metrics."""
    metric_aggs = _metric_aggs(query.metrics)
    if metric_aggs:
        groups["aggs"] = metric_aggs
    return {
        "size": 0,
        "track_total_hits": False,
        "query": compile_where(query),
        "aggs": {"groups": groups},
    }


MISSING_KEY = "\u0000"  # where terms put documents without the field: sorts first


def compile_top(query: GroupQuery, metric: int, descending: bool, size: int) -> dict[str, Any]:
    """One ``terms`` aggregation: the top ``size`` keys of the only dimension by a metric."""
    (dim,) = query.dimensions
    assert dim.field is not None
    kind = query.metrics[metric].kind
    key = "_count" if kind == "count" else f"m{metric}"
    terms = {
        "field": dim.field.name,
        "size": size,
        "shard_size": max(size * 10, 10_000),
        "missing": MISSING_KEY,
        "order": [{key: "desc" if descending else "asc"}, {"_key": "asc"}],
    }
    return _search(query, {"terms": terms})


def read_top(query: GroupQuery, aggregations: dict[str, Any]) -> list[Row]:
    return [
        ((None if b["key"] == MISSING_KEY else b["key"],), _metric_values(b, query.metrics))
        for b in aggregations["groups"]["buckets"]
    ]


def _metric_values(bucket: dict[str, Any], metrics: Sequence[MetricSpec]) -> tuple[Any, ...]:
    values: list[Any] = []
    for index, metric in enumerate(metrics):
        key = f"m{index}"
        if metric.kind == "count":
            values.append(int(bucket["doc_count"]))
        elif metric.kind == "distinct":
            values.append(int(bucket[key]["value"]))
        elif metric.kind == "percentile":
            rows = bucket[key]["values"]
            values.append(rows[0]["value"] if rows else None)
        elif metric.kind == "error_rate":
            values.append((int(bucket[key + "e"]["doc_count"]), int(bucket[key + "t"]["value"])))
        elif metric.kind in ("last_sum", "last_avg"):
            assert metric.field is not None
            name = metric.field.name
            lasts = [
                hits[0]["fields"][name][0]
                for b in bucket[key]["i"]["buckets"]
                if (hits := b["last"]["hits"]["hits"]) and hits[0].get("fields", {}).get(name)
            ]
            if metric.kind == "last_sum":
                values.append(float(sum(lasts)))
            else:
                values.append(sum(lasts) / len(lasts) if lasts else None)
        else:
            values.append(bucket[key]["value"])
    return tuple(values)


def read_groups(
    query: GroupQuery, aggregations: dict[str, Any]
) -> tuple[list[Row], dict[str, Any] | None]:
    """Rows ``(keys, values)`` of one page, and the ``after_key`` for the next (or None)."""
    groups = aggregations["groups"]
    if not query.dimensions:
        return [((), _metric_values(groups, query.metrics))], None
    rows: list[Row] = []
    starts = query.bucket_starts
    for bucket in groups.get("buckets", []):
        keys: list[Any] = []
        for index, dim in enumerate(query.dimensions):
            value = bucket["key"][f"d{index}"]
            if dim.interval:
                slot = max(bisect_right(starts, int(value)) - 1, 0)
                value = starts[slot]
            elif dim.field is not None and dim.field.kind == "boolean" and value is not None:
                value = value in (True, 1, "true")
            keys.append(value)
        rows.append((tuple(keys), _metric_values(bucket, query.metrics)))
    after = groups.get("after_key") if len(groups.get("buckets", [])) else None
    return rows, after


# --- related items (issue 25): baskets shared with an item ------------------------------
#
# Three searches: the item's baskets (terms on visit.id, and on visitor.id for events without
# a visit), the other items in those baskets (terms on item.id with the baskets counted by
# cardinality), and the baskets of the most frequent of them. A basket counted for an item is
# a visit it is in plus a visitor's day it is in without a visit: the two are disjoint.

BASKET_SAMPLE = 10_000  # the item's baskets read (more: the most active ones, and inexact)
OTHER_ITEMS = 1_000  # items sharing baskets read in the second search, by events


def _without_visit() -> dict[str, Any]:
    return {"bool": {"must_not": [{"exists": {"field": F.VISIT_ID}}]}}


def _basket_aggs(visits: bool) -> dict[str, Any]:
    """Per bucket: distinct visits (``v``) and distinct visitors' days without a visit."""
    card = {"precision_threshold": CARDINALITY_PRECISION}
    days = {"cardinality": {"field": F.VISITOR_ID, **card}}
    if not visits:
        return {"d": days}
    return {
        "v": {"cardinality": {"field": F.VISIT_ID, **card}},
        "d": {"filter": _without_visit(), "aggs": {"n": days}},
    }


def _basket_count(bucket: dict[str, Any]) -> int:
    days = bucket["d"]
    count = int(days["n"]["value"] if "n" in days else days["value"])
    return count + int(bucket["v"]["value"]) if "v" in bucket else count


def _with(where: dict[str, Any], *clauses: dict[str, Any], must_not: Any = ()) -> dict[str, Any]:
    inner = dict(where["bool"])
    inner["filter"] = [*inner["filter"], *clauses]
    if must_not:
        inner["must_not"] = list(must_not)
    return {"bool": inner}


def compile_item_baskets(query: BasketQuery) -> dict[str, Any]:
    """The item's baskets: its visits, and its visitors' days without a visit."""
    days = {"terms": {"field": F.VISITOR_ID, "size": BASKET_SAMPLE}}
    aggs: dict[str, Any] = {}
    if query.visits:
        aggs["v"] = {"terms": {"field": F.VISIT_ID, "size": BASKET_SAMPLE}}
        aggs["d"] = {"filter": _without_visit(), "aggs": {"k": days}}
    else:
        aggs["d"] = {"filter": {"match_all": {}}, "aggs": {"k": days}}
    where = compile_where(query.where)
    return {
        "size": 0,
        "track_total_hits": False,
        "query": _with(where, {"term": {F.ITEM_ID: query.item}}),
        "aggs": aggs,
    }


def read_item_baskets(aggregations: dict[str, Any]) -> tuple[list[str], list[str], bool]:
    """``(visits, visitors' days, complete)`` of the first search."""
    visits = [b["key"] for b in aggregations.get("v", {}).get("buckets", [])]
    days_agg = aggregations["d"]["k"]
    days = [b["key"] for b in days_agg["buckets"]]
    complete = days_agg.get("sum_other_doc_count", 0) == 0 and (
        aggregations.get("v", {}).get("sum_other_doc_count", 0) == 0
    )
    return visits, days, complete


def _in_baskets(visits: list[str], days: list[str], with_visits: bool) -> dict[str, Any]:
    should: list[dict[str, Any]] = []
    if visits:
        should.append({"terms": {F.VISIT_ID: visits}})
    if days:
        day_terms: dict[str, Any] = {"terms": {F.VISITOR_ID: days}}
        should.append(
            {"bool": {"filter": [day_terms], "must_not": [{"exists": {"field": F.VISIT_ID}}]}}
            if with_visits
            else day_terms
        )
    return {"bool": {"should": should, "minimum_should_match": 1}}


def compile_other_items(query: BasketQuery, visits: list[str], days: list[str]) -> dict[str, Any]:
    """The other items in the item's baskets, each with the baskets it shares."""
    where = compile_where(query.where)
    terms = {"field": F.ITEM_ID, "size": max(OTHER_ITEMS, query.candidates)}
    return {
        "size": 0,
        "track_total_hits": False,
        "query": _with(
            where,
            _in_baskets(visits, days, query.visits),
            must_not=[{"term": {F.ITEM_ID: query.item}}],
        ),
        "aggs": {"items": {"terms": terms, "aggs": _basket_aggs(query.visits)}},
    }


def compile_popularity(query: BasketQuery, items: list[str]) -> dict[str, Any]:
    """The baskets each of ``items`` is in."""
    where = compile_where(query.where)
    visitor = {"exists": {"field": F.VISITOR_ID}}
    terms = {"field": F.ITEM_ID, "size": len(items)}
    return {
        "size": 0,
        "track_total_hits": False,
        "query": _with(where, {"terms": {F.ITEM_ID: items}}, visitor),
        "aggs": {"items": {"terms": terms, "aggs": _basket_aggs(query.visits)}},
    }


def read_basket_counts(aggregations: dict[str, Any]) -> dict[str, int]:
    """Baskets per item of the second or third search."""
    return {b["key"]: _basket_count(b) for b in aggregations["items"]["buckets"]}
