"""Write Kibana's saved objects for Metronome: python scripts/gen_kibana.py

``metronome/kibana_objects/metronome.ndjson`` is generated from the definitions below (a
test checks it is current, and another that every field it uses is mapped by
``metronome/index_templates/`` with a type Kibana can aggregate). Edit here, regenerate,
commit both.

The objects are Kibana 8.x saved objects, importable with ``metronome kibana import`` or
Stack Management > Saved objects > Import: one data view per dataset, Lens
visualizations, and two dashboards that place them. Ids are fixed, so importing again
with ``--overwrite`` updates them in place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "metronome" / "kibana_objects" / "metronome.ndjson"

CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSION = {"index-pattern": "8.0.0", "lens": "8.9.0", "dashboard": "8.9.0"}
PANEL_VERSION = "8.9.0"
RECORDS = "___records___"  # Lens's pseudo-field of a document count
LAYER = "main"
HUMANS = "not bot : true"

# --- data views -----------------------------------------------------------------------

DATA_VIEWS: dict[str, dict[str, Any]] = {
    "ticks": {"name": "Metronome ticks", "formats": {}},
    "logs": {
        "name": "Metronome access logs",
        "formats": {
            "http.response.body.bytes": {"id": "bytes"},
            "event.duration": {
                "id": "duration",
                "params": {
                    "inputFormat": "nanoseconds",
                    "outputFormat": "humanizePrecise",
                    "outputPrecision": 1,
                },
            },
        },
    },
    "metrics": {"name": "Metronome metrics", "formats": {}},
}


def data_view_id(dataset: str) -> str:
    return f"metronome-{dataset}"


def _saved_object(
    kind: str, object_id: str, attributes: dict[str, Any], references: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "type": kind,
        "id": object_id,
        "attributes": attributes,
        "references": references,
        "coreMigrationVersion": CORE_MIGRATION_VERSION,
        "typeMigrationVersion": TYPE_MIGRATION_VERSION[kind],
        "managed": False,
    }


def data_view(dataset: str) -> dict[str, Any]:
    spec = DATA_VIEWS[dataset]
    return _saved_object(
        "index-pattern",
        data_view_id(dataset),
        {
            "title": f"metronome-{dataset}-*",
            "name": spec["name"],
            "timeFieldName": "@timestamp",
            "fields": "[]",
            "fieldFormatMap": json.dumps(spec["formats"], sort_keys=True, separators=(",", ":")),
            "fieldAttrs": "{}",
            "runtimeFieldMap": "{}",
            "sourceFilters": "[]",
            "typeMeta": "{}",
        },
        [],
    )


# --- Lens columns ---------------------------------------------------------------------


def count(label: str, query: str | None = None) -> dict[str, Any]:
    column: dict[str, Any] = {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "count",
        "sourceField": RECORDS,
        "isBucketed": False,
        "scale": "ratio",
        "params": {"emptyAsNull": True},
    }
    if query:
        column["filter"] = {"query": query, "language": "kuery"}
    return column


def metric(
    operation: str, source: str, label: str, fmt: dict[str, Any] | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"emptyAsNull": True}
    if fmt:
        params["format"] = fmt
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": operation,
        "sourceField": source,
        "isBucketed": False,
        "scale": "ratio",
        "params": params,
    }


def distinct(source: str, label: str) -> dict[str, Any]:
    """How many distinct values of ``source`` (an estimate above 3,000, like Elasticsearch's
    cardinality)."""
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "unique_count",
        "sourceField": source,
        "isBucketed": False,
        "scale": "ratio",
        "params": {"emptyAsNull": True},
    }


def last(source: str, label: str) -> dict[str, Any]:
    """The latest value of a numeric field (by ``@timestamp``) in its bucket."""
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "last_value",
        "sourceField": source,
        "isBucketed": False,
        "scale": "ratio",
        "filter": {"query": f'"{source}": *', "language": "kuery"},
        "params": {"sortField": "@timestamp", "showArrayValues": False},
    }


def over_time() -> dict[str, Any]:
    return {
        "label": "@timestamp",
        "dataType": "date",
        "operationType": "date_histogram",
        "sourceField": "@timestamp",
        "isBucketed": True,
        "scale": "interval",
        "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False},
    }


def top(
    source: str, label: str, size: int, order_by: str, data_type: str = "string", other: bool = True
) -> dict[str, Any]:
    return {
        "label": label,
        "customLabel": True,
        "dataType": data_type,
        "operationType": "terms",
        "sourceField": source,
        "isBucketed": True,
        "scale": "ordinal",
        "params": {
            "size": size,
            "orderBy": {"type": "column", "columnId": order_by},
            "orderDirection": "desc",
            "otherBucket": other,
            "missingBucket": False,
            "parentFormat": {"id": "terms"},
            "include": [],
            "exclude": [],
            "includeIsRegex": False,
            "excludeIsRegex": False,
        },
    }


# --- Lens visualizations --------------------------------------------------------------


def xy(
    series: str, x: str, ys: list[str], split: str | None = None, legend: bool = True
) -> tuple[str, dict[str, Any]]:
    layer: dict[str, Any] = {
        "layerId": LAYER,
        "layerType": "data",
        "seriesType": series,
        "xAccessor": x,
        "accessors": ys,
    }
    if split:
        layer["splitAccessor"] = split
    return "lnsXY", {
        "legend": {"isVisible": legend, "position": "right"},
        "valueLabels": "hide",
        "fittingFunction": "None",
        "preferredSeriesType": series,
        "layers": [layer],
    }


def pie(group: str, value: str) -> tuple[str, dict[str, Any]]:
    return "lnsPie", {
        "shape": "donut",
        "layers": [
            {
                "layerId": LAYER,
                "layerType": "data",
                "primaryGroups": [group],
                "metrics": [value],
                "numberDisplay": "percent",
                "categoryDisplay": "default",
                "legendDisplay": "default",
                "nestedLegend": False,
            }
        ],
    }


def table(*columns: str, total: str | None = None) -> tuple[str, dict[str, Any]]:
    """A table; ``total``: a column whose sum the table's footer shows."""
    return "lnsDatatable", {
        "layerId": LAYER,
        "layerType": "data",
        "columns": [
            {"columnId": c, "summaryRow": "sum", "summaryLabel": "Fleet total"}
            if c == total
            else {"columnId": c}
            for c in columns
        ],
    }


