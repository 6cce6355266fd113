"""``metronome forget``: delete the events that match a filter, on either store.

The filter is the ``filters`` list of ``POST /query`` (so it is validated the same way,
against the index templates), over all time unless a range is given; crawlers are
included, because forgetting means every matching event. Elasticsearch has no
delete-by-query in every distribution, so matching ids are searched and bulk-deleted in
rounds until none is left; the embedded store runs one ``DELETE``.
"""

from __future__ import annotations

from typing import Any

from metronome.reports.query import for_site, parse_query
from metronome.reports.timebuckets import LATEST_MS
from metronome.store.base import Store
from metronome.store.query import GroupQuery

__all__ = ["forget", "forget_query"]

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
