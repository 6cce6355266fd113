"""``[[destinations]]``: where the worker forwards a site's accepted events.

One table per destination, in the configuration file (``METRONOME_CONFIG``)::

    [[destinations]]
    name = "product-analytics"   # its cursor, dead letters and figures go by this name
    site = "shop"                # whose events
    type = "amplitude"           # webhook, amplitude, ga4, metronome, rabbitmq
    api_key_env = "AMPLITUDE_API_KEY"
    events = ["purchase", "signup"]   # optional: only these event names
    sources = ["ticks"]               # optional: /query sources (default ticks)
    batch_size = 500                  # optional: events per request (capped per type)
    rate_per_s = 100                  # optional: events a second at most (0: no limit)

Secrets (API keys, the GA4 measurement secret, the webhook's HMAC secret, an AMQP URL with
its password, another Metronome's key) are given by reference only, ``<key>_env`` or
``<key>_file`` (:func:`metronome.config.read_secret`), so the file itself never holds one.
:func:`parse_destinations` checks every table and names the key of the first problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metronome.config import read_secret
from metronome.errors import ConfigError
from metronome.events.fields import SITE_ID_PATTERN
from metronome.reports.query import SOURCES

__all__ = ["KINDS", "Destination", "parse_destinations"]

KINDS = ("webhook", "amplitude", "ga4", "metronome", "rabbitmq")
"""The destination types."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# type -> (default batch size, most a request may hold)
_BATCH: dict[str, tuple[int, int]] = {
    "webhook": (100, 10_000),
    "amplitude": (500, 2000),  # Amplitude HTTP V2: at most 2,000 events a request
    "ga4": (25, 25),  # GA4 Measurement Protocol: at most 25 events a request
    "metronome": (500, 10_000),
    "rabbitmq": (100, 10_000),
}

AMPLITUDE_URL = "https://api2.amplitude.com/2/httpapi"
GA4_URL = "https://www.google-analytics.com/mp/collect"

_COMMON = {
    "name",
    "site",
    "type",
    "events",
    "sources",
    "batch_size",
    "rate_per_s",
    "timeout",
    "backoff_max",
    "backlog_max_bytes",
}
# type -> (its own keys, its secret keys (given as <key>_env or <key>_file), required ones)
_KEYS: dict[str, tuple[set[str], tuple[str, ...], set[str]]] = {
    "webhook": ({"url"}, ("secret",), {"url", "secret"}),
    "amplitude": ({"url"}, ("api_key",), {"api_key"}),
    "ga4": ({"url", "measurement_id"}, ("api_secret",), {"measurement_id", "api_secret"}),
    "metronome": ({"url"}, ("key",), {"url"}),
    "rabbitmq": ({"exchange", "routing_key"}, ("url",), {"url"}),
}


@dataclass(frozen=True, slots=True)
class Destination:
    """One checked ``[[destinations]]`` table; ``secrets`` holds the resolved secrets."""

    name: str
    site: str
    kind: str
    url: str | None
    secrets: Mapping[str, str] = field(repr=False)
    events: frozenset[str] | None  # None: every event name
    datasets: frozenset[str]
    batch_size: int
    rate_per_s: float  # 0: no limit
    timeout_s: float
    backoff_max_s: float
    backlog_max_bytes: int
    measurement_id: str | None = None
    exchange: str = ""
    routing_key: str = "metronome.{site}.{event}"

    def wants(self, source: Mapping[str, Any], dataset: str) -> bool:
        """Whether an event of the spool belongs here: its site, dataset and event name."""
        if dataset not in self.datasets:
            return False
        site = source.get("site")
        if not isinstance(site, dict) or site.get("id") != self.site:
            return False
        if self.events is None:
            return True
        event = source.get("event")
        return isinstance(event, dict) and event.get("action") in self.events


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _number(entry: Mapping[str, Any], key: str, where: str, default: float, low: float) -> float:
    value = entry.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < low:
        raise _fail(f"{where}.{key}", f"expected a number of at least {low:g}")
    return float(value)