def single(value: str) -> tuple[str, dict[str, Any]]:
    return "lnsMetric", {"layerId": LAYER, "layerType": "data", "metricAccessor": value}


@dataclass
class Lens:
    id: str
    title: str
    description: str
    dataset: str
    columns: dict[str, dict[str, Any]]
    chart: tuple[str, dict[str, Any]]
    query: str = ""
    grid: tuple[int, int, int, int] = (0, 0, 24, 15)  # x, y, w, h on the dashboard
    extra: dict[str, Any] = field(default_factory=dict)

    def saved_object(self) -> dict[str, Any]:
        kind, visualization = self.chart
        layer = {
            "columns": self.columns,
            "columnOrder": list(self.columns),
            "incompleteColumns": {},
        }
        return _saved_object(
            "lens",
            self.id,
            {
                "title": self.title,
                "description": self.description,
                "visualizationType": kind,
                "state": {
                    "datasourceStates": {"formBased": {"layers": {LAYER: layer}}},
                    "visualization": visualization,
                    "query": {"query": self.query, "language": "kuery"},
                    "filters": [],
                    "internalReferences": [],
                    "adHocDataViews": {},
                },
            },
            [
                {
                    "type": "index-pattern",
                    "id": data_view_id(self.dataset),
                    "name": f"indexpattern-datasource-layer-{LAYER}",
                }
            ],
        )


def dashboard(
    object_id: str, title: str, description: str, panels: list[Lens], query: str = HUMANS
) -> dict[str, Any]:
    panel_json, references = [], []
    for number, lens in enumerate(panels, 1):
        index = f"p{number}"
        x, y, w, h = lens.grid
        panel_json.append(
            {
                "version": PANEL_VERSION,
                "type": "lens",
                "gridData": {"x": x, "y": y, "w": w, "h": h, "i": index},
                "panelIndex": index,
                "embeddableConfig": {},
                "panelRefName": f"panel_{index}",
            }
        )
        references.append({"type": "lens", "id": lens.id, "name": f"{index}:panel_{index}"})
    return _saved_object(
        "dashboard",
        object_id,
        {
            "title": title,
            "description": description,
            "panelsJSON": json.dumps(panel_json, separators=(",", ":")),
            "optionsJSON": json.dumps(
                {
                    "useMargins": True,
                    "syncColors": True,
                    "syncCursor": True,
                    "syncTooltips": False,
                    "hidePanelTitles": False,
                },
                separators=(",", ":"),
            ),
            "timeRestore": True,
            "timeFrom": "now-30d",
            "timeTo": "now",
            "refreshInterval": {"pause": True, "value": 60000},
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": json.dumps(
                    {"query": {"query": query, "language": "kuery"}, "filter": []},
                    separators=(",", ":"),
                )
            },
        },
        references,
    )


