"""``GET /items/{id}/related``: the items most associated with an item.

Two items are associated when the same baskets hold both: a basket is a visit (``visit.id``,
when events carry one) or else a visitor's day (``visitor.id`` is salted per UTC day, so it
*is* a visitor's day). The store counts, for the item ``a`` and each other item ``b``,
``n_a`` (baskets with ``a``), ``n_b`` (baskets with ``b``) and ``n_ab`` (baskets with
both); :func:`score` ranks them:

    score = n_ab / sqrt(n_a * n_b)  *  n_ab / (n_ab + SHRINKAGE)

The first factor is the cosine of the two items' basket sets: it divides out popularity
(an item in every basket is found with everything, and its ``n_b`` is large), but only by
a square root, so it does not crown rare items the way lift (``n_ab * N / (n_a * n_b)``)
and PMI do when one or two baskets happen to hold both. The second factor shrinks scores
resting on few baskets toward zero (a pair seen twice is weaker evidence than a pair seen
fifty times at the same cosine). Cosine also needs no count of *all* baskets, so an answer
reads only the item's baskets and the candidates' own rows (indexes), never the whole
range. ``min_support`` (default 2) drops pairs seen in fewer baskets; every score comes
with the counts behind it. The benchmark ``python -m benchmarks.recommend`` measures it
against popularity and last week's next items.

Range, time zone, crawlers, the site and the event filter are those of ``/query``: the
request becomes a ``/query`` body, parsed by the one query model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metronome.errors import InvalidParameter, InvalidQuery
from metronome.reports.query import PRESETS, for_site, parse_query
from metronome.store.base import Store
from metronome.store.query import BasketQuery

__all__ = ["PARAMETERS", "SHRINKAGE", "RelatedRequest", "parse_related", "related_items", "score"]

SHRINKAGE = 5.0
CANDIDATES = 200  # items sharing the most baskets that are scored (the rest are not)
MAX_LIMIT = 100
MAX_EVENTS = 20
_WHOLE = re.compile(r"^[0-9]{1,6}$")

PARAMETERS: dict[str, str] = {
    "range": f"a preset: {PRESETS}; default 30d",
    "from": "start: a date (whole day), ISO 8601 or epoch ms; overrides range",
    "to": "end: a date (whole day included), ISO 8601 or epoch ms",
    "tz": "IANA time zone for dates; default UTC",
    "event": "only these events (view, download, ...), separated by commas; default all",
    "source": "ticks, logs or all (default)",
    "within": "visit (default: an event's visit when it has one, else the visitor's day)"
    " or day (always the visitor's day)",
    "min_support": "fewest baskets a pair must share, 1 to 1000000; default 2",
    "limit": f"most items, 1 to {MAX_LIMIT}; default 10",
    "bots": "exclude (default) or include known crawlers",
}


@dataclass(frozen=True, slots=True)
class RelatedRequest:
    item: str
    body: dict[str, Any]  # the /query request whose range and filters are the baskets'
    visits: bool
    min_support: int
    limit: int


def _whole(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not _WHOLE.match(text) or not 1 <= int(text) <= high:
        raise InvalidParameter(f"'{name}' is a whole number from 1 to {high}", parameter=name)
    return int(text)


def parse_related(item: str, params: Mapping[str, str]) -> RelatedRequest:
    """Check the URL's parameters (cheap: nothing is read yet)."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise InvalidParameter(
            f"unknown parameter {unknown[0]!r}; related items take {', '.join(PARAMETERS)}",
            parameter=unknown[0],
        )
    if not item or len(item) > 2048:
        raise InvalidParameter("the item is 1 to 2048 characters", parameter="id")
    within = params.get("within", "visit")
    if within not in ("visit", "day"):
        raise InvalidParameter("'within' is visit or day", parameter="within")
    source = params.get("source", "all")
    if source not in ("ticks", "logs", "all"):
        raise InvalidParameter("'source' is ticks, logs or all", parameter="source")
    body: dict[str, Any] = {"source": source, "metrics": ["events"]}
    if params.get("from"):
        body["range"] = {"from": params["from"], **({"to": params["to"]} if "to" in params else {})}
    elif params.get("to"):
        raise InvalidParameter("'to' needs 'from'", parameter="to")
    else:
        body["range"] = params.get("range", "30d")
    for name in ("tz", "bots"):
        if name in params:
            body[name] = params[name]
    events = [e.strip() for e in params.get("event", "").split(",") if e.strip()]
    if len(events) > MAX_EVENTS:
        raise InvalidParameter(f"'event' names at most {MAX_EVENTS} events", parameter="event")
    if events:
        body["filters"] = [["is", "event", events]]
    return RelatedRequest(
        item,
        body,
        within == "visit",
        _whole(params, "min_support", 2, 1_000_000),
        _whole(params, "limit", 10, MAX_LIMIT),
    )


def score(together: int, item_baskets: int, other_baskets: int) -> float:
    """Cosine of the two items' baskets, shrunk toward 0 when few baskets hold both."""
    if not together or not item_baskets or not other_baskets:
        return 0.0
    cosine = together / math.sqrt(item_baskets * other_baskets)
    return cosine * together / (together + SHRINKAGE)


_PARAMETER_OF = {"query.range": "range", "query.tz": "tz", "query.bots": "bots"}


async def related_items(store: Store, request: RelatedRequest, *, site_id: str) -> dict[str, Any]:
    """The answer: the related items, best first, each with its score and counts."""
    try:
        query = for_site(parse_query(request.body), site_id)
    except InvalidQuery as exc:
        part = str(exc.details.get("field", ""))
        name = next((p for prefix, p in _PARAMETER_OF.items() if part.startswith(prefix)), None)
        if name == "range" and ("from" in str(request.body.get("range"))):
            name = "from"
        head, _, rest = exc.message.partition(": ")
        raise InvalidParameter(
            f"'{name}': {rest}" if name and rest else exc.message, parameter=name
        ) from None
    counts = await store.baskets(
        BasketQuery(
            query.group,
            request.item,
            request.visits,
            request.min_support,
            max(CANDIDATES, request.limit),
        )
    )
    scored = sorted(
        (
            (score(together, counts.item_baskets, other), item, together, other)
            for item, together, other in counts.pairs
        ),
        key=lambda row: (-row[0], -row[2], row[1]),
    )[: request.limit]
    results = [
        {
            "item": item,
            "score": round(value, 6),
            "together": together,
            "item_baskets": counts.item_baskets,
            "other_baskets": other,
        }
        for value, item, together, other in scored
    ]
    meta = {
        "range": query.normalized["range"],
        "tz": query.normalized["tz"],
        "within": "visit" if request.visits else "day",
        "baskets": "an event's visit when it has one, else the visitor's day"
        if request.visits
        else "the visitor's day",
        "min_support": request.min_support,
        "item_baskets": counts.item_baskets,
        "score": f"n_ab / sqrt(n_a * n_b) * n_ab / (n_ab + {SHRINKAGE:g}): cosine of the"
        " items' baskets, shrunk when few baskets hold both",
        "exact": counts.exact,
        "rows": len(results),
    }
    return {"item": request.item, "results": results, "meta": meta}
