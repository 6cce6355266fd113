"""Reports on a platform's typed events and access logs, as plans of ``/query`` requests.

- ``storage-growth``: bytes added (``file.uploaded``) and removed (``file.deleted``, stored
  negative: see :mod:`metronome.events.typed`) per space and time bucket, with the running
  total since the first event;
- ``extractions``: ``extraction.queued``/``started``/``finished`` per bucket and the queue's
  length (queued minus finished since the first event) at each bucket's end;
- ``extraction-runtime``: ``runtime_ms`` percentiles of finished extractions per extractor;
- ``downloads-per-resource``: ``resource.download`` events and visitors per resource;
- ``concurrency``: requests in progress at once, from access logs with a duration;
- ``uptime``, ``response-times``, ``certificate-expiry``: health monitors' points.

A running total needs what came before the range: each such report also asks for the
totals from 1970 to the range's start (one more query), so the totals are the same whatever
range is asked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from metronome.errors import InvalidParameter
from metronome.reports.query import parse_query
from metronome.reports.timebuckets import (
    MAX_BUCKETS,
    bucket_count,
    bucket_label,
    floor_to_bucket,
    parse_zone,
)

__all__ = [
    "INTERVAL_SECONDS",
    "certificate_expiry_query",
    "response_times_query",
    "uptime_plan",
    "concurrency_plan",
    "downloads_query",
    "extraction_runtime_query",
    "extractions_plan",
    "storage_growth_plan",
]

Answer = dict[str, Any]
Body = dict[str, Any]
UPLOADED, DELETED = "file.uploaded", "file.deleted"
QUEUED, STARTED, FINISHED = "extraction.queued", "extraction.started", "extraction.finished"
INTERVAL_SECONDS = {"minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}


def _before(body: Body) -> Body:
    """``body`` over everything before its range (1970 up to its start), without time."""
    resolved = parse_query({"range": body.get("range", "30d"), "tz": body.get("tz", "UTC")})
    start = resolved.group.start_ms
    return {
        **body,
        "range": {"from": 0, "to": start if start > 0 else 1},
        "dimensions": [d for d in body["dimensions"] if not d.startswith("time:")],
        "limit": 10_000,
    }


def storage_growth_plan(
    body: Body,
) -> tuple[dict[str, Body], Callable[[Mapping[str, Answer]], Answer]]:
    """``body`` has the range, tz and interval; the parts and how to shape them."""
    interval = body.pop("interval")
    main = {
        **body,
        "source": "ticks",
        "metrics": [{"sum": "typed.bytes"}],
        "dimensions": [f"time:{interval}", "typed.space", "event"],
        "filters": [["is", "event", [UPLOADED, DELETED]]],
        "limit": 10_000,
    }

    def shape(answers: Mapping[str, Answer]) -> Answer:
        totals: dict[Any, float] = {}
        for row in answers["before"]["results"]:
            space, _ = row["dimensions"]
            totals[space] = totals.get(space, 0) + (row["metrics"][0] or 0)
        buckets: dict[tuple[str, Any], dict[str, float]] = {}
        for row in answers["main"]["results"]:
            time, space, event = row["dimensions"]
            value = row["metrics"][0] or 0
            part = buckets.setdefault((time, space), {"added": 0, "removed": 0})
            if event == UPLOADED:
                part["added"] += value
            else:
                part["removed"] -= value  # stored negative
        results = []
        for (time, space), part in sorted(
            buckets.items(), key=lambda kv: (str(kv[0][1]), kv[0][0])
        ):
            net = part["added"] - part["removed"]
            totals[space] = totals.get(space, 0) + net
            results.append(
                {
                    "time": time,
                    "space": space,
                    "added_bytes": _whole(part["added"]),
                    "removed_bytes": _whole(part["removed"]),
                    "net_bytes": _whole(net),
                    "total_bytes": _whole(totals[space]),
                }
            )
        results.sort(key=lambda r: (r["time"], str(r["space"])))
        return {"report": "storage-growth", "results": results, "meta": _meta(answers["main"])}

    return {"main": main, "before": _before(main)}, shape


def extractions_plan(
    body: Body,
) -> tuple[dict[str, Body], Callable[[Mapping[str, Answer]], Answer]]:
    interval = body.pop("interval")
    main = {
        **body,
        "source": "ticks",
        "metrics": ["events"],
        "dimensions": [f"time:{interval}", "event"],
        "filters": [["is", "event", [QUEUED, STARTED, FINISHED]]],
        "limit": 10_000,
    }

    def shape(answers: Mapping[str, Answer]) -> Answer:
        counts: dict[str, int] = {}
        for row in answers["before"]["results"]:
            (event,) = row["dimensions"]
            counts[event] = counts.get(event, 0) + row["metrics"][0]
        queue = counts.get(QUEUED, 0) - counts.get(FINISHED, 0)
        buckets: dict[str, dict[str, int]] = {}
        for row in answers["main"]["results"]:
            time, event = row["dimensions"]
            buckets.setdefault(time, {QUEUED: 0, STARTED: 0, FINISHED: 0})[event] = row["metrics"][
                0
            ]
        results = []
        for time in sorted(buckets):
            part = buckets[time]
            queue += part[QUEUED] - part[FINISHED]
            results.append(
                {
                    "time": time,
                    "queued": part[QUEUED],
                    "started": part[STARTED],
                    "finished": part[FINISHED],
                    "queue_length": queue,
                }
            )
        return {"report": "extractions", "results": results, "meta": _meta(answers["main"])}

    return {"main": main, "before": _before(main)}, shape


def extraction_runtime_query(body: Body) -> Body:
    return {
        **body,
        "source": "ticks",
        "metrics": [
            "events",
            {"p50": "typed.runtime_ms"},
            {"p95": "typed.runtime_ms"},
            {"p99": "typed.runtime_ms"},
            {"avg": "typed.runtime_ms"},
            {"max": "typed.runtime_ms"},
        ],
        "dimensions": ["typed.extractor"],
        "filters": [["is", "event", [FINISHED]]],
        "order_by": [["p95:typed.runtime_ms", "desc"]],
    }


def downloads_query(body: Body) -> Body:
    return {
        **body,
        "source": "ticks",
        "metrics": ["events", "visitors"],
        "dimensions": ["typed.resource"],
        "filters": [["is", "event", ["resource.download"]]],
        "order_by": [["events", "desc"]],
    }


def concurrency_plan(
    body: Body, filters: Sequence[Any] = ()
) -> tuple[dict[str, Body], Callable[[Mapping[str, Answer]], Answer]]:
    """Requests in progress per bucket from access logs that log a duration.

    A request occupies ``[time - duration, time]``; summed over the requests that end in a
    bucket, the time they occupied divided by the bucket's length is the mean number in
    progress at once (Little's law; exact when no request straddles a bucket's edge).
    ``peak_concurrency`` is the same mean over the busiest minute of the bucket (the
    busiest hour when the range holds more than 10,000 minutes; equal to the mean for
    minute buckets), so a burst that an hour's mean hides still shows. Lines without a
    duration are counted in ``requests_without_duration`` only: they say a request came,
    not how long it held a connection. ``filters``: more filters for both (the named
    report leaves API calls out with them).
    """
    interval = body.pop("interval")
    if interval not in INTERVAL_SECONDS:
        raise InvalidParameter("'interval' is minute, hour, day or week", parameter="interval")
    seconds = INTERVAL_SECONDS[interval]
    timed: Body = {
        **body,
        "source": "logs",
        "filters": [["gt", "duration", -1], *filters],
        "bots": "include",  # crawlers load the server too
        "limit": 10_000,
    }
    main = {
        **timed,
        "metrics": ["events", {"sum": "duration"}, {"max": "duration"}],
        "dimensions": [f"time:{interval}"],
    }
    missing = {
        **body,
        "source": "logs",
        "metrics": ["events"],
        "dimensions": [f"time:{interval}"],
        "filters": [["not", ["gt", "duration", -1]], *filters],
        "bots": "include",
        "limit": 10_000,
    }
    queries = {"main": main, "missing": missing}
    resolved = parse_query({"range": body.get("range", "30d"), "tz": body.get("tz", "UTC")})
    zone = parse_zone("tz", resolved.group.tz)
    start_ms, end_ms = resolved.group.start_ms, resolved.group.end_ms
    peak = next(
        (
            finer
            for finer in ("minute", "hour")
            if INTERVAL_SECONDS[finer] < seconds
            and bucket_count(start_ms, end_ms, finer, zone) <= MAX_BUCKETS
        ),
        None,
    )
    if peak is not None:
        queries["peaks"] = {
            **timed,
            "metrics": [{"sum": "duration"}],
            "dimensions": [f"time:{peak}"],
        }

    def peaks(answers: Mapping[str, Answer]) -> dict[str, float]:
        """The busiest ``peak`` bucket's mean concurrency, per bucket label."""
        busiest: dict[str, float] = {}
        if peak is None:
            return busiest
        for row in answers["peaks"]["results"]:
            (label,) = row["dimensions"]
            begins = datetime.fromisoformat(label)
            owner = bucket_label(
                int(floor_to_bucket(begins, interval, zone).timestamp() * 1000), interval, zone
            )
            mean = (row["metrics"][0] or 0) / 1e9 / INTERVAL_SECONDS[peak]
            busiest[owner] = max(busiest.get(owner, 0.0), mean)
        return busiest

    def shape(answers: Mapping[str, Answer]) -> Answer:
        without = {row["dimensions"][0]: row["metrics"][0] for row in answers["missing"]["results"]}
        busiest = peaks(answers)
        results = []
        for row in answers["main"]["results"]:
            (time,) = row["dimensions"]
            requests, total_ns, longest_ns = row["metrics"]
            busy_s = (total_ns or 0) / 1e9
            mean = busy_s / seconds
            results.append(
                {
                    "time": time,
                    "requests": requests,
                    "requests_without_duration": without.get(time, 0),
                    "mean_concurrency": round(mean, 6),
                    "peak_concurrency": round(busiest.get(time, mean), 6),
                    "busy_seconds": round(busy_s, 3),
                    "longest_request_s": round((longest_ns or 0) / 1e9, 6),
                }
            )
        return {
            "report": "concurrency",
            "results": results,
            "meta": {
                **_meta(answers["main"]),
                "method": "a request occupies [time - duration, time]; mean_concurrency is"
                " the time requests occupied divided by the bucket's length",
                "peak_over": peak or interval,
            },
        }

    return queries, shape