# --- what the dashboards show ---------------------------------------------------------

TICKS = [
    Lens(
        "metronome-ticks-traffic",
        "Ticks over time",
        "Ticks per interval, split by event (view, download, ...).",
        "ticks",
        {
            "when": over_time(),
            "events": count("Ticks"),
            "event": top("event.action", "Event", 5, "events"),
        },
        xy("bar_stacked", "when", ["events"], split="event"),
        grid=(0, 0, 32, 14),
    ),
    Lens(
        "metronome-ticks-views",
        "Views",
        "Views in the time range.",
        "ticks",
        {"views": count("Views", 'event.action : "view"')},
        single("views"),
        grid=(32, 0, 16, 7),
    ),
    Lens(
        "metronome-ticks-downloads",
        "Downloads",
        "Downloads in the time range.",
        "ticks",
        {"downloads": count("Downloads", 'event.action : "download"')},
        single("downloads"),
        grid=(32, 7, 16, 7),
    ),
    Lens(
        "metronome-ticks-top-items",
        "Top items",
        "The 20 items with the most ticks.",
        "ticks",
        {"item": top("item.id", "Item", 20, "events", other=False), "events": count("Ticks")},
        xy("bar_horizontal", "item", ["events"], legend=False),
        grid=(0, 14, 24, 16),
    ),
    Lens(
        "metronome-ticks-downloads-by-format",
        "Downloads by format",
        "Download ticks by their format.",
        "ticks",
        {"format": top("item.format", "Format", 10, "downloads"), "downloads": count("Downloads")},
        pie("format", "downloads"),
        query='event.action : "download"',
        grid=(24, 14, 24, 16),
    ),
    Lens(
        "metronome-ticks-referrers",
        "Top referrers",
        "Where views came from: the referring page (host and path).",
        "ticks",
        {
            "referrer": top("referrer.page", "Referrer", 20, "views", other=False),
            "views": count("Views"),
        },
        table("referrer", "views"),
        query='event.action : "view"',
        grid=(0, 30, 24, 16),
    ),
    Lens(
        "metronome-ticks-browsers",
        "Browsers",
        "Ticks by browser (user agent family).",
        "ticks",
        {"browser": top("user_agent.name", "Browser", 10, "events"), "events": count("Ticks")},
        pie("browser", "events"),
        grid=(24, 30, 12, 16),
    ),
    Lens(
        "metronome-ticks-countries",
        "Countries",
        "Ticks by the client's country.",
        "ticks",
        {
            "country": top("client.geo.country_iso_code", "Country", 15, "events"),
            "events": count("Ticks"),
        },
        xy("bar_horizontal", "country", ["events"], legend=False),
        grid=(36, 30, 12, 16),
    ),
]