def _strings(entry: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(f"{where}.{key}", "expected a non-empty array of strings")
    return list(value)


def _http_url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _fail(where, "expected an http:// or https:// URL")
    return value


def _one(
    entry: Any, index: int, spool_max_bytes: int, environ: Mapping[str, str] | None
) -> Destination:
    where = f"destinations[{index}]"
    if not isinstance(entry, dict):
        raise _fail(where, "expected a table")
    kind = entry.get("type")
    if kind not in KINDS:
        raise _fail(f"{where}.type", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    own, secret_keys, required = _KEYS[kind]
    allowed = _COMMON | own | {f"{k}_{how}" for k in secret_keys for how in ("env", "file")}
    unknown = sorted(set(entry) - allowed - set(secret_keys))
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} for a {kind} destination")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(f"{where}.name", "expected 1 to 64 lowercase letters, digits, '-' or '_'")
    where = f"destinations[{index}] ({name})"
    site = entry.get("site")
    if not isinstance(site, str) or not SITE_ID_PATTERN.match(site):
        raise _fail(f"{where}.site", "expected a site id")
    secrets: dict[str, str] = {}
    for key in secret_keys:
        value = read_secret(entry, key, where, environ)
        if value is not None:
            secrets[key] = value
        elif key in required:
            raise _fail(where, f"a {kind} destination needs {key}_env or {key}_file")
    for key in sorted(required - set(secret_keys)):
        if key not in entry:
            raise _fail(where, f"a {kind} destination needs {key}")
    url: str | None = None
    if kind == "webhook" or kind == "metronome":
        url = _http_url(entry["url"], f"{where}.url").rstrip("/")
    elif kind == "amplitude":
        url = _http_url(entry.get("url", AMPLITUDE_URL), f"{where}.url")
    elif kind == "ga4":
        url = _http_url(entry.get("url", GA4_URL), f"{where}.url")
    elif kind == "rabbitmq" and not secrets["url"].startswith(("amqp://", "amqps://")):
        raise _fail(f"{where}.url_env", "expected an amqp:// or amqps:// URL")
    sources = _strings(entry, "sources", where) or ["ticks"]
    datasets: set[str] = set()
    for source in sources:
        if source not in SOURCES:
            raise _fail(f"{where}.sources", f"expected sources among {', '.join(SOURCES)}")
        datasets.update(SOURCES[source])
    events = _strings(entry, "events", where)
    default_batch, most = _BATCH[kind]
    batch = entry.get("batch_size", default_batch)
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= most:
        raise _fail(f"{where}.batch_size", f"expected 1 to {most} events a request")
    backlog_limit = spool_max_bytes // 2
    backlog = entry.get("backlog_max_bytes", spool_max_bytes // 4)
    if not isinstance(backlog, int) or isinstance(backlog, bool) or not 1 <= backlog:
        raise _fail(f"{where}.backlog_max_bytes", "expected a whole number of bytes")
    if backlog > backlog_limit:
        raise _fail(
            f"{where}.backlog_max_bytes",
            f"at most half the spool (METRONOME_SPOOL_MAX_BYTES / 2 = {backlog_limit}), so a"
            " destination that is down never fills the spool and stops ingestion",
        )
    measurement_id = entry.get("measurement_id")
    if kind == "ga4" and (not isinstance(measurement_id, str) or not measurement_id):
        raise _fail(f"{where}.measurement_id", "expected the stream's measurement id")
    exchange = entry.get("exchange", "")
    routing_key = entry.get("routing_key", "metronome.{site}.{event}")
    if not isinstance(exchange, str) or not isinstance(routing_key, str):
        raise _fail(where, "exchange and routing_key are strings")
    try:
        routing_key.format(site="s", event="e")
    except (KeyError, IndexError, ValueError):
        raise _fail(f"{where}.routing_key", "may hold {site} and {event}, nothing else") from None
    return Destination(
        name=name,
        site=site,
        kind=kind,
        url=url,
        secrets=secrets,
        events=frozenset(events) if events is not None else None,
        datasets=frozenset(datasets),
        batch_size=batch,
        rate_per_s=_number(entry, "rate_per_s", where, 0, 0),
        timeout_s=_number(entry, "timeout", where, 10, 0.1),
        backoff_max_s=_number(entry, "backoff_max", where, 60, 0.1),
        backlog_max_bytes=backlog,
        measurement_id=measurement_id if kind == "ga4" else None,
        exchange=exchange,
        routing_key=routing_key,
    )


def parse_destinations(
    raw: Sequence[Any], *, spool_max_bytes: int, environ: Mapping[str, str] | None = None
) -> tuple[Destination, ...]:
    """Check ``[[destinations]]``; :class:`ConfigError` names the table and key of the
    first problem. ``environ``: where ``<key>_env`` secrets are read (default: the
    process environment)."""
    try:
        found = tuple(_one(entry, i, spool_max_bytes, environ) for i, entry in enumerate(raw))
    except ValueError as exc:
        raise ConfigError(str(exc), key="destinations") from None
    names = [d.name for d in found]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"destinations: two destinations are named {name!r}", key="destinations"
            )
    return found
