"""A :class:`~metronome.reports.query.GroupQuery` as SQL for the embedded store.

Every value from the request is a bound parameter; field names come from the catalog
(index templates, or ``params.<name>`` with a checked name), so no user text is spliced
into SQL. Semantics follow the Elasticsearch compiler exactly: a document without the
field never matches a condition, parameters compare as text (numbers where numeric),
groups come back in composite-aggregation order (missing values first).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from metronome.events import fields as F
from metronome.store.query import (
    BasketCounts,
    BasketQuery,
    BoolNode,
    FieldRef,
    FilterNode,
    GroupQuery,
    Leaf,
    MetricSpec,
)

__all__ = [
    "condition_sql",
    "VISITOR_EXPR",
    "basket_sql",
    "filter_fields",
    "query_baskets",
    "delete_sql",
    "documents_sql",
    "install_functions",
    "json_path",
    "names_sql",
    "query_groups",
    "query_top",
]

Row = tuple[tuple[Any, ...], tuple[Any, ...]]

# document field -> column of the events table (the rest is read from the JSON document)
COLUMNS: dict[str, str] = {
    F.ITEM_ID: "item_id",
    F.EVENT_ACTION: "action",
    F.ITEM_FORMAT: "format",
    F.REFERRER_PAGE: "referrer_page",
    F.BOT: "bot",
    F.SITE_ID: "site_id",
    F.REFERRER_SPAM: "spam",
    F.TIMESTAMP: "ts",  # epoch ms, as Elasticsearch's min/max of a date read it
}
NOT_NULL_COLUMNS = frozenset({"bot", "site_id"})
"""Columns every row has (a document without the field is stored with the default)."""
_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def _to_number(value: Any) -> float | None:
    """A parameter's numeric value, as Elasticsearch's ``.num`` sub-field reads it."""
    if value is None or isinstance(value, bytes):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


class _Percentile:
    """Percentile with linear interpolation between the closest ranks."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.percent = 50.0

    def step(self, value: Any, percent: float) -> None:
        self.percent = percent
        if value is not None:
            self.values.append(float(value))

    def finalize(self) -> float | None:
        return percentile(self.values, self.percent)


