"""What the dashboard shows: its panels, each a ``/query`` request, and its live figures,
each a live subscription. The page (``metronome/static/dashboard/``) draws whatever this
list holds, so a new dataset's panel (telemetry, monitors, insights) is one more entry here,
not new page code.

A panel's ``query`` is a ``/query`` body without its range (the page's range picker sets
it, with ``compare`` and the time zone); the page adds the filters of the chips the
visitor clicked (``["is", <chip's dimension>, [value]]``) to every panel's own.

- ``totals``: one number per metric, with the previous period's;
- ``chart``: the metrics over time (the page picks ``time:hour``, ``day`` or ``month``);
- ``table``: the metrics by ``dimension``; a click on a row adds a chip; ``opens: "item"``
  rows link to the item page as well; ``numeric`` dimensions' values are numbers;
- ``insights``: what the worker found in the KPIs (``"source": "insights"``), newest first,
  each with its explanation (the message, the observed value, the expected range); the
  chips and ``compare`` do not apply (insights have no referrers or countries). The live
  figure ``insights_24h`` changes when one is raised or recovered, and the page then
  reloads its panels, so a new insight shows within seconds.

The **Journeys** view (``?view=journeys``) draws :data:`JOURNEY_PANELS` the same way
(``"source": "visits"``; a ``totals`` or ``table`` panel may give ``formats``: ``number``,
``percent``, ``duration`` in ms or ``decimal``, one per metric, and ``keys`` for its
figures' element ids; ``picks: "page"`` rows choose the page whose transitions and
related items show). Only the chips of :data:`VISIT_CHIPS` apply to them (a visit has
its entry's browser, device and country, not a referrer). Its transitions
(``GET /reports/transitions``), related items (``GET /items/related``), funnel builder
(``"funnel"`` in ``/query``) and error groups (``GET /reports/error-groups``) are parts of
the page: each asks one fixed endpoint.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JOURNEY_PANELS", "LIVE_FIGURES", "PANELS", "VISIT_CHIPS", "page_config"]

_VIEWS = [["is", "event", ["view"]]]
_DOWNLOADS = [["is", "event", ["download"]]]


def _table(panel_id: str, title: str, dimension: str, **extra: Any) -> dict[str, Any]:
    query = {
        "source": extra.pop("source", "ticks"),
        "metrics": extra.pop("metrics", ["events", "visitors"]),
        "dimensions": [dimension],
        "filters": extra.pop("filters", []),
        "limit": 10,
    }
    return {
        "id": panel_id,
        "kind": "table",
        "title": title,
        "dimension": dimension,
        "query": query,
        "labels": extra.pop("labels", ["Events", "Visitors"]),
        **extra,
    }


PANELS: tuple[dict[str, Any], ...] = (
    {
        "id": "totals",
        "kind": "totals",
        "title": "Summary",
        "query": {"source": "ticks", "metrics": ["events", "visitors"], "filters": _VIEWS},
        "labels": ["Views", "Visitors"],
    },
    {
        "id": "trend",
        "kind": "chart",
        "title": "Views and visitors",
        "query": {"source": "ticks", "metrics": ["events", "visitors"], "filters": _VIEWS},
        "labels": ["Views", "Visitors"],
    },
    _table("items", "Top items", "item", opens="item"),
    _table(
        "referrers",
        "Referrers",
        "referrer",
        filters=[*_VIEWS, ["matches", "referrer", ["*"]]],
        labels=["Views", "Visitors"],
    ),
    _table("countries", "Countries", "country"),
    _table("browsers", "Browsers", "browser"),
    _table("os", "Operating systems", "os"),
    _table("devices", "Devices", "device"),
    _table(
        "formats",
        "Downloads by format",
        "format",
        filters=_DOWNLOADS,
        labels=["Downloads", "Visitors"],
    ),
    _table(
        "status",
        "Server-log status codes",
        "status",
        source="logs",
        metrics=["events", "bytes"],
        labels=["Responses", "Bytes"],
        numeric=True,
    ),
    {
        "id": "insights",
        "kind": "insights",
        "title": "Insights",
        "query": {
            "source": "insights",
            "metrics": [
                {"max": "insight.raised_at"},
                {"max": "insight.observed"},
                {"min": "insight.low"},
                {"max": "insight.high"},
            ],
            "dimensions": ["kpi.name", "insight.kind", "insight.state", "insight.message"],
            "order_by": [["max:insight.raised_at", "desc"]],
            "limit": 20,
        },
    },
)
"""The dashboard's panels, in page order."""

LIVE_FIGURES: tuple[dict[str, Any], ...] = (
    {
        "id": "visitors_5min",
        "title": "Visitors in the last 5 minutes",
        "query": {"range": "5min", "metrics": ["visitors"]},
        "frequency": "high",
    },
    {
        "id": "events_1min",
        "title": "Events in the last minute",
        "query": {"range": "1min", "metrics": ["events"]},
        "frequency": "high",
    },
    {
        "id": "insights_24h",
        "title": "Insights in the last 24 hours",
        "query": {"source": "insights", "range": "24h", "metrics": ["events"]},
        "frequency": "medium",
    },
)
"""The "now" panel: live subscriptions, one number each."""


# journeys (issue 25): visits, entry and exit pages (the rest of the view is page code)
VISIT_CHIPS: tuple[str, ...] = ("browser", "os", "device", "country")
"""The chips that filter visits (the dimensions a visit summary has of its entry)."""

JOURNEY_PANELS: tuple[dict[str, Any], ...] = (
    {
        "id": "visit-totals",
        "kind": "totals",
        "title": "Visits",
        "query": {
            "source": "visits",
            "metrics": ["visits", "bounce_rate", {"p50": "visit_duration"}, "views_per_visit"],
        },
        "labels": ["Visits", "Bounce rate", "Visit duration (median)", "Views per visit"],
        "keys": ["visits", "bounce-rate", "visit-duration", "views-per-visit"],
        "formats": ["number", "percent", "duration", "decimal"],
    },
    _table(
        "entry-pages",
        "Entry pages",
        "entry_page",
        source="visits",
        metrics=["visits", "bounce_rate"],
        labels=["Visits", "Bounce rate"],
        formats=["number", "percent"],
        picks="page",
    ),
    _table(
        "exit-pages",
        "Exit pages",
        "exit_page",
        source="visits",
        metrics=["visits", "views_per_visit"],
        labels=["Visits", "Views per visit"],
        formats=["number", "decimal"],
        picks="page",
    ),
)
"""The Journeys view's ``/query`` panels, in page order."""


def page_config() -> bytes:
    """What the page reads at start (embedded in it as JSON)."""
    return orjson.dumps(
        {
            "panels": PANELS,
            "live": LIVE_FIGURES,
            "journeys": JOURNEY_PANELS,
            "visit_chips": VISIT_CHIPS,
        }
    )
