"""A KPI definition: one ``/query`` metric of one site, bucketed by hour or day, with
optional thresholds and target, a sensitivity, and a place on a dashboard.

A definition is checked once, when it is created: its query goes through the same
:func:`~metronome.reports.query.parse_query` as ``POST /query`` (so any metric, source and
filter ``/query`` takes works), with the KPI's own time dimension added.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance

from metronome.errors import InvalidKpi, InvalidQuery
from metronome.reports.query import HORIZON_PATTERN, parse_query

__all__ = ["KPI_SCHEMA", "Kpi", "parse_kpi", "series_query"]

KPI_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_HISTORY_BUCKETS = {"hour": 28 * 24, "day": 400}
"""How far back the worker reads a KPI's series: four weeks of hours, or 400 days."""

KPI_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Kpi",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "id": {"type": "string", "pattern": KPI_ID, "description": "default: generated"},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "query": {
            "type": "object",
            "description": "the metric: a /query body with source, one metric, filters, bots",
            "additionalProperties": False,
            "properties": {
                "source": {"type": "string"},
                "metrics": {"type": "array", "minItems": 1, "maxItems": 1},
                "filters": {"type": "array"},
                "bots": {"type": "string"},
            },
            "default": {"metrics": ["events"]},
        },
        "interval": {"enum": ["hour", "day"], "default": "hour"},
        "window": {
            "type": "string",
            "pattern": HORIZON_PATTERN,
            "default": "24h",
            "description": "the period a trend compares with the one before: Nh or Nd",
        },
        "tz": {"type": "string", "minLength": 1, "maxLength": 64, "default": "UTC"},
        "above": {"type": ["number", "null"], "default": None},
        "below": {"type": ["number", "null"], "default": None},
        "target": {"type": ["number", "null"], "default": None},
        "sensitivity": {"type": "number", "minimum": 0.25, "maximum": 4, "default": 1.0},
        "trend_pct": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000, "default": 10},
        "min_volume": {
            "type": "number",
            "minimum": 0,
            "default": 20,
            "description": "below this (per bucket for anomalies, per window for trends) no"
            " anomaly or trend is claimed: too sparse to judge",
        },
        "webhook": {
            "type": ["string", "null"],
            "pattern": "^https?://",
            "maxLength": 2048,
            "default": None,
        },
        "dashboard": {"type": ["string", "null"], "maxLength": 200, "default": None},
        "position": {"type": "integer", "minimum": 0, "maximum": 10_000, "default": 0},
    },
}
_VALIDATOR = Draft202012Validator(KPI_SCHEMA)


@dataclass(frozen=True, slots=True)
class Kpi:
    """One stored KPI definition (``definition``: the normalized JSON)."""

    id: str
    site_id: str
    definition: dict[str, Any] = field(hash=False)
    created_ms: int = 0

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    @property
    def interval(self) -> str:
        return str(self.definition["interval"])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "site": self.site_id,
            **self.definition,
            "created_ms": self.created_ms,
        }


def _window_buckets(window: str, interval: str) -> int:
    hours = int(window[:-1]) * (24 if window[-1] == "d" else 1)
    per = 1 if interval == "hour" else 24
    return max(1, hours // per)


def series_query(kpi: Kpi, now_ms: int | None = None) -> dict[str, Any]:
    """The ``/query`` body of the KPI's series: its metric per bucket, over its history."""
    d = kpi.definition
    interval = d["interval"]
    back = MAX_HISTORY_BUCKETS[interval]
    now = int(time.time() * 1000) if now_ms is None else now_ms
    bucket_ms = 3_600_000 if interval == "hour" else 86_400_000
    start = (now // bucket_ms - back + 1) * bucket_ms
    return {
        **d["query"],
        "range": {"from": start, "to": now + 1},
        "tz": d["tz"],
        "dimensions": [f"time:{interval}"],
        "limit": 10_000,
    }


def parse_kpi(body: Any, site_id: str, now_ms: int | None = None) -> Kpi:
    """Validate a KPI definition; raises :class:`InvalidKpi` naming the part."""
    errors = list(_VALIDATOR.iter_errors(body))
    if errors:
        error = max(errors, key=relevance)
        where = "kpi" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        raise InvalidKpi(f"{where}: {error.message[:300]}", field=where)
    definition: dict[str, Any] = {
        name: body.get(name, spec.get("default"))
        for name, spec in KPI_SCHEMA["properties"].items()
        if name != "id"
    }
    definition["query"] = dict(definition["query"] or {"metrics": ["events"]})
    definition["query"].setdefault("metrics", ["events"])
    if (
        definition["above"] is not None
        and definition["below"] is not None
        and definition["below"] >= definition["above"]
    ):
        raise InvalidKpi("kpi.below: must be less than kpi.above", field="kpi.below")
    kpi_id = body.get("id") or "kpi-" + secrets.token_hex(4)
    kpi = Kpi(kpi_id, site_id, definition, int(time.time() * 1000) if now_ms is None else now_ms)
    try:
        parse_query(series_query(kpi, now_ms), now_ms)
    except InvalidQuery as exc:
        where = re.sub(r"^query", "kpi.query", str(exc.details.get("field", "query")))
        message = re.sub(r"^query", "kpi.query", exc.message)
        raise InvalidKpi(message, field=where) from None
    return kpi


def window_buckets(kpi: Kpi) -> int:
    """Buckets in the KPI's trend window."""
    return _window_buckets(kpi.definition["window"], kpi.interval)