LOGS = [
    Lens(
        "metronome-logs-traffic",
        "Requests over time by status code",
        "Access-log requests per interval, split by HTTP status code.",
        "logs",
        {
            "when": over_time(),
            "requests": count("Requests"),
            "status": top(
                "http.response.status_code", "Status", 10, "requests", data_type="number"
            ),
        },
        xy("bar_stacked", "when", ["requests"], split="status"),
        grid=(0, 0, 32, 14),
    ),
    Lens(
        "metronome-logs-status-codes",
        "Status codes",
        "Requests by HTTP status code.",
        "logs",
        {
            "status": top(
                "http.response.status_code", "Status", 20, "requests", data_type="number"
            ),
            "requests": count("Requests"),
        },
        pie("status", "requests"),
        grid=(32, 0, 16, 14),
    ),
    Lens(
        "metronome-logs-bytes",
        "Bytes sent over time",
        "Response body bytes per interval.",
        "logs",
        {
            "when": over_time(),
            "bytes": metric(
                "sum",
                "http.response.body.bytes",
                "Bytes sent",
                {"id": "bytes", "params": {"decimals": 1}},
            ),
        },
        xy("line", "when", ["bytes"], legend=False),
        grid=(0, 14, 24, 14),
    ),
    Lens(
        "metronome-logs-slowest-paths",
        "Slowest paths",
        "Paths by mean response time ($request_time, when the log format has it).",
        "logs",
        {
            "path": top("url.path", "Path", 20, "duration", other=False),
            "duration": metric("average", "event.duration", "Mean response time"),
            "requests": count("Requests"),
        },
        table("path", "duration", "requests"),
        grid=(24, 14, 24, 14),
    ),
    Lens(
        "metronome-logs-top-items",
        "Top items",
        "Items matched by the URL rules, most requested first.",
        "logs",
        {
            "item": top("item.id", "Item", 20, "requests", other=False),
            "requests": count("Requests"),
        },
        xy("bar_horizontal", "item", ["requests"], legend=False),
        grid=(0, 28, 24, 16),
    ),
    Lens(
        "metronome-logs-downloads-by-format",
        "Downloads by format",
        "Server-side downloads (URL rules) by format.",
        "logs",
        {"format": top("item.format", "Format", 10, "downloads"), "downloads": count("Downloads")},
        pie("format", "downloads"),
        query='event.action : "download"',
        grid=(24, 28, 24, 16),
    ),
    Lens(
        "metronome-logs-referrers",
        "Top referrers",
        "Referring sites of logged requests.",
        "logs",
        {
            "referrer": top("referrer.domain", "Referrer", 20, "requests", other=False),
            "requests": count("Requests"),
        },
        table("referrer", "requests"),
        grid=(0, 44, 24, 16),
    ),
    Lens(
        "metronome-logs-browsers",
        "Browsers",
        "Requests by browser (user agent family).",
        "logs",
        {
            "browser": top("user_agent.name", "Browser", 10, "requests"),
            "requests": count("Requests"),
        },
        pie("browser", "requests"),
        grid=(24, 44, 12, 16),
    ),
    Lens(
        "metronome-logs-countries",
        "Countries",
        "Requests by the client's country.",
        "logs",
        {
            "country": top("client.geo.country_iso_code", "Country", 15, "requests"),
            "requests": count("Requests"),
        },
        xy("bar_horizontal", "country", ["requests"], legend=False),
        grid=(36, 44, 12, 16),
    ),
]

INSTANCE = "tags.instance_uuid"  # the tag that tells an app's instances apart, by default
TELEMETRY = [
    Lens(
        "metronome-telemetry-active-instances",
        "Active instances over time",
        "Distinct instances (tags.instance_uuid) that reported in each interval.",
        "metrics",
        {"when": over_time(), "instances": distinct(INSTANCE, "Instances")},
        xy("line", "when", ["instances"], legend=False),
        query="app : *",
        grid=(0, 0, 32, 14),
    ),
    Lens(
        "metronome-telemetry-instances",
        "Active instances",
        "Distinct instances that reported in the time range.",
        "metrics",
        {"instances": distinct(INSTANCE, "Instances")},
        single("instances"),
        query="app : *",
        grid=(32, 0, 16, 14),
    ),
    Lens(
        "metronome-telemetry-version-spread",
        "Version spread",
        "Distinct instances by app_version in each interval: how fast the fleet upgrades.",
        "metrics",
        {
            "when": over_time(),
            "instances": distinct(INSTANCE, "Instances"),
            "version": top("tags.app_version", "Version", 10, "instances"),
        },
        xy("bar_stacked", "when", ["instances"], split="version"),
        query="app : *",
        grid=(0, 14, 32, 15),
    ),
    Lens(
        "metronome-telemetry-upgrade-checks",
        "Upgrade checks by version",
        "upgrade-responder requests (upgrade_request points) by the version that asked.",
        "metrics",
        {"version": top("tags.app_version", "Version", 10, "checks"), "checks": count("Checks")},
        pie("version", "checks"),
        query='metric.name : "upgrade_request"',
        grid=(32, 14, 16, 15),
    ),
    Lens(
        "metronome-telemetry-fleet-gauge",
        "Storage capacity: latest per instance",
        "The last storage_capacity value each instance reported in the time range; the"
        " footer sums them: the fleet total (not the sum of every report).",
        "metrics",
        {
            "instance": top(INSTANCE, "Instance", 1000, "value", other=False),
            "value": last("fields.value", "Latest value"),
        },
        table("instance", "value", total="value"),
        query='metric.name : "storage_capacity"',
        grid=(0, 29, 24, 16),
    ),
    Lens(
        "metronome-telemetry-metrics",
        "Reports by metric",
        "Points stored, by metric name and app.",
        "metrics",
        {
            "metric": top("metric.name", "Metric", 20, "points", other=False),
            "app": top("app", "App", 10, "points"),
            "points": count("Points"),
        },
        table("metric", "app", "points"),
        query="app : *",
        grid=(24, 29, 24, 16),
    ),
]


