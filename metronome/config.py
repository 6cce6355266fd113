"""Settings, read once from ``METRONOME_*`` environment variables.

Every setting is one :class:`Setting` in :data:`SETTINGS`: its variable name, its default
and a line of help. The README's configuration table is generated from the same list
(``metronome settings --markdown``) and a test fails when the two drift apart.

A bad value fails at start-up with a message naming the variable and the value; nothing
else in Metronome reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from metronome.errors import ConfigError

__all__ = ["SETTINGS", "Setting", "Settings", "settings_table"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _str(raw: str) -> str:
    return raw


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a number from {minimum} to {maximum}, got {value}")
        return value

    return cast


def _networks(raw: str) -> tuple[Network, ...]:
    networks = []
    for part in raw.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"expected on or off, got {raw!r}")


def _site(raw: str) -> str:
    from metronome.events.fields import SITE_ID_PATTERN

    value = raw.strip()
    if not SITE_ID_PATTERN.match(value):
        raise ValueError(
            "a site id is 1 to 64 lowercase letters, digits, '-' and '_',"
            f" starting with a letter or digit; got {raw!r}"
        )
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return cast


_RETENTION_PART = re.compile(r"^([a-z0-9][a-z0-9_-]{0,63}=)?\d{1,5}[dw]$")


def _retention(raw: str) -> str:
    parts = [p.strip().lower() for p in raw.split(",") if p.strip()]
    bad = [p for p in parts if not _RETENTION_PART.match(p)]
    if bad:
        raise ValueError(f"{bad[0]!r}: give periods like 400d or 57w, per site as site=90d")
    if sum("=" not in p for p in parts) > 1:
        raise ValueError("give one default period, and site=period for the others")
    return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Setting:
    """One configuration value: attribute name, environment default (as text) and help."""

    name: str
    default: str
    help: str
    cast: Callable[[str], Any]

    @property
    def env(self) -> str:
        return "METRONOME_" + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", "Address the HTTP server binds to.", _str),
    Setting("port", "8080", "Port the HTTP server listens on.", _int(0, 65535)),
    Setting("workers", "2", "Number of server worker processes.", _int(1, 256)),
    Setting(
        "data_dir",
        "./metronome-data",
        "Directory for the embedded store (and, later, the spool).",
        _str,
    ),
    Setting(
        "elasticsearch_url",
        "",
        "Elasticsearch URL, e.g. `http://localhost:9200`. Unset: use the embedded store.",
        _optional_str,
    ),
    Setting(
        "elasticsearch_timeout_s",
        "10",
        "Seconds to wait for one Elasticsearch request.",
        _int(1, 600),
    ),
    Setting(
        "index_prefix",
        "metronome",
        "Prefix of index and template names: ticks go to `<prefix>-ticks-YYYY.MM.DD`.",
        _str,
    ),
    Setting("index_shards", "1", "Primary shards of each new daily index.", _int(1, 1024)),
    Setting("index_replicas", "0", "Replicas of each new daily index.", _int(0, 16)),
    Setting(
        "index_fields_limit",
        "1000",
        "Most fields one daily index maps; further free parameters are kept in `_source`"
        " but not indexed.",
        _int(100, 100_000),
    ),
    Setting("max_body_bytes", "65536", "Largest body `POST /tick` accepts.", _int(1024, 1 << 30)),
    Setting(
        "max_batch_bytes",
        "4194304",
        "Largest body `POST /ticks` accepts.",
        _int(1024, 1 << 30),
    ),
    Setting("max_batch_ticks", "1000", "Most ticks in one `POST /ticks` body.", _int(1, 1_000_000)),
    Setting("max_params", "100", "Most free parameters in one tick.", _int(0, 10_000)),
    Setting(
        "body_timeout_s",
        "10",
        "Seconds a client has to send a request body; slower ones get `408 request_timeout`.",
        _int(1, 3600),
    ),
    Setting("keepalive_s", "5", "Seconds an idle keep-alive connection stays open.", _int(1, 3600)),
    Setting(
        "max_connections",
        "1000",
        "Most connections (and requests in progress) per"
        " server worker; past it the server answers 503 (0: no limit).",
        _int(0, 1_000_000),
    ),
    Setting(
        "rate_limit_per_ip",
        "100",
        "Ticks per second one client address may send"
        " without a key (browser ingest; IPv6 per /64), per worker process, once a site"
        " exists; 0: no limit.",
        _int(0, 1_000_000),
    ),
    Setting(
        "rate_limit_per_ip_burst",
        "1000",
        "Ticks one client address may send at once before `METRONOME_RATE_LIMIT_PER_IP` applies.",
        _int(1, 10_000_000),
    ),
    Setting(
        "rate_limit_per_site",
        "5000",
        "Ticks per second one site may send (with or"
        " without a key), per worker process, once a site exists; 0: no limit.",
        _int(0, 10_000_000),
    ),
    Setting(
        "rate_limit_per_site_burst",
        "50000",
        "Ticks one site may send at once before `METRONOME_RATE_LIMIT_PER_SITE` applies.",
        _int(1, 100_000_000),
    ),
    Setting(
        "sites_cache_s",
        "5",
        "Seconds each worker process reuses its copy of the sites"
        " and keys; new sites and keys, and revocations, take effect within it.",
        _int(1, 3600),
    ),
    Setting(
        "retention",
        "",
        "How long events are kept, applied every"
        " `METRONOME_RETENTION_INTERVAL_S` by the shipper: `400d`, `57w`, with per-site"
        " periods `400d,shop=90d` (empty: keep everything).",
        _retention,
    ),
    Setting(
        "retention_interval_s",
        "3600",
        "Seconds between two runs of the retention policy.",
        _int(1, 7 * 86400),
    ),
    Setting(
        "log_site",
        "default",
        "Site that access logs (`import`, `ship`, `restore`, the"
        " forward input) and forward-protocol ticks without a `site` are stored under.",
        _site,
    ),
    Setting("max_key_length", "64", "Longest free-parameter name.", _int(1, 1024)),
    Setting(
        "max_value_length",
        "2048",
        "Longest string value (free parameters, `url`, `referrer`, `id`).",
        _int(16, 1 << 20),
    ),
    Setting(
        "query_max_groups",
        "10000",
        "Most rows a `/query` answer is computed from when it must sort or gap-fill them"
        " all (ordering by a metric, a time dimension, a comparison).",
        _int(10, 1_000_000),
    ),
    Setting(
        "spool_max_bytes",
        "1073741824",
        "Most bytes the spool holds while the store is behind; past it ingestion answers 503.",
        _int(1 << 16, 1 << 50),
    ),
    Setting(
        "spool_segment_bytes",
        "67108864",
        "Size at which a worker starts a new spool segment file.",
        _int(1 << 12, 1 << 40),
    ),
    Setting(
        "ship_batch_docs",
        "1000",
        "Most documents in one bulk write to the store.",
        _int(1, 100_000),
    ),
    Setting(
        "ship_batch_bytes",
        "8388608",
        "Most bytes read from the spool for one bulk write.",
        _int(1 << 12, 1 << 30),
    ),
    Setting(
        "ship_poll_ms", "50", "How often an idle shipper looks for new events.", _int(1, 60_000)
    ),
    Setting(
        "shipper_nice",
        "5",
        "CPU priority `serve` lowers its shipper by (0 to 19): under a burst, answering"
        " ticks comes first and the backlog drains after.",
        _int(0, 19),
    ),
    Setting(
        "ship_backoff_max_s",
        "30",
        "Longest wait between retries of a failed bulk write.",
        _int(1, 3600),
    ),
    Setting(
        "trusted_proxies",
        "",
        "Comma-separated CIDR list of proxies whose `X-Forwarded-For` is believed.",
        _networks,
    ),
    Setting(
        "client_ip",
        "drop",
        "What is stored of a client's address: `drop` (nothing; the country and the"
        " daily visitor id are still derived from it), `truncate` (IPv4 /24, IPv6 /48) or"
        " `keep`.",
        _choice("drop", "truncate", "keep"),
    ),
    Setting(
        "referrer_blocklist",
        "semalt.com,buttons-for-website.com,darodar.com,ilovevitaly.com,best-seo-offer.com,"
        "priceg.com,hulfingtonpost.com,free-share-buttons.com",
        "Comma-separated referrer domains (and their subdomains) whose traffic is referrer"
        " spam: flagged `referrer.spam` and left out of reports like crawlers.",
        lambda raw: tuple(
            sorted({d.strip().lower().removeprefix("www.") for d in raw.split(",") if d.strip()})
        ),
    ),
    Setting(
        "forward",
        "off",
        "Accept Fluentd forward-protocol input (on/off); runs in the shipper process.",
        _bool,
    ),
    Setting("forward_host", "127.0.0.1", "Address the forward-protocol input binds to.", _str),
    Setting("forward_port", "24224", "Port of the forward-protocol input.", _int(0, 65535)),
    Setting(
        "log_format",
        "combined",
        "Access-log format: `combined`, `common`, `main` (NGINX, with X-Forwarded-For),"
        " `json`, or an NGINX `log_format` string.",
        _str,
    ),
    Setting(
        "url_rules",
        "",
        "Rules mapping request paths to items, `;`-separated, e.g."
        " `/datasets/{id}/download.{format} -> download`.",
        _str,
    ),
    Setting(
        "s3_bucket",
        "",
        "Bucket that `metronome ship` archives raw lines to (unset: no archive).",
        _optional_str,
    ),
    Setting("s3_prefix", "metronome/access", "Key prefix of archived log chunks.", _str),
    Setting(
        "s3_endpoint_url",
        "",
        "S3 endpoint for MinIO and other S3-compatible stores.",
        _optional_str,
    ),
    Setting("s3_region", "", "S3 region (unset: from the AWS configuration).", _optional_str),
    Setting(
        "kibana_url",
        "",
        "Kibana URL for `metronome kibana import` (its `--url` wins).",
        _optional_str,
    ),
    Setting(
        "kibana_username",
        "",
        "User for Kibana's basic authentication (unset: none).",
        _optional_str,
    ),
    Setting("kibana_password", "", "Password of `METRONOME_KIBANA_USERNAME`.", _optional_str),
    Setting(
        "kibana_api_key",
        "",
        "Kibana API key (the encoded form); used instead of the user and password.",
        _optional_str,
    ),
    Setting(
        "log_level",
        "info",
        "Log level: debug, info, warning or error.",
        _choice("debug", "info", "warning", "error"),
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Metronome's configuration. Build it with :meth:`from_env`; never mutate it."""

    host: str
    port: int
    workers: int
    data_dir: str
    elasticsearch_url: str | None
    elasticsearch_timeout_s: int
    index_prefix: str
    index_shards: int
    index_replicas: int
    index_fields_limit: int
    max_body_bytes: int
    max_batch_bytes: int
    max_batch_ticks: int
    max_params: int
    body_timeout_s: int
    keepalive_s: int
    max_connections: int
    rate_limit_per_ip: int
    rate_limit_per_ip_burst: int
    rate_limit_per_site: int
    rate_limit_per_site_burst: int
    sites_cache_s: int
    retention: str
    retention_interval_s: int
    log_site: str
    max_key_length: int
    max_value_length: int
    query_max_groups: int
    spool_max_bytes: int
    spool_segment_bytes: int
    ship_batch_docs: int
    ship_batch_bytes: int
    ship_poll_ms: int
    shipper_nice: int
    ship_backoff_max_s: int
    trusted_proxies: tuple[Network, ...]
    client_ip: str
    referrer_blocklist: tuple[str, ...]
    forward: bool
    forward_host: str
    forward_port: int
    log_format: str
    url_rules: str
    s3_bucket: str | None
    s3_prefix: str
    s3_endpoint_url: str | None
    s3_region: str | None
    kibana_url: str | None
    kibana_username: str | None
    kibana_password: str | None
    kibana_api_key: str | None
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Read every setting from ``env`` (``METRONOME_*``); ``overrides`` win."""
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.name in overrides:
                values[setting.name] = overrides.pop(setting.name)
                continue
            raw = env.get(setting.env, setting.default)
            try:
                values[setting.name] = setting.cast(raw)
            except ValueError as exc:
                raise ConfigError(f"{setting.env}: {exc}", variable=setting.env) from None
        if overrides:
            raise TypeError(f"unknown settings: {', '.join(sorted(overrides))}")
        prefix = values["index_prefix"]
        if (
            not prefix
            or prefix != prefix.lower()
            or not all(c.isalnum() or c in "-_" for c in prefix)
        ):
            raise ConfigError(
                "METRONOME_INDEX_PREFIX: use lowercase letters, digits, '-' and '_' only,"
                f" got {prefix!r}",
                variable="METRONOME_INDEX_PREFIX",
            )
        return cls(**values)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


assert [f.name for f in fields(Settings)] == [s.name for s in SETTINGS], "SETTINGS drifted"


def settings_table() -> str:
    """The README's configuration table, as Markdown."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(unset)"
        lines.append(f"| `{s.env}` | {default} | {s.help} |")
    return "\n".join(lines)
