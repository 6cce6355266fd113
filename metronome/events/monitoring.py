"""Monitor results as points: the one shape the worker's monitors and remote probes store.

A check is a point ``metric.name="monitor"`` of producer ``<monitor name>`` with
``tags.monitor``, ``tags.kind``, ``tags.region``, ``tags.state`` (and ``tags.probe`` for
a remote probe's) and ``fields.up`` (the monitor's state, 1 or 0), ``fields.ok`` (this
check) and what the check measured (``fields.total_ms``, ``fields.status``, ...). A state
change is a point ``metric.name="monitor_state"`` (``tags.from``, ``tags.to``,
``tags.down_from`` and, on recovery, ``tags.down_to``).

**Remote probe results** (``POST /probe/results``, :func:`parse_probe_results`)::

    {"probe": "p-3f2a...", "region": "eu-west", "results": [
      {"monitor": "website", "kind": "http", "at_ms": 1764770000123, "ok": true,
       "state": "up", "previous": "up", "down_since_ms": null, "reason": null,
       "measured": {"total_ms": 81.2, "status": 200, "body_bytes": 5123}}]}

Each result's ids are deterministic (the probe, the monitor and the check's time are
hashed in, :func:`metronome.events.point.point_id`): a result delivered twice (the probe
did not hear the answer and sent it again) is stored once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from metronome.errors import InvalidField, LimitExceeded
from metronome.events import fields as F
from metronome.events.document import Document
from metronome.events.point import NAME_PATTERN, Point, point_document

__all__ = [
    "KINDS",
    "MAX_PROBE_RESULTS",
    "STATES",
    "iso_ms",
    "monitor_documents",
    "parse_probe_results",
]

KINDS = ("tcp", "http", "tls")
STATES = ("up", "down")
MAX_PROBE_RESULTS = 500
"""Results one ``POST /probe/results`` may carry (a probe sends its queue in batches)."""
_MAX_MEASURED = 32
_MAX_REASON = 500
_EARLIEST_MS = 946_684_800_000  # 2000-01-01: an older check time is a clock or unit error
_FUTURE_MS = 3_600_000  # a check time this far ahead of the server's clock is refused


def iso_ms(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def monitor_documents(
    *,
    monitor: str,
    kind: str,
    region: str,
    site: str,
    at_ms: int,
    ok: bool,
    state: str,
    previous: str | None,
    measured: Mapping[str, float],
    down_since_ms: int | None,
    sender: str,
    probe: str | None = None,
) -> list[Document]:
    """The check's point and, when the state changed (or a new monitor starts down), the
    change's point. ``sender`` makes the ids: one per monitor, region and check time."""
    tags = {"monitor": monitor, "kind": kind, "region": region, "state": state}
    if probe is not None:
        tags["probe"] = probe
    values = {
        "up": 1.0 if state == "up" else 0.0,
        "ok": 1.0 if ok else 0.0,
        **{k: float(v) for k, v in measured.items()},
    }
    docs = [point_document(Point(monitor, "monitor", at_ms, tags, values, site), sender=sender)]
    changed = (previous is not None and previous != state) or (previous is None and state == "down")
    if changed:
        change = {
            "monitor": monitor,
            "kind": kind,
            "region": region,
            "from": previous or "up",
            "to": state,
        }
        if state == "down":
            change["down_from"] = iso_ms(at_ms)
        elif down_since_ms is not None:
            change["down_from"] = iso_ms(down_since_ms)
            change["down_to"] = iso_ms(at_ms)
        docs.append(
            point_document(
                Point(monitor, "monitor_state", at_ms, change, {"at_ms": float(at_ms)}, site),
                sender=f"{sender}:state",
            )
        )
    return docs


def _bad(message: str, field: str) -> InvalidField:
    return InvalidField(message, field=field)


def _name(value: Any, field: str, what: str) -> str:
    if not isinstance(value, str) or not F.APP_ID_PATTERN.match(value):
        raise _bad(
            f"'{field}' must be {what}: 1 to 64 lowercase letters, digits, '-' and '_'", field
        )
    return value


