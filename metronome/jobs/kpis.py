"""The worker's KPI evaluation: every ``METRONOME_KPI_INTERVAL_S``, each KPI's series is
read through the one query model, judged by :mod:`metronome.insights.evaluate`, and each
change -- a finding becoming active (raised) or going away (recovered) -- is stored as an
insight document (dataset ``insights``, so ``POST /query`` with ``"source": "insights"``,
live subscriptions and dashboards see it) and sent to the KPI's webhook
(:mod:`metronome.jobs.webhooks`: signed, retried).

Deduplicated twice: the worker remembers what is raised, so a condition that lasts is one
insight, not one per evaluation; and an insight's document id is derived from the KPI, the
variant, the state and the bucket that raised it, so a write repeated after a restart
stores (and notifies) nothing new.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from metronome.config import Settings
from metronome.errors import MetronomeError
from metronome.events import fields as F
from metronome.events.insight import insight_document
from metronome.insights.evaluate import Finding, Rules, evaluate
from metronome.jobs.webhooks import Webhook, deliver
from metronome.kpis.model import Kpi, series_query, window_buckets
from metronome.kpis.registry import open_kpis
from metronome.reports.engine import run_query
from metronome.reports.query import for_site, parse_query
from metronome.store import Store

__all__ = ["KpiWatcher", "rules_of"]

log = logging.getLogger("metronome.kpis")

_ADDITIVE = ("events", "bytes")


def rules_of(kpi: Kpi) -> Rules:
    d = kpi.definition
    metric = d["query"]["metrics"][0]
    additive = metric in _ADDITIVE or (isinstance(metric, dict) and "sum" in metric)
    return Rules(
        name=kpi.name,
        bucket_s=3600 if kpi.interval == "hour" else 86_400,
        window_buckets=window_buckets(kpi),
        sensitivity=float(d["sensitivity"]),
        trend_pct=float(d["trend_pct"]),
        min_volume=float(d["min_volume"]),
        above=d["above"],
        below=d["below"],
        additive=additive,
    )


@dataclass
class KpiWatcher:
    """Evaluates every KPI; remembers which findings are raised (per process)."""

    settings: Settings
    store: Store
    raised: dict[tuple[str, str, str], int] = field(default_factory=dict)  # -> raised at
    seeded: set[tuple[str, str]] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)  # webhook deliveries made (url, id)

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient() as client:
            while not stop.is_set():
                try:
                    await self.evaluate_all(client)
                except MetronomeError as exc:
                    log.warning("kpis_deferred reason=%s", exc.message)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.kpi_interval_s)
                except TimeoutError:
                    pass

    async def evaluate_all(self, client: httpx.AsyncClient, now_ms: int | None = None) -> int:
        """Evaluate every KPI once; how many insights were stored."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        async with open_kpis(self.settings) as registry:
            kpis = await registry.list()
        stored = 0
        for kpi in kpis:
            try:
                stored += await self._evaluate(client, kpi, now)
            except MetronomeError as exc:
                log.warning("kpi_skipped kpi=%s reason=%s", kpi.id, exc.message)
        return stored

    async def _series(self, kpi: Kpi, now: int) -> tuple[list[int], list[float]]:
        query = for_site(parse_query(series_query(kpi, now), now), kpi.site_id)
        answer = await run_query(self.store, query, max_groups=self.settings.query_max_groups)
        values = [float(r["metrics"][0] or 0) for r in answer["results"]]
        return list(query.group.bucket_starts), values

    async def _seed(self, kpi: Kpi, now: int) -> None:
        """What is raised for ``kpi`` according to its stored insights (once per process):
        a finding whose last raised insight has no recovery after it. So a restarted
        worker neither raises a lasting condition again nor forgets to send its recovery."""
        if (kpi.site_id, kpi.id) in self.seeded:
            return
        body = {
            "source": "insights",
            "range": "30d",
            "dimensions": [F.INSIGHT_KEY, F.INSIGHT_STATE],
            "metrics": [{"max": F.INSIGHT_RAISED_AT}],
            "filters": [["is", F.KPI_ID, [kpi.id]]],
            "limit": 1000,
        }
        query = for_site(parse_query(body, now), kpi.site_id)
        answer = await run_query(self.store, query, max_groups=self.settings.query_max_groups)
        latest: dict[str, dict[str, int]] = {}
        for row in answer["results"]:
            key, state = row["dimensions"]
            if row["metrics"][0] is not None:
                latest.setdefault(key, {})[state] = int(row["metrics"][0])
        for key, states in latest.items():
            raised_at = states.get("raised")
            if raised_at is not None and raised_at > states.get("recovered", -1):
                self.raised.setdefault((kpi.site_id, kpi.id, key), raised_at)
        self.seeded.add((kpi.site_id, kpi.id))

    async def _evaluate(self, client: httpx.AsyncClient, kpi: Kpi, now: int) -> int:
        await self._seed(kpi, now)
        starts, values = await self._series(kpi, now)
        changes: list[tuple[Finding, str, int]] = []
        for finding in evaluate(rules_of(kpi), starts, values, now):
            key = (kpi.site_id, kpi.id, finding.key)
            if finding.active and key not in self.raised:
                self.raised[key] = finding.at_ms
                changes.append((finding, "raised", finding.at_ms))
            elif not finding.active and key in self.raised:
                changes.append((finding, "recovered", self.raised.pop(key)))
        if not changes:
            return 0
        documents = [
            insight_document(
                site_id=kpi.site_id,
                kpi_id=kpi.id,
                kpi_name=kpi.name,
                dashboard=kpi.definition.get("dashboard"),
                kind=f.kind,
                key=f.key,
                state=state,
                at_ms=f.at_ms,
                raised_at_ms=raised_at,
                now_ms=now,
                message=f.message if state == "raised" else f"recovered: {f.message}",
                observed=f.observed,
                expected=f.expected,
                low=f.low,
                high=f.high,
                score=f.score,
                change=f.change,
                compared_to=f.compared_to,
                direction=f.direction,
            )
            for f, state, raised_at in changes
        ]
        outcomes = await self.store.write(documents)
        new = [d for d, o in zip(documents, outcomes, strict=True) if o.ok and not o.existed]
        for document in new:
            log.info(
                "insight_%s kpi=%s kind=%s",
                document.source["insight"]["state"],
                kpi.id,
                document.source["insight"]["kind"],
            )
        url = kpi.definition.get("webhook")
        if url:
            hook = Webhook(
                url, self.settings.insight_webhook_secret, timeout_s=5.0, attempts=4, backoff_s=0.5
            )
            for document in new:
                await deliver(
                    hook,
                    _payload(kpi, document.source),
                    document.id,
                    delivered=self.delivered,
                    client=client,
                )
        return len(new)


def _payload(kpi: Kpi, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": f"insight.{source['insight']['state']}",
        "kpi": {"id": kpi.id, "name": kpi.name, "site": kpi.site_id},
        "insight": source,
    }
