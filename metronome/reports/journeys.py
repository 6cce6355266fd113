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

Funnels and flows (``POST /query`` on ``"source": "visits"`` with ``"funnel"`` or
``"flow"``) read the visit summaries of the query (its range, filters and site) in time
order and walk their ordered pages (``visit.items`` at ``visit.offsets_ms``): one code path
for both stores. At most :data:`MAX_VISITS` summaries are read; ``meta.truncated`` says
when there were more.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from metronome.events import fields as F
from metronome.reports.catalog import resolve
from metronome.store.base import Store
from metronome.store.query import BoolNode, FilterNode, GroupQuery, Leaf

__all__ = [
    "ENTRY",
    "EXIT",
    "MAX_STEP_EVENTS",
    "MAX_VISITS",
    "flow",
    "funnel",
    "page_filter",
    "page_views",
    "run_journey",
    "step_events",
    "transitions_plan",
]

Answer = dict[str, Any]
Body = dict[str, Any]
ENTRY = "entry"  # a visit began here with no external referrer
EXIT = "exit"  # a visit ended here
_LIMIT = 10_000
SOURCES_EVENTS = ("ticks", "logs")  # what a funnel's steps on events read (source "all")


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


# --- funnels and flows, from visit summaries ------------------------------------------

MAX_VISITS = 100_000
MAX_STEP_EVENTS = 100_000  # events read per funnel step on events
_TOP_DROPS = 5
Entry = tuple[int, str | None, frozenset[int]]
"""A moment of a visit: when (epoch ms), the page viewed (None: no page view), and which
of a funnel's steps on events the event there matches."""
Path = list[Entry]  # in time order


def _path(summary: dict[str, Any]) -> Path:
    visit = summary.get("visit") or {}
    start = int(visit.get("start") or 0)
    items = visit.get("items") or []
    offsets = visit.get("offsets_ms") or []
    return [(start + int(o), str(p), frozenset()) for o, p in zip(offsets, items, strict=False)]


def _ms(value: Any) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


def _event_page(doc: dict[str, Any]) -> str | None:
    """The page an event is a view of (as the visits name pages), or None."""
    event = doc.get("event") or {}
    if event.get("action") not in (None, "view"):
        return None
    page = (doc.get("item") or {}).get("id") or (doc.get("url") or {}).get("path")
    return str(page) if page else None


StepEvents = dict[str, dict[str, tuple[int, str | None, set[int]]]]
"""By visit id, by event id: an event's time, page, and the funnel steps it matches."""


def _with_events(path: Path, events: dict[str, tuple[int, str | None, set[int]]]) -> Path:
    """``path`` with the visit's step events placed in it: an event that is a page view
    already there (the same page at the same moment) marks that entry; others are added."""
    entries = list(path)
    for at, page, matched in sorted(events.values(), key=lambda e: (e[0], e[1] or "")):
        same = next(
            (i for i, e in enumerate(entries) if e[0] == at and e[1] == page and page), None
        )
        if same is not None:
            entries[same] = (at, page, entries[same][2] | matched)
        else:
            entries.append((at, page, frozenset(matched)))
    entries.sort(key=lambda e: (e[0], e[1] is None))  # stable: pages first at one moment
    return entries


def _units(summaries: list[dict[str, Any]], within: str, events: StepEvents) -> list[Path]:
    """One path per visit, or per visitor (their visits' paths joined) for a window."""
    paths: list[tuple[str, Path]] = []
    for summary in summaries:
        path = _path(summary)
        visit_id = str((summary.get("visit") or {}).get("id") or "")
        if visit_id in events:
            path = _with_events(path, events[visit_id])
        paths.append((str((summary.get("visitor") or {}).get("id") or ""), path))
    if within == "visit":
        return [p for _, p in paths]
    by_visitor: dict[str, Path] = {}
    for visitor, path in paths:
        by_visitor.setdefault(visitor, []).extend(path)
    return [sorted(p, key=lambda e: (e[0], e[1] is None)) for p in by_visitor.values()]


def _window_ms(within: str) -> int | None:
    found = re.fullmatch(r"([0-9]+)([hd])", within)
    if not found:
        return None
    return int(found[1]) * (3_600_000 if found[2] == "h" else 86_400_000)


def _matches(entry: Entry, n: int, step: dict[str, Any]) -> bool:
    if _on_events(step):
        return n in entry[2]
    return bool(entry[1] == step["page"])


def _on_events(step: dict[str, Any]) -> bool:
    return "event" in step or "filters" in step


def _walk(path: Path, steps: list[dict[str, Any]], window: int | None) -> list[int]:
    """The indexes in ``path`` of the steps reached, from the start that reaches most."""
    best: list[int] = []
    for first, entry in enumerate(path):
        if not _matches(entry, 0, steps[0]):
            continue
        at = entry[0]
        reached = [first]
        for n, step in enumerate(steps[1:], start=1):
            last = reached[-1]
            if step["next"]:
                following = last + 1
                ok = following < len(path) and _matches(path[following], n, step)
                candidate = following if ok else None
            else:
                candidate = next(
                    (i for i in range(last + 1, len(path)) if _matches(path[i], n, step)), None
                )
            if candidate is None or (window is not None and path[candidate][0] - at > window):
                break
            reached.append(candidate)
        if len(reached) > len(best):
            best = reached
        if len(best) == len(steps):
            break
    return best


def _went(path: Path, after: int) -> str:
    """The next page viewed from ``after`` on, or ``exit``."""
    return next((str(e[1]) for e in path[after:] if e[1] is not None), EXIT)


