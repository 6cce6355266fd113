"""Error reports (issue 25), as plans of ``/query`` requests over ``error`` ticks.

- ``errors``: per page (``url.path``) and time bucket, the errors, the page views and the
  error rate: errors per 1,000 page views (None for a bucket without views). Only pages
  with at least one error in the range are listed; one query (events per bucket, path and
  event, for ``error`` and ``view``) answers it on either store.
- ``error-groups``: per group (``error.fingerprint``, made at ingestion by
  :mod:`metronome.events.errors`): its name, the errors, the visitors affected, when it was
  first and last seen, and how many pages and browsers it was seen on; most frequent
  first. With ``group=<fingerprint>`` the answer also lists that group's pages and
  browsers with their counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from metronome.errors import InvalidParameter
from metronome.events import fields as F

__all__ = ["ERROR_EVENT", "error_groups_plan", "errors_plan"]

Answer = dict[str, Any]
Body = dict[str, Any]
Shape = Callable[[Mapping[str, Answer]], Answer]
ERROR_EVENT = "error"
VIEW_EVENT = "view"
PER_VIEWS = 1000
_FINGERPRINT_CHARS = 16


def _meta(answer: Answer, **extra: Any) -> dict[str, Any]:
    meta = answer["meta"]
    return {"range": meta["range"], "tz": meta["tz"], **extra}


def errors_plan(body: Body) -> tuple[dict[str, Body], Shape]:
    """``body`` has the range, tz, bots, ``interval`` and ``path`` (None: every page)."""
    interval = body.pop("interval")
    path = body.pop("path", None)
    body.pop("limit", None)
    filters: list[Any] = [["is", "event", [ERROR_EVENT, VIEW_EVENT]]]
    if path:
        filters.append(["is", "path", [path]])
    main = {
        **body,
        "source": "ticks",
        "metrics": ["events"],
        "dimensions": [f"time:{interval}", "path", "event"],
        "filters": filters,
        "limit": 10_000,
    }

    def shape(answers: Mapping[str, Answer]) -> Answer:
        cells: dict[tuple[str, Any], dict[str, int]] = {}
        with_errors: set[Any] = set()
        for row in answers["main"]["results"]:
            time, page, event = row["dimensions"]
            count = row["metrics"][0] or 0
            cells.setdefault((time, page), {ERROR_EVENT: 0, VIEW_EVENT: 0})[event] = count
            if event == ERROR_EVENT and count:
                with_errors.add(page)
        results = []
        for (time, page), cell in cells.items():
            if page not in with_errors:
                continue
            errors, views = cell[ERROR_EVENT], cell[VIEW_EVENT]
            rate = round(errors * PER_VIEWS / views, 3) if views else None
            results.append({"dimensions": [time, page], "metrics": [errors, views, rate]})
        results.sort(key=lambda r: (r["dimensions"][0], str(r["dimensions"][1])))
        meta = _meta(
            answers["main"],
            dimensions=[f"time:{interval}", F.URL_PATH],
            metrics=["errors", "views", "errors_per_1000_views"],
            rows=len(results),
        )
        return {"report": "errors", "results": results, "meta": meta}

    return {"main": main}, shape


GROUP_METRIC_NAMES = [
    "errors",
    "visitors",
    "first_seen",
    "last_seen",
    "pages",
    "browsers",
]


def error_groups_plan(body: Body) -> tuple[dict[str, Body], Shape]:
    """``body`` has the range, tz, bots, limit, after and ``group`` (a fingerprint, or
    None)."""
    group = body.pop("group", None)
    errors_only: list[Any] = [["is", "event", [ERROR_EVENT]]]
    if group is not None:
        if not group or len(group) > _FINGERPRINT_CHARS * 4:
            raise InvalidParameter(
                "'group' is an error group's fingerprint, as error-groups lists it",
                parameter="group",
            )
        errors_only = [*errors_only, ["is", F.ERROR_FINGERPRINT, [group]]]
    main = {
        **body,
        "source": "ticks",
        "metrics": [
            "events",
            "visitors",
            "first_seen",
            "last_seen",
            {"distinct": "path"},
            {"distinct": "browser"},
        ],
        "dimensions": [F.ERROR_FINGERPRINT, F.ERROR_GROUP],
        "filters": errors_only,
        "order_by": [["events", "desc"], ["last_seen", "desc"]],
        "limit": body.get("limit", 20),
    }
    queries = {"main": main}
    if group is not None:
        for part, dimension in (("pages", "path"), ("browsers", "browser")):
            queries[part] = {
                "range": body["range"],
                **{k: body[k] for k in ("tz", "bots") if k in body},
                "source": "ticks",
                "metrics": ["events", "visitors"],
                "dimensions": [dimension],
                "filters": errors_only,
                "limit": 100,
            }

    def shape(answers: Mapping[str, Answer]) -> Answer:
        results = [
            {
                "fingerprint": row["dimensions"][0],
                "group": row["dimensions"][1],
                **dict(zip(GROUP_METRIC_NAMES, row["metrics"], strict=True)),
            }
            for row in answers["main"]["results"]
        ]
        if group is not None:
            for part in ("pages", "browsers"):
                listed = [
                    {
                        "name": row["dimensions"][0],
                        "errors": row["metrics"][0],
                        "visitors": row["metrics"][1],
                    }
                    for row in answers[part]["results"]
                ]
                for result in results:
                    result[f"{part}_affected"] = listed
        meta = _meta(answers["main"], rows=len(results), next=answers["main"]["meta"]["next"])
        return {"report": "error-groups", "results": results, "meta": meta}

    return queries, shape