def percentile(values: list[float], percent: float) -> float | None:
    if not values:
        return None
    values.sort()
    rank = percent / 100 * (len(values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def install_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions queries use: ``mnum`` (numeric value) and ``mpct`` (percentile)."""
    conn.create_function("mnum", 1, _to_number, deterministic=True)
    conn.create_aggregate("mpct", 2, _Percentile)  # type: ignore[arg-type]


def json_path(name: str) -> str:
    """The quoted SQL literal of a field's JSON path in ``doc``: ``'$."a"."b"'``."""
    path = "$" + "".join(f'."{part}"' for part in name.split("."))
    return "'" + path.replace("'", "''") + "'"


def _text(ref: FieldRef) -> str:
    """The field as stored text (keywords, parameters as Elasticsearch indexes them)."""
    if ref.name in COLUMNS:
        return COLUMNS[ref.name]
    path = json_path(ref.name)
    if ref.param:
        return (
            f"(CASE json_type(doc, {path}) WHEN 'true' THEN 'true' WHEN 'false'"
            f" THEN 'false' WHEN 'null' THEN NULL"
            f" ELSE CAST(json_extract(doc, {path}) AS TEXT) END)"
        )
    return f"json_extract(doc, {path})"


def _number(ref: FieldRef) -> str:
    if ref.param:
        return f"mnum(json_extract(doc, {json_path(ref.name)}))"
    return _text(ref)


def _glob(pattern: str) -> str:
    return pattern.replace("[", "[[]")


_TRUE = "1"
_FALSE = "0"


def _always(node: FilterNode) -> bool | None:
    """True or False when ``node`` is decided without reading a row: ``matches *`` on a
    column that is never NULL (every row has the field), and what follows from it."""
    if isinstance(node, Leaf):
        column = COLUMNS.get(node.field.name)
        if node.op == "matches" and "*" in node.values and column in NOT_NULL_COLUMNS:
            return True
        return None
    decided = [_always(item) for item in node.items]
    if node.op == "not":
        return None if decided[0] is None else not decided[0]
    if node.op == "and":
        return False if False in decided else True if all(decided) else None
    return True if True in decided else False if all(d is False for d in decided) else None


def _condition(node: FilterNode, args: list[Any], *, positive: bool = True) -> str:
    """SQL that is true exactly for the documents ``node`` matches.

    ``positive``: the condition is not under a NOT, so SQL's NULL (a missing field) may
    stand for false and the plain comparison is kept, which SQLite answers from an index.
    Under a NOT every comparison is made two-valued with COALESCE first.
    """
    decided = _always(node)
    if decided is not None:
        return _TRUE if decided else _FALSE
    if isinstance(node, BoolNode):
        if node.op == "not":
            return f"(NOT {_condition(node.items[0], args, positive=False)})"
        items = [item for item in node.items if _always(item) is None]
        parts = [_condition(item, args, positive=positive) for item in items]
        return "(" + f" {node.op.upper()} ".join(parts) + ")"
    assert isinstance(node, Leaf)
    column = COLUMNS.get(node.field.name)
    if node.op in ("gt", "lt"):
        args.append(node.values[0])
        test = f"{_number(node.field)} {'>' if node.op == 'gt' else '<'} ?"
    else:
        expr = _text(node.field)
        if node.op in ("is", "is_not"):
            args.extend(int(v) if isinstance(v, bool) else v for v in node.values)
            test = f"{expr} IN ({', '.join('?' for _ in node.values)})"
            if node.op == "is_not":
                if column in NOT_NULL_COLUMNS:
                    return f"{expr} NOT IN ({', '.join('?' for _ in node.values)})"
                return f"(NOT COALESCE({test}, 0))"
        elif node.op == "contains":
            args.extend(node.values)
            test = "(" + " OR ".join(f"instr({expr}, ?) > 0" for _ in node.values) + ")"
        else:
            args.extend(_glob(v) for v in node.values)
            test = "(" + " OR ".join(f"{expr} GLOB ?" for _ in node.values) + ")"
    if positive or column in NOT_NULL_COLUMNS:
        return test
    return f"COALESCE({test}, 0)"


def condition_sql(node: FilterNode, args: list[Any]) -> str:
    """SQL true exactly for the rows ``node`` matches, its values appended to ``args``."""
    return _condition(node, args)


def _metric_sql(metric: MetricSpec, args: list[Any]) -> str:
    ref = metric.field
    if metric.kind == "count":
        return "count(*)"
    assert ref is not None
    if metric.kind == "distinct":
        return f"count(DISTINCT {_text(ref)})"
    if metric.kind == "percentile":
        args.append(metric.percent)
        return f"mpct({_number(ref)}, ?)"
    function = "total" if metric.kind == "sum" else metric.kind
    return f"{function}({_number(ref)})"


def _composite_key(keys: tuple[Any, ...]) -> tuple[tuple[bool, Any], ...]:
    return tuple((value is not None, value) for value in keys)


def _where(query: GroupQuery) -> tuple[str, list[Any]]:
    where = [f"dataset IN ({', '.join('?' for _ in query.datasets)})", "ts >= ?", "ts < ?"]
    args: list[Any] = [*query.datasets, query.start_ms, query.end_ms]
    if query.filter is not None:
        where.append(_condition(query.filter, args))
    return " AND ".join(where), args


def names_sql(query: GroupQuery, under: str) -> tuple[str, list[Any]]:
    """The distinct keys of the object ``under`` in the documents of ``query``, sorted."""
    where, args = _where(query)
    return (
        f"SELECT DISTINCT j.key FROM events, json_each(events.doc, {json_path(under)}) AS j"
        f" WHERE {where} ORDER BY j.key",
        args,
    )


def documents_sql(query: GroupQuery, limit: int) -> tuple[str, list[Any]]:
    """The documents of ``query``, oldest first (ties by id), at most ``limit``."""
    where, args = _where(query)
    return f"SELECT doc FROM events WHERE {where} ORDER BY ts, id LIMIT ?", [*args, limit]


def delete_sql(query: GroupQuery) -> tuple[str, list[Any]]:
    """``DELETE`` of every document of ``query``, and its arguments."""
    where, args = _where(query)
    return f"DELETE FROM events WHERE {where}", args


def _group_sql(conn: sqlite3.Connection, query: GroupQuery) -> tuple[str, list[Any]]:
    """``SELECT k0.., metrics FROM events WHERE ... [GROUP BY k0..]`` and its arguments;
    metric columns are named ``m0``, ``m1``... (``m<i>e``/``m<i>t`` for an error rate).

    A ``last_sum``/``last_avg`` metric reads the rows through a window: each row is
    numbered within its group and instance, latest first (rows with the field first), and
    only the first of each counts."""
    select: list[str] = []
    keys: list[str] = []
    starts = query.bucket_starts
    for index, dim in enumerate(query.dimensions):
        if dim.interval:
            conn.create_function(
                "mbucket",
                1,
                lambda ts: starts[max(bisect_right(starts, ts) - 1, 0)],
                deterministic=True,
            )
            keys.append("mbucket(ts)")
        else:
            assert dim.field is not None
            keys.append(_text(dim.field))
        select.append(f"{keys[-1]} AS k{index}")
    metric_args: list[Any] = []
    windows: list[str] = []
    for index, metric in enumerate(query.metrics):
        if metric.kind == "error_rate":
            assert metric.field is not None
            column = _text(metric.field)
            select.append(
                f"sum(COALESCE({column} >= 500, 0)) AS m{index}e, count({column}) AS m{index}t"
            )
        elif metric.kind in ("last_sum", "last_avg"):
            assert metric.field is not None and metric.instance is not None
            value = _number(metric.field)
            instance = _text(metric.instance)
            partition = ", ".join([*keys, instance])
            windows.append(
                f"row_number() OVER (PARTITION BY {partition} ORDER BY ({value} IS NULL),"
                f" ts DESC, id DESC) AS r{index}"
            )
            function = "total" if metric.kind == "last_sum" else "avg"
            select.append(
                f"{function}(CASE WHEN r{index} = 1 AND {instance} IS NOT NULL"
                f" THEN {value} END) AS m{index}"
            )
        else:
            select.append(f"{_metric_sql(metric, metric_args)} AS m{index}")
    where, where_args = _where(query)
    if windows:
        source = f"(SELECT *, {', '.join(windows)} FROM events WHERE {where})"
        sql = f"SELECT {', '.join(select)} FROM {source}"
        args = [*where_args, *metric_args]
    else:
        sql = f"SELECT {', '.join(select)} FROM events WHERE {where}"
        args = [*metric_args, *where_args]
    if query.dimensions:
        sql += " GROUP BY " + ", ".join(f"k{i}" for i in range(len(query.dimensions)))
    return sql, args


def _rows(query: GroupQuery, cursor: Any) -> Iterator[Row]:
    dims = len(query.dimensions)
    boolean = [d.field is not None and d.field.kind == "boolean" for d in query.dimensions]
    for raw in cursor:
        keys = tuple(
            bool(v) if flag and v is not None else v
            for v, flag in zip(raw[:dims], boolean, strict=True)
        )
        yield keys, _values(raw[dims:], query.metrics)


def query_groups(
    conn: sqlite3.Connection,
    query: GroupQuery,
    after: tuple[Any, ...] | None,
    limit: int,
    compiled: tuple[str, list[Any]] | None = None,
) -> list[Row]:
    """Groups in composite order (keys ascending, missing first) after ``after``.

    ``compiled``: the query's grouping ``SELECT`` from elsewhere (the rollups)."""
    sql, args = compiled or _group_sql(conn, query)
    if query.dimensions:
        sql += " ORDER BY " + ", ".join(f"k{i}" for i in range(len(query.dimensions)))
        if after is None:
            sql += f" LIMIT {int(limit)}"
    rows: list[Row] = []
    after_key = None if after is None else _composite_key(after)
    for keys, values in _rows(query, conn.execute(sql, args)):
        if after_key is not None and _composite_key(keys) <= after_key:
            continue
        rows.append((keys, values))
        if len(rows) >= limit:
            break
    return rows


def query_top(
    conn: sqlite3.Connection,
    query: GroupQuery,
    metric: int,
    descending: bool,
    size: int,
    compiled: tuple[str, list[Any]] | None = None,
) -> list[Row]:
    """The first ``size`` groups of one dimension by metric ``metric`` (missing values
    smallest), ties by the key (missing first); ``compiled`` as in :func:`query_groups`."""
    sql, args = compiled or _group_sql(conn, query)
    direction = "DESC" if descending else "ASC"
    sql = f"SELECT * FROM ({sql}) ORDER BY m{metric} {direction}, k0 ASC LIMIT {int(size)}"
    return list(_rows(query, conn.execute(sql, args)))


def _values(raw: Sequence[Any], metrics: Sequence[MetricSpec]) -> tuple[Any, ...]:
    values: list[Any] = []
    position = 0
    for metric in metrics:
        if metric.kind == "error_rate":
            values.append((int(raw[position] or 0), int(raw[position + 1] or 0)))
            position += 2
        else:
            values.append(raw[position])
            position += 1
    return tuple(values)


VISITOR_EXPR = "visitor"
"""The visitor of a row (the column holds ``json_extract(doc, '$.visitor.id')``), as the
events table's visitor index is built on it."""


def basket_sql(visits: bool) -> str:
    """A row's basket: the visitor's day, or with ``visits`` its visit when it has one."""
    if not visits:
        return VISITOR_EXPR
    return f"COALESCE('v:' || json_extract(doc, {json_path(F.VISIT_ID)}), 'd:' || {VISITOR_EXPR})"


def filter_fields(node: FilterNode | None) -> set[str]:
    """The fields a filter reads (a parameter as ``params:<name>``)."""
    if node is None:
        return set()
    if isinstance(node, Leaf):
        return {f"params:{node.field.name}" if node.field.param else node.field.name}
    return {name for item in node.items for name in filter_fields(item)}


Popularity = Callable[[sqlite3.Connection, BasketQuery, list[str]], dict[str, int] | None]


def query_baskets(
    conn: sqlite3.Connection, query: BasketQuery, popularity: Popularity | None = None
) -> BasketCounts:
    """The baskets of ``query.item`` (through the item index), every event of their
    visitors (through the visitor index), and the baskets of the items found most often
    with it: from ``popularity`` (counts kept per day) when it answers, else through the
    item index again. No statement reads the whole range."""
    where, args = _where(query.where)
    basket = basket_sql(query.visits)
    mine = conn.execute(
        f"SELECT DISTINCT {VISITOR_EXPR}, {basket} FROM events WHERE {where} AND item_id = ?"
        f" AND {VISITOR_EXPR} IS NOT NULL",
        [*args, query.item],
    ).fetchall()
    baskets = {row[1] for row in mine}
    if not baskets:
        return BasketCounts(0, ())
    visitors = json.dumps(sorted({row[0] for row in mine}))
    together: dict[str, set[str]] = {}
    for other, key in conn.execute(
        f"SELECT item_id, {basket} FROM events WHERE {where}"
        f" AND {VISITOR_EXPR} IN (SELECT value FROM json_each(?))"
        " AND item_id IS NOT NULL AND item_id != ?",
        [*args, visitors, query.item],
    ):
        if key in baskets:
            together.setdefault(other, set()).add(key)
    ranked = sorted(
        ((item, len(keys)) for item, keys in together.items() if len(keys) >= query.min_support),
        key=lambda pair: (-pair[1], pair[0]),
    )[: query.candidates]
    if not ranked:
        return BasketCounts(len(baskets), ())
    candidates = [item for item, _ in ranked]
    found = popularity(conn, query, candidates) if popularity is not None else None
    if found is None:
        found = dict(
            conn.execute(
                f"SELECT item_id, count(DISTINCT {basket}) FROM events WHERE {where}"
                f" AND item_id IN (SELECT value FROM json_each(?)) AND {VISITOR_EXPR} IS NOT NULL"
                " GROUP BY item_id",
                [*args, json.dumps(candidates)],
            ).fetchall()
        )
    pairs = tuple((item, n, int(found.get(item, n))) for item, n in ranked)
    return BasketCounts(len(baskets), pairs)
