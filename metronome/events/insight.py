"""Insight documents: what the worker found in a KPI, in the ``insights`` dataset."""

from __future__ import annotations

import hashlib
from typing import Any

from metronome.events import fields as F
from metronome.events.document import Document, format_timestamp

__all__ = ["insight_document", "insight_id"]


def insight_id(site_id: str, kpi_id: str, key: str, state: str, raised_at_ms: int) -> str:
    """The document id of one insight: the same KPI, variant, state and raising bucket
    always give the same id, so storing it twice stores it once (and notifies once)."""
    text = f"{site_id}\n{kpi_id}\n{key}\n{state}\n{raised_at_ms}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        if value is None:
            continue
        *parents, leaf = name.split(".") if not name.startswith("@") else [name]
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def insight_document(
    *,
    site_id: str,
    kpi_id: str,
    kpi_name: str,
    dashboard: str | None,
    kind: str,
    key: str,
    state: str,
    at_ms: int,
    raised_at_ms: int,
    now_ms: int,
    message: str,
    observed: float | None = None,
    expected: float | None = None,
    low: float | None = None,
    high: float | None = None,
    score: float | None = None,
    change: float | None = None,
    compared_to: str | None = None,
    direction: str | None = None,
) -> Document:
    """One insight (``state`` raised or recovered) about the bucket starting ``at_ms``."""
    event_id = insight_id(site_id, kpi_id, key, state, raised_at_ms)
    source = _nest(
        {
            F.TIMESTAMP: format_timestamp(at_ms),
            F.VERSION: "1",
            F.EVENT_ID: event_id,
            F.EVENT_DATASET: "metronome." + F.INSIGHT_DATASET,
            F.EVENT_ACTION: f"insight_{state}",
            F.EVENT_INGESTED: format_timestamp(now_ms),
            F.SITE_ID: site_id,
            F.KPI_ID: kpi_id,
            F.KPI_NAME: kpi_name,
            F.KPI_DASHBOARD: dashboard,
            F.INSIGHT_KIND: kind,
            F.INSIGHT_STATE: state,
            F.INSIGHT_KEY: key,
            F.INSIGHT_COMPARED_TO: compared_to,
            F.INSIGHT_DIRECTION: direction,
            F.INSIGHT_MESSAGE: message[:4000],
            F.INSIGHT_OBSERVED: observed,
            F.INSIGHT_EXPECTED: expected,
            F.INSIGHT_LOW: low,
            F.INSIGHT_HIGH: high,
            F.INSIGHT_SCORE: score,
            F.INSIGHT_CHANGE: change,
            F.INSIGHT_RAISED_AT: raised_at_ms,
        }
    )
    return Document(event_id, at_ms, F.INSIGHT_DATASET, source)