def _time(value: Any, field: str, now_ms: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{field}' must be milliseconds since 1970 (an integer)", field)
    if value < _EARLIEST_MS or value > now_ms + _FUTURE_MS:
        raise _bad(f"'{field}' is {value}: not a check time (milliseconds since 1970)", field)
    return value


def _result(item: Any, where: str, now_ms: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad(f"'{where}' must be an object", where)
    known = {
        "monitor",
        "kind",
        "at_ms",
        "ok",
        "state",
        "previous",
        "down_since_ms",
        "reason",
        "measured",
    }
    unknown = sorted(set(item) - known)
    if unknown:
        raise _bad(f"'{where}.{unknown[0][:64]}' is not a result field", f"{where}.{unknown[0]}")
    monitor = _name(item.get("monitor"), f"{where}.monitor", "a monitor name")
    kind = item.get("kind")
    if kind not in KINDS:
        raise _bad(f"'{where}.kind' must be one of {', '.join(KINDS)}", f"{where}.kind")
    ok = item.get("ok")
    if not isinstance(ok, bool):
        raise _bad(f"'{where}.ok' must be true or false", f"{where}.ok")
    state = item.get("state")
    if state not in STATES:
        raise _bad(f"'{where}.state' must be up or down", f"{where}.state")
    previous = item.get("previous")
    if previous is not None and previous not in STATES:
        raise _bad(f"'{where}.previous' must be up, down or null", f"{where}.previous")
    down_since = item.get("down_since_ms")
    if down_since is not None:
        down_since = _time(down_since, f"{where}.down_since_ms", now_ms)
    reason = item.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > _MAX_REASON):
        raise _bad(
            f"'{where}.reason' must be a string of at most {_MAX_REASON} characters",
            f"{where}.reason",
        )
    measured = item.get("measured", {})
    if not isinstance(measured, dict) or len(measured) > _MAX_MEASURED:
        raise _bad(
            f"'{where}.measured' must be an object of at most {_MAX_MEASURED} numbers",
            f"{where}.measured",
        )
    numbers: dict[str, float] = {}
    for key, value in measured.items():
        field = f"{where}.measured.{str(key)[:64]}"
        if not NAME_PATTERN.match(key) or len(key) > 64 or key in ("up", "ok"):
            raise _bad(f"'{field}' is not a measurement name", field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"'{field}' must be a number", field)
        if not math.isfinite(value) or abs(value) > 1e300:
            raise _bad(f"'{field}' must be a finite number", field)
        numbers[key] = float(value)
    return {
        "monitor": monitor,
        "kind": kind,
        "at_ms": _time(item.get("at_ms"), f"{where}.at_ms", now_ms),
        "ok": ok,
        "state": state,
        "previous": previous,
        "down_since_ms": down_since,
        "measured": numbers,
    }


def parse_probe_results(body: Any, site: str, now_ms: int) -> list[Document]:
    """The documents of a probe's results, or :class:`InvalidField` (400) naming the first
    field that is wrong (nothing of a request with a bad result is stored: the probe
    sends what it measured, so a bad result is a bug to see, not to half-store)."""
    if not isinstance(body, dict):
        raise _bad("send an object: {'probe', 'region', 'results': [...]}", "body")
    unknown = sorted(set(body) - {"probe", "region", "results"})
    if unknown:
        raise _bad(f"'{unknown[0][:64]}' is not a field of probe results", unknown[0][:64])
    probe = _name(body.get("probe"), "probe", "the probe's id")
    region = _name(body.get("region"), "region", "a region name (like eu-west)")
    results = body.get("results")
    if not isinstance(results, list):
        raise _bad("'results' must be an array of check results", "results")
    if len(results) > MAX_PROBE_RESULTS:
        raise LimitExceeded(
            f"{len(results)} results in one request; send at most {MAX_PROBE_RESULTS}",
            limit=MAX_PROBE_RESULTS,
        )
    documents: list[Document] = []
    for index, item in enumerate(results):
        r = _result(item, f"results[{index}]", now_ms)
        documents.extend(
            monitor_documents(
                monitor=r["monitor"],
                kind=r["kind"],
                region=region,
                site=site,
                at_ms=r["at_ms"],
                ok=r["ok"],
                state=r["state"],
                previous=r["previous"],
                measured=r["measured"],
                down_since_ms=r["down_since_ms"],
                sender=f"probe:{probe}:{r['monitor']}:{r['at_ms']}",
                probe=probe,
            )
        )
    return documents