MONITOR = 'metric.name : "monitor"'
MONITORS = [
    Lens(
        "metronome-monitors-uptime",
        "Uptime by monitor and region",
        "The share of checks that found the monitor up (fields.up, 1 or 0) in the time"
        " range, per monitor and region; GET /reports/uptime lists the downtime intervals.",
        "metrics",
        {
            "monitor": top("tags.monitor", "Monitor", 50, "uptime", other=False),
            "region": top("tags.region", "Region", 20, "uptime", other=False),
            "uptime": metric("average", "fields.up", "Uptime", {"id": "percent"}),
            "checks": count("Checks"),
        },
        table("monitor", "region", "uptime", "checks"),
        query=MONITOR,
        grid=(0, 0, 24, 15),
    ),
    Lens(
        "metronome-monitors-response-time",
        "Response time",
        "Mean total time of the checks (fields.total_ms: DNS, connect, TLS and first byte"
        " included) per monitor over time.",
        "metrics",
        {
            "when": over_time(),
            "ms": metric("average", "fields.total_ms", "Total ms"),
            "monitor": top("tags.monitor", "Monitor", 10, "ms"),
        },
        xy("line", "when", ["ms"], split="monitor"),
        query=MONITOR,
        grid=(24, 0, 24, 15),
    ),
    Lens(
        "metronome-monitors-down-checks",
        "Failed checks over time",
        "Checks that found the monitor down, per region: when an outage began and where"
        " it was seen from.",
        "metrics",
        {
            "when": over_time(),
            "down": count("Down checks", "fields.up : 0"),
            "region": top("tags.region", "Region", 10, "down"),
        },
        xy("bar_stacked", "when", ["down"], split="region"),
        query=MONITOR,
        grid=(0, 15, 24, 15),
    ),
    Lens(
        "metronome-monitors-certificates",
        "Certificate days left",
        "The latest days_left of each TLS monitor's certificate.",
        "metrics",
        {
            "monitor": top("tags.monitor", "Monitor", 50, "days", other=False),
            "days": last("fields.days_left", "Days left"),
        },
        table("monitor", "days"),
        query='metric.name : "monitor" and tags.kind : "tls"',
        grid=(24, 15, 24, 15),
    ),
]


def saved_objects() -> list[dict[str, Any]]:
    """Every object, data views first (the order Kibana's own exports use doesn't matter to
    the import API, but it reads best)."""
    return [
        *(data_view(d) for d in DATA_VIEWS),
        *(lens.saved_object() for lens in TICKS + LOGS + TELEMETRY + MONITORS),
        dashboard(
            "metronome-ticks-overview",
            "Metronome: ticks",
            "Traffic, top items, downloads by format, referrers, browsers and countries"
            " from ticks. Known crawlers are left out by the query (not bot : true).",
            TICKS,
        ),
        dashboard(
            "metronome-logs-overview",
            "Metronome: access logs",
            "Requests, status codes, bytes, slow paths, top items, referrers, browsers"
            " and countries from web-server access logs. Known crawlers are left out"
            " by the query (not bot : true).",
            LOGS,
        ),
        dashboard(
            "metronome-telemetry-overview",
            "Metronome: telemetry",
            "What installed software reports about itself (binoculars and upgrade-responder"
            " clients): active instances, version spread, upgrade checks, the fleet total of"
            " a gauge. Feature adoption per feature: the Grafana dashboard (deploy/grafana/)"
            " or POST /query.",
            TELEMETRY,
            query="",
        ),
        dashboard(
            "metronome-monitors-overview",
            "Metronome: monitors",
            "Health monitors and remote probes: uptime per monitor and region, response"
            " time, failed checks, certificate expiry (metric.name monitor points).",
            MONITORS,
            query="",
        ),
    ]


def render() -> str:
    return "".join(
        json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n" for o in saved_objects()
    )


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())
