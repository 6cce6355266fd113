"""Settings, read once from ``METRONOME_*`` environment variables, declared once.

Every setting is one field of :class:`Settings`, declared with :func:`setting`: its type
(the field's annotation), its default (the text an environment variable would hold), the
parser that turns text into that type, and a line of help. Everything else is derived from
that one declaration: its environment variable (``METRONOME_`` and the name in capitals:
``port``, ``METRONOME_PORT``), :func:`settings_reference` for the documentation, and
:func:`settings_table`, the README's configuration table (``metronome settings
--markdown``; a test fails when the README drifts from it).

A bad value fails at start-up with a message naming the variable and the value; nothing
else in Metronome reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

from metronome.errors import ConfigError

__all__ = [
    "Setting",
    "Settings",
    "setting",
    "settings_reference",
    "settings_table",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

ENV_PREFIX = "METRONOME_"


def _str(raw: str) -> str:
    return raw


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _int(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"expected a number from {minimum} to {maximum}, got {value}")
        return value

    return parse


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


def _domains(raw: str) -> tuple[str, ...]:
    return tuple(
        sorted({d.strip().lower().removeprefix("www.") for d in raw.split(",") if d.strip()})
    )


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"expected on or off, got {raw!r}")


def _site(raw: str) -> str:
    from metronome.sites.model import SITE_ID_PATTERN

    value = raw.strip()
    if not SITE_ID_PATTERN.match(value):
        raise ValueError(
            "a site id is 1 to 64 lowercase letters, digits, '-' and '_',"
            f" starting with a letter or digit; got {raw!r}"
        )
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _index_prefix(raw: str) -> str:
    if not raw or raw != raw.lower() or not all(c.isalnum() or c in "-_" for c in raw):
        raise ValueError(f"use lowercase letters, digits, '-' and '_' only, got {raw!r}")
    return raw


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
class _Declaration:
    default: str
    help: str
    parse: Callable[[str], Any]
    secret: bool = False


_DECLARATION = "metronome"  # the key of a field's metadata holding its declaration


def setting(
    default: str,
    help: str,
    parse: Callable[[str], T],
    *,
    secret: bool = False,
) -> T:
    """Declare one setting of :class:`Settings`: ``default`` is the text an environment
    variable would hold (parsed like one), ``help`` the line documentation shows, ``parse``
    turns text into the field's type or raises :class:`ValueError` saying what it expected.
    ``secret`` values are not shown by ``metronome settings``."""
    declaration = _Declaration(default, help, parse, secret=secret)
    return cast(T, field(metadata={_DECLARATION: declaration}))


@dataclass(frozen=True, slots=True)
class Settings:
    """Metronome's configuration. Build it with :meth:`from_env`; never mutate it."""

    host: str = setting("127.0.0.1", "Address the HTTP server binds to.", _str)
    port: int = setting("8080", "Port the HTTP server listens on.", _int(0, 65535))
    workers: int = setting("2", "Number of server worker processes.", _int(1, 256))
    data_dir: str = setting(
        "./metronome-data",
        "Directory for the embedded store (and, later, the spool).",
        _str,
    )
    elasticsearch_url: str | None = setting(
        "",
        "Elasticsearch URL, e.g. `http://localhost:9200`. Unset: use the embedded store.",
        _optional_str,
    )
    elasticsearch_timeout_s: int = setting(
        "10", "Seconds to wait for one Elasticsearch request.", _int(1, 600)
    )
    index_prefix: str = setting(
        "metronome",
        "Prefix of index and template names: ticks go to `<prefix>-ticks-YYYY.MM.DD`.",
        _index_prefix,
    )
    index_shards: int = setting("1", "Primary shards of each new daily index.", _int(1, 1024))
    index_replicas: int = setting("0", "Replicas of each new daily index.", _int(0, 16))
    index_fields_limit: int = setting(
        "1000",
        "Most fields one daily index maps; further free parameters are kept in `_source`"
        " but not indexed.",
        _int(100, 100_000),
    )
    max_body_bytes: int = setting(
        "65536", "Largest body `POST /tick` accepts.", _int(1024, 1 << 30)
    )
    max_batch_bytes: int = setting(
        "4194304", "Largest body `POST /ticks` accepts.", _int(1024, 1 << 30)
    )
    max_batch_ticks: int = setting(
        "1000", "Most ticks in one `POST /ticks` body.", _int(1, 1_000_000)
    )
    max_params: int = setting("100", "Most free parameters in one tick.", _int(0, 10_000))
    body_timeout_s: int = setting(
        "10",
        "Seconds a client has to send a request body; slower ones get `408 request_timeout`.",
        _int(1, 3600),
    )
    keepalive_s: int = setting(
        "5", "Seconds an idle keep-alive connection stays open.", _int(1, 3600)
    )
    max_connections: int = setting(
        "1000",
        "Most connections (and requests in progress) per"
        " server worker; past it the server answers 503 (0: no limit).",
        _int(0, 1_000_000),
    )
    rate_limit_per_ip: int = setting(
        "100",
        "Ticks per second one client address may send"
        " without a key (browser ingest; IPv6 per /64), per worker process, once a site"
        " exists; 0: no limit.",
        _int(0, 1_000_000),
    )
    rate_limit_per_ip_burst: int = setting(
        "1000",
        "Ticks one client address may send at once before `METRONOME_RATE_LIMIT_PER_IP` applies.",
        _int(1, 10_000_000),
    )
    rate_limit_per_site: int = setting(
        "5000",
        "Ticks per second one site may send (with or"
        " without a key), per worker process, once a site exists; 0: no limit.",
        _int(0, 10_000_000),
    )
    rate_limit_per_site_burst: int = setting(
        "50000",
        "Ticks one site may send at once before `METRONOME_RATE_LIMIT_PER_SITE` applies.",
        _int(1, 100_000_000),
    )
    sites_cache_s: int = setting(
        "5",
        "Seconds each worker process reuses its copy of the sites"
        " and keys; new sites and keys, and revocations, take effect within it.",
        _int(1, 3600),
    )
    retention: str = setting(
        "",
        "How long events are kept, applied every"
        " `METRONOME_RETENTION_INTERVAL_S` by the shipper: `400d`, `57w`, with per-site"
        " periods `400d,shop=90d` (empty: keep everything).",
        _retention,
    )
    retention_interval_s: int = setting(
        "3600", "Seconds between two runs of the retention policy.", _int(1, 7 * 86400)
    )
    log_site: str = setting(
        "default",
        "Site that access logs (`import`, `ship`, `restore`, the"
        " forward input) and forward-protocol ticks without a `site` are stored under.",
        _site,
    )
    max_key_length: int = setting("64", "Longest free-parameter name.", _int(1, 1024))
    max_value_length: int = setting(
        "2048",
        "Longest string value (free parameters, `url`, `referrer`, `id`).",
        _int(16, 1 << 20),
    )
    query_max_groups: int = setting(
        "10000",
        "Most rows a `/query` answer is computed from when it must sort or gap-fill them"
        " all (ordering by a metric, a time dimension, a comparison).",
        _int(10, 1_000_000),
    )
    spool_max_bytes: int = setting(
        "1073741824",
        "Most bytes the spool holds while the store is behind; past it ingestion answers 503.",
        _int(1 << 16, 1 << 50),
    )
    spool_segment_bytes: int = setting(
        "67108864",
        "Size at which a worker starts a new spool segment file.",
        _int(1 << 12, 1 << 40),
    )
    ship_batch_docs: int = setting(
        "1000", "Most documents in one bulk write to the store.", _int(1, 100_000)
    )
    ship_batch_bytes: int = setting(
        "8388608",
        "Most bytes read from the spool for one bulk write.",
        _int(1 << 12, 1 << 30),
    )
    ship_poll_ms: int = setting(
        "50", "How often an idle shipper looks for new events.", _int(1, 60_000)
    )
    shipper_nice: int = setting(
        "5",
        "CPU priority `serve` lowers its shipper by (0 to 19): under a burst, answering"
        " ticks comes first and the backlog drains after.",
        _int(0, 19),
    )
    ship_backoff_max_s: int = setting(
        "30", "Longest wait between retries of a failed bulk write.", _int(1, 3600)
    )
    trusted_proxies: tuple[Network, ...] = setting(
        "",
        "Comma-separated CIDR list of proxies whose `X-Forwarded-For` is believed.",
        _networks,
    )
    client_ip: str = setting(
        "drop",
        "What is stored of a client's address: `drop` (nothing; the country and the"
        " daily visitor id are still derived from it), `truncate` (IPv4 /24, IPv6 /48) or"
        " `keep`.",
        _choice("drop", "truncate", "keep"),
    )
    referrer_blocklist: tuple[str, ...] = setting(
        "semalt.com,buttons-for-website.com,darodar.com,ilovevitaly.com,best-seo-offer.com,"
        "priceg.com,hulfingtonpost.com,free-share-buttons.com",
        "Comma-separated referrer domains (and their subdomains) whose traffic is referrer"
        " spam: flagged `referrer.spam` and left out of reports like crawlers.",
        _domains,
    )
    forward: bool = setting(
        "off",
        "Accept Fluentd forward-protocol input (on/off); runs in the shipper process.",
        _bool,
    )
    forward_host: str = setting("127.0.0.1", "Address the forward-protocol input binds to.", _str)
    forward_port: int = setting("24224", "Port of the forward-protocol input.", _int(0, 65535))
    log_format: str = setting(
        "combined",
        "Access-log format: `combined`, `common`, `main` (NGINX, with X-Forwarded-For),"
        " `json`, or an NGINX `log_format` string.",
        _str,
    )
    url_rules: str = setting(
        "",
        "Rules mapping request paths to items, `;`-separated, e.g."
        " `/datasets/{id}/download.{format} -> download`.",
        _str,
    )
    s3_bucket: str | None = setting(
        "",
        "Bucket that `metronome ship` archives raw lines to (unset: no archive).",
        _optional_str,
    )
    s3_prefix: str = setting("metronome/access", "Key prefix of archived log chunks.", _str)
    s3_endpoint_url: str | None = setting(
        "", "S3 endpoint for MinIO and other S3-compatible stores.", _optional_str
    )
    s3_region: str | None = setting(
        "", "S3 region (unset: from the AWS configuration).", _optional_str
    )
    kibana_url: str | None = setting(
        "", "Kibana URL for `metronome kibana import` (its `--url` wins).", _optional_str
    )
    kibana_username: str | None = setting(
        "", "User for Kibana's basic authentication (unset: none).", _optional_str
    )
    kibana_password: str | None = setting(
        "", "Password of `METRONOME_KIBANA_USERNAME`.", _optional_str, secret=True
    )
    kibana_api_key: str | None = setting(
        "",
        "Kibana API key (the encoded form); used instead of the user and password.",
        _optional_str,
        secret=True,
    )
    log_level: str = setting(
        "info",
        "Log level: debug, info, warning or error.",
        _choice("debug", "info", "warning", "error"),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Read every setting from ``env`` (``METRONOME_*``); ``overrides`` win."""
        unknown = set(overrides) - {s.name for s in _SETTINGS}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for s in _SETTINGS:
            if s.name in overrides:
                values[s.name] = overrides[s.name]
            else:
                values[s.name] = _parse_env(s.env, s.parse, env.get(s.env, s.default))
        return cls(**values)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting as documentation shows it (see :func:`settings_reference`)."""

    name: str
    """The :class:`Settings` attribute."""
    env: str
    """Its environment variable."""
    default: str
    """The default, as the environment variable's text; empty: unset."""
    help: str
    secret: bool
    """Not shown by ``metronome settings``."""
    parse: Callable[[str], Any] = field(repr=False, compare=False)
    """Text to value."""


def _declared() -> tuple[Setting, ...]:
    declared = []
    for f in fields(Settings):
        d = f.metadata.get(_DECLARATION)
        if not isinstance(d, _Declaration):
            raise TypeError(f"Settings.{f.name} is not declared with setting()")
        declared.append(
            Setting(
                name=f.name,
                env=ENV_PREFIX + f.name.upper(),
                default=d.default,
                help=d.help,
                secret=d.secret,
                parse=d.parse,
            )
        )
    return tuple(declared)


_SETTINGS = _declared()


def settings_reference() -> list[Setting]:
    """Every setting, in declaration order, for documentation to render."""
    return list(_SETTINGS)


def _parse_env(variable: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}", variable=variable) from None


def settings_table() -> str:
    """The README's configuration table, as Markdown."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for s in _SETTINGS:
        default = f"`{s.default}`" if s.default else "(unset)"
        lines.append(f"| `{s.env}` | {default} | {s.help} |")
    return "\n".join(lines)