def funnel(
    summaries: list[dict[str, Any]], spec: dict[str, Any], events: StepEvents | None = None
) -> dict[str, Any]:
    """Per step: units reaching it, conversion from the previous step and from the start,
    the median time from the previous step, and where those who stopped went instead.
    ``events``: the visits' events that match the steps on events."""
    steps: list[dict[str, Any]] = spec["steps"]
    within = spec["within"]
    window = _window_ms(within)
    reached = [0] * len(steps)
    times: list[list[int]] = [[] for _ in steps]
    drops: list[dict[str, int]] = [{} for _ in steps]
    for path in _units(summaries, within, events or {}):
        walked = _walk(path, steps, window)
        for n, index in enumerate(walked):
            reached[n] += 1
            if n:
                times[n].append(path[index][0] - path[walked[n - 1]][0])
        if walked and len(walked) < len(steps):
            went = _went(path, walked[-1] + 1)
            counts = drops[len(walked)]
            counts[went] = counts.get(went, 0) + 1
    rows = []
    for n, step in enumerate(steps):
        previous = reached[n - 1] if n else reached[0]
        rows.append(
            {
                "step": n + 1,
                **step,
                "reached": reached[n],
                "from_previous": round(reached[n] / previous, 4) if previous else None,
                "from_start": round(reached[n] / reached[0], 4) if reached[0] else None,
                "median_ms_from_previous": statistics.median(times[n]) if times[n] else None,
                "dropped_to": [
                    {"page": page, "count": count}
                    for page, count in sorted(drops[n].items(), key=lambda kv: (-kv[1], kv[0]))[
                        :_TOP_DROPS
                    ]
                ],
            }
        )
    unit = "visits" if within == "visit" else "visitors"
    return {"unit": unit, "within": within, "steps": rows}


async def step_events(
    store: Store,
    summaries: list[dict[str, Any]],
    tz: str,
    steps: tuple[FilterNode | None, ...],
) -> tuple[StepEvents, bool]:
    """The events of ``summaries``' visits that match each step on events (one search per
    such step, over the visits' span, joined to them by visit id); and whether a step had
    more than :data:`MAX_STEP_EVENTS`."""
    found: StepEvents = {}
    if not summaries or not any(steps):
        return found, False
    visits = [s.get("visit") or {} for s in summaries]
    wanted = {str(v.get("id")) for v in visits}
    start = min(int(v.get("start") or 0) for v in visits)
    end = max(int(v.get("end") or 0) for v in visits) + 1
    events = SOURCES_EVENTS
    in_a_visit = Leaf("matches", resolve(F.VISIT_ID, events, "filter"), ("*",))
    truncated = False
    for n, node in enumerate(steps):
        if node is None:
            continue
        where = BoolNode("and", (node, in_a_visit))
        docs = await store.documents(
            GroupQuery(events, start, end, tz, (), (), (), where), limit=MAX_STEP_EVENTS + 1
        )
        truncated = truncated or len(docs) > MAX_STEP_EVENTS
        for doc in docs[:MAX_STEP_EVENTS]:
            visit_id = str((doc.get("visit") or {}).get("id") or "")
            if visit_id not in wanted:
                continue
            event_id = str((doc.get("event") or {}).get("id") or "")
            by_event = found.setdefault(visit_id, {})
            if event_id not in by_event:
                by_event[event_id] = (_ms(doc.get(F.TIMESTAMP)), _event_page(doc), set())
            by_event[event_id][2].add(n)
    return found, truncated


def flow(summaries: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """The paths of up to ``depth`` pages after the first view of ``page`` in each visit,
    as a tree: each node has its page, how many visits took it, and its children (a visit
    that ended goes to ``exit``)."""
    start, depth = spec["page"], spec["depth"]
    root: dict[str, Any] = {"page": start, "visits": 0, "next": {}}
    for summary in summaries:
        pages = [str(page) for _, page, _ in _path(summary)]
        if start not in pages:
            continue
        root["visits"] += 1
        node = root
        at = pages.index(start)
        for step in range(1, depth + 1):
            page = pages[at + step] if at + step < len(pages) else EXIT
            child = node["next"].setdefault(page, {"page": page, "visits": 0, "next": {}})
            child["visits"] += 1
            if page == EXIT:
                break
            node = child
    return _as_tree(root)


def _as_tree(node: dict[str, Any]) -> dict[str, Any]:
    children = sorted(node["next"].values(), key=lambda c: (-c["visits"], c["page"]))
    return {"page": node["page"], "visits": node["visits"], "next": [_as_tree(c) for c in children]}


async def run_journey(
    store: Store,
    group: GroupQuery,
    normalized: dict[str, Any],
    steps: tuple[FilterNode | None, ...] = (),
) -> Answer:
    """The answer to a ``/query`` request with a funnel or a flow (``steps``: a funnel's
    steps on events, None for those on pages)."""
    summaries = await store.documents(group, limit=MAX_VISITS + 1)
    truncated = len(summaries) > MAX_VISITS
    summaries = summaries[:MAX_VISITS]
    meta: dict[str, Any] = {"visits_read": len(summaries), "truncated": truncated}
    if "funnel" in normalized:
        events, more = await step_events(store, summaries, group.tz, steps)
        meta["truncated"] = truncated or more
        return {
            "funnel": funnel(summaries, normalized["funnel"], events),
            "meta": meta,
            "query": normalized,
        }
    return {"flow": flow(summaries, normalized["flow"]), "meta": meta, "query": normalized}
