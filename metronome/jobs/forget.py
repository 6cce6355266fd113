"""``metronome forget``: delete the events that match a filter, on either store.

The filter is the ``filters`` list of ``POST /query`` (so it is validated the same way,
against the index templates), over all time unless a range is given; crawlers are
included, because forgetting means every matching event. Elasticsearch has no
delete-by-query in every distribution, so matching ids are searched and bulk-deleted in
rounds until none is left; the embedded store runs one ``DELETE``.

Visit summaries (dataset ``visits``, issue 25) hold a visit's visitor id, entry fields and
pages, so they go with the events: :func:`visits_of` finds the visits that hold a
matching event (before the events go), and :func:`forget_visits` deletes their summaries,
and also the summaries the filters match themselves when they name only a visitor or a
site (summaries whose events are already gone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from metronome.errors import InvalidQuery
from metronome.events import fields as F
from metronome.reports.catalog import ALIASES, resolve
from metronome.reports.query import for_site, parse_query
from metronome.reports.timebuckets import LATEST_MS
from metronome.store.base import Store
from metronome.store.query import BoolNode, DimensionSpec, GroupQuery, Leaf, MetricSpec

__all__ = ["forget", "forget_query", "forget_visits", "summaries_query", "visits_of"]

_PAGE = 1000  # visit ids read, and summaries deleted, per round

ALL_TIME = {"from": "0", "to": str(LATEST_MS)}  # epoch ms 0 .. the latest a query takes


def forget_query(
    filters: list[Any],
    source: str = "all",
    time_range: dict[str, str] | None = None,
    site: str | None = None,
) -> GroupQuery:
    """The documents to delete (of ``site`` only, when given), validated like a
    ``/query`` (raises InvalidQuery)."""
    body = {
        "source": source,
        "filters": filters,
        "range": time_range or ALL_TIME,
        "bots": "include",
    }
    query = parse_query(body)
    if site is not None:
        query = for_site(query, site)
    return query.group


async def forget(store: Store, query: GroupQuery, *, dry_run: bool = False) -> int:
    """Delete (or with ``dry_run`` only count) the matching documents; how many."""
    if dry_run:
        rows = await store.groups(
            GroupQuery(
                query.datasets,
                query.start_ms,
                query.end_ms,
                query.tz,
                (),
                (),
                parse_query({"metrics": ["events"]}).group.metrics,
                query.filter,
            ),
            after=None,
            limit=1,
        )
        return int(rows[0][1][0]) if rows else 0
    return await store.delete_matching(query)


def summaries_query(
    filters: list[Any], time_range: dict[str, str] | None = None, site: str | None = None
) -> GroupQuery | None:
    """The visit summaries ``filters`` match themselves (by the visit's start) when they
    name only a visitor or a site (what a summary holds as its events do), else None."""
    names: set[str] = set()
    todo = list(filters)
    while todo:
        raw = todo.pop()
        if not isinstance(raw, list) or len(raw) < 2:
            return None
        if raw[0] in ("and", "or") and isinstance(raw[1], list):
            todo.extend(raw[1])
        elif raw[0] == "not":
            todo.append(raw[1])
        else:
            names.add(ALIASES.get(str(raw[1]), str(raw[1])))
    if not names or names - {F.VISITOR_ID, F.SITE_ID}:
        return None
    try:
        return forget_query(filters, "visits", time_range, site)
    except InvalidQuery:
        return None


async def visits_of(store: Store, query: GroupQuery) -> set[str]:
    """The ids of the visits that hold a document of ``query``."""
    if F.VISITS_DATASET in query.datasets:
        return set()
    dimension = resolve(F.VISIT_ID, query.datasets, "dimension")
    in_a_visit = Leaf("matches", resolve(F.VISIT_ID, query.datasets, "filter"), ("*",))
    where = in_a_visit if query.filter is None else BoolNode("and", (query.filter, in_a_visit))
    group = dataclasses.replace(
        query,
        bucket_starts=(),
        dimensions=(DimensionSpec(dimension.name, field=dimension),),
        metrics=(MetricSpec("events", "count"),),
        filter=where,
    )
    found: set[str] = set()
    after: tuple[Any, ...] | None = None
    while True:
        rows = await store.groups(group, after=after, limit=_PAGE)
        found.update(str(keys[0]) for keys, _ in rows if keys[0] is not None)
        if len(rows) < _PAGE:
            return found
        after = rows[-1][0]


async def forget_visits(
    store: Store,
    visit_ids: Iterable[str],
    matching: GroupQuery | None = None,
    *,
    dry_run: bool = False,
) -> int:
    """Delete the summaries of ``visit_ids`` and those ``matching`` selects; how many
    (with ``dry_run``: how many visits ``visit_ids`` names, deleting nothing)."""
    ids = sorted(set(visit_ids))
    if dry_run:
        return len(ids)
    every = forget_query([], "visits")
    ref = resolve(F.VISIT_ID, every.datasets, "filter")
    removed = 0
    for at in range(0, len(ids), _PAGE):
        chunk = Leaf("is", ref, tuple(ids[at : at + _PAGE]))
        removed += await store.delete_matching(dataclasses.replace(every, filter=chunk))
    if matching is not None:
        removed += await store.delete_matching(matching)
    return removed
