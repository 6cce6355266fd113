"""Journeys: where visits came from and went next, as plans of ``/query`` requests.

``transitions`` (``GET /reports/transitions?item=...``) answers, for one page (an item id,
or a path where a page has none), from the visit fields the shipper writes
(:mod:`metronome.pipeline.visits`):

- before: the page views of it grouped by ``visit.prev`` (the page the visitor was on),
  and the visits that entered on it grouped by their source (the external referrer's
  host, or ``entry`` for a visit with none);
- after: the page views whose ``visit.prev`` is it, grouped by their page, and the visits
  that left from it (``exit``).

Each side comes with counts and shares of its total.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from metronome.events import fields as F

__all__ = ["ENTRY", "EXIT", "page_filter", "page_views", "transitions_plan"]

Answer = dict[str, Any]
Body = dict[str, Any]
ENTRY = "entry"  # a visit began here with no external referrer
EXIT = "exit"  # a visit ended here
_LIMIT = 10_000


def page_views() -> list[Any]:
    """Page views: view events, and access-log requests without another event."""
    return ["or", [["is", "event", ["view"]], ["not", ["matches", "event", ["*"]]]]]


def page_filter(field_item: str, field_path: str, page: str) -> list[Any]:
    """Documents of ``page``: its item id, or its path on documents without an item."""
    return [
        "or",
        [
            ["is", field_item, [page]],
            ["and", [["is", field_path, [page]], ["not", ["matches", field_item, ["*"]]]]],
        ],
    ]


def transitions_plan(
    page: str, body: Body
) -> tuple[dict[str, Body], Callable[[Mapping[str, Answer]], Answer]]:
    """``body`` has the range and tz; the parts and how to shape them."""
    common: Body = {k: body[k] for k in ("range", "tz") if k in body}
    queries: dict[str, Body] = {
        "before": {
            **common,
            "source": "all",
            "metrics": ["events"],
            "dimensions": [F.VISIT_PREV],
            "filters": [
                page_filter(F.ITEM_ID, F.URL_PATH, page),
                page_views(),
                ["matches", F.VISIT_PREV, ["*"]],
            ],
            "limit": _LIMIT,
        },
        "entries": {
            **common,
            "source": "visits",
            "metrics": ["visits"],
            "dimensions": [F.VISIT_SOURCE],
            "filters": [["is", F.VISIT_ENTRY, [page]]],
            "limit": _LIMIT,
        },
        "after": {
            **common,
            "source": "all",
            "metrics": ["events"],
            "dimensions": [F.ITEM_ID, F.URL_PATH],
            "filters": [["is", F.VISIT_PREV, [page]], page_views()],
            "limit": _LIMIT,
        },
        "exits": {
            **common,
            "source": "visits",
            "metrics": ["visits"],
            "filters": [["is", F.VISIT_EXIT, [page]]],
        },
    }

    def shape(answers: Mapping[str, Answer]) -> Answer:
        before: dict[str, int] = {}
        for row in answers["before"]["results"]:
            _add(before, str(row["dimensions"][0]), row["metrics"][0])
        for row in answers["entries"]["results"]:
            source = row["dimensions"][0]
            _add(
                before,
                ENTRY if source in (None, F.VISIT_DIRECT) else str(source),
                row["metrics"][0],
            )
        after: dict[str, int] = {}
        for row in answers["after"]["results"]:
            item, path = row["dimensions"]
            _add(after, str(item if item is not None else path), row["metrics"][0])
        exits = sum(row["metrics"][0] or 0 for row in answers["exits"]["results"])
        if exits:
            _add(after, EXIT, exits)
        return {
            "report": "transitions",
            "item": page,
            "query": {**common, "item": page},
            "before": _ranked(before),
            "after": _ranked(after),
        }

    return queries, shape


def _add(counts: dict[str, int], key: str, value: Any) -> None:
    counts[key] = counts.get(key, 0) + int(value or 0)


def _ranked(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "total": total,
        "rows": [
            {"page": key, "count": count, "share": round(count / total, 4) if total else 0.0}
            for key, count in rows
        ],
    }