def uptime_plan(body: Body) -> tuple[dict[str, Body], Callable[[Mapping[str, Answer]], Answer]]:
    """Uptime per monitor and region: the share of checks whose state was up, and the
    downtime intervals (down -> up changes in the range, and a down still going on)."""
    common = {**body, "source": "metrics", "limit": 10_000, "bots": "include"}
    checks = {
        **common,
        "metrics": [{"avg": "fields.up"}, "events"],
        "dimensions": ["tags.monitor", "tags.region"],
        "filters": [["is", "metric.name", ["monitor"]]],
    }
    recovered = {
        **common,
        "metrics": ["events"],
        "dimensions": ["tags.monitor", "tags.region", "tags.down_from", "tags.down_to"],
        "filters": [["is", "metric.name", ["monitor_state"]], ["is", "tags.to", ["up"]]],
    }
    went_down = {
        **common,
        "metrics": ["events"],
        "dimensions": ["tags.monitor", "tags.region", "tags.down_from"],
        "filters": [["is", "metric.name", ["monitor_state"]], ["is", "tags.to", ["down"]]],
    }

    def shape(answers: Mapping[str, Answer]) -> Answer:
        intervals: dict[tuple[Any, Any], dict[Any, Any]] = {}
        for row in answers["recovered"]["results"]:
            monitor, region, start, end = row["dimensions"]
            intervals.setdefault((monitor, region), {})[start] = end
        for row in answers["went_down"]["results"]:
            monitor, region, start = row["dimensions"]
            intervals.setdefault((monitor, region), {}).setdefault(start, None)
        results = []
        for row in answers["checks"]["results"]:
            monitor, region = row["dimensions"]
            share, checks = row["metrics"]
            downs = intervals.get((monitor, region), {})
            results.append(
                {
                    "monitor": monitor,
                    "region": region,
                    "uptime_percent": None if share is None else round(share * 100, 3),
                    "checks": checks,
                    "downtime": [
                        {"from": start, "to": end}
                        for start, end in sorted(downs.items(), key=lambda kv: str(kv[0]))
                    ],
                }
            )
        return {"report": "uptime", "results": results, "meta": _meta(answers["checks"])}

    return {"checks": checks, "recovered": recovered, "went_down": went_down}, shape


def response_times_query(body: Body) -> Body:
    return {
        **body,
        "source": "metrics",
        "metrics": [
            "events",
            {"p50": "fields.total_ms"},
            {"p95": "fields.total_ms"},
            {"p99": "fields.total_ms"},
            {"avg": "fields.first_byte_ms"},
            {"avg": "fields.body_bytes"},
        ],
        "dimensions": ["tags.monitor", "tags.region"],
        "filters": [["is", "metric.name", ["monitor"]], ["gt", "fields.ok", 0]],
    }


def certificate_expiry_query(body: Body) -> Body:
    return {
        **body,
        "source": "metrics",
        "metrics": [
            {"last_avg": "fields.days_left", "instance": "tags.region"},
            {"min": "fields.days_left"},
        ],
        "dimensions": ["tags.monitor"],
        "filters": [["is", "metric.name", ["monitor"]], ["is", "tags.kind", ["tls"]]],
        "order_by": [["min:fields.days_left", "asc"]],
    }


def _meta(answer: Answer) -> Answer:
    meta = answer["meta"]
    return {"range": meta["range"], "tz": meta["tz"]}


def _whole(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
