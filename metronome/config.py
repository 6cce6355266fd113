"""Settings, declared once: environment variables and the configuration file.

Every setting is one field of :class:`Settings`, declared with :func:`setting`: its type
(the field's annotation), its default (the text an environment variable would hold), the
parser that turns text into that type, and a line of help. Everything else is derived from
that one declaration:

- its environment variable: ``METRONOME_`` and the name in capitals (``port``:
  ``METRONOME_PORT``);
- its configuration-file key: the name itself, at the top level of the TOML file that
  ``METRONOME_CONFIG`` names (``port = 8080``), as a value of its TOML type (an integer for
  a number, a boolean for on/off, an array of strings for a list) or as a string holding
  what the environment variable would;
- :func:`settings_reference`, one :class:`Setting` per declaration for the documentation,
  and :func:`settings_table`, the table of the docs site's settings reference, rendered
  from them at every build (also ``metronome settings --markdown``).

A few top-level tables of the file are *sections*, declared with :func:`section`
(``[[collectors]]``, ``[[monitors]]``, ``[event_schemas]``, ``[[apps]]``): they have no
environment variable, and :class:`Settings` keeps their parsed TOML for the features that
use them to validate.

The environment wins over the file, and the file over the defaults; a variable that is set,
even to an empty value, wins. A bad value, an unknown key or a missing file fails at
start-up with a message naming the variable (or the file and key) and the value; nothing
else in Metronome reads the environment or the file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, timedelta, timezone, tzinfo
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast, get_args, get_origin, get_type_hints

from metronome.errors import ConfigError

__all__ = [
    "CONFIG_VARIABLE",
    "Setting",
    "Settings",
    "masked_url",
    "read_secret",
    "section",
    "setting",
    "settings_reference",
    "settings_table",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

ENV_PREFIX = "METRONOME_"
FILE_SUFFIX = "_FILE"
"""A secret's variable with this suffix names a file holding it (Docker and Kubernetes
secrets); the file key is the setting's key with ``_file``."""
CONFIG_VARIABLE = "METRONOME_CONFIG"
"""The variable naming the configuration file (``metronome --config`` sets it)."""


def _str(raw: str) -> str:
    return raw


def _optional_str(raw: str) -> str | None:
    return raw.strip() or None


def _time_zone(raw: str) -> tzinfo:
    """An IANA time zone (``Europe/Paris``), ``UTC``, or an offset (``+01:00``)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    text = raw.strip()
    offset = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24):
            raise ValueError(f"{raw!r} is not an offset: at most +23:59")
        return timezone(-delta if sign == "-" else delta)
    if text.upper() in ("UTC", "Z", ""):
        return UTC
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{raw!r} is not a time zone: expected a name such as Europe/Paris, UTC, or an"
            " offset such as +01:00"
        ) from None


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


def _duration_s(minimum: int, maximum: int) -> Callable[[str], int]:
    """Seconds from ``90s``, ``30m``, ``2h`` or a bare number of seconds."""

    def parse(raw: str) -> int:
        found = re.fullmatch(r"\s*(\d{1,7})\s*(s|m|min|h)?\s*", raw)
        if not found:
            raise ValueError(f"expected a duration such as 30m, 1h or 900s, got {raw!r}")
        value = int(found[1]) * {"s": 1, "m": 60, "min": 60, "h": 3600}[found[2] or "s"]
        if not minimum <= value <= maximum:
            raise ValueError(f"expected {minimum}s to {maximum}s, got {raw!r}")
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
    from metronome.events.fields import SITE_ID_PATTERN

    value = raw.strip()
    if not SITE_ID_PATTERN.match(value):
        raise ValueError(
            "a site id is 1 to 64 lowercase letters, digits, '-' and '_',"
            f" starting with a letter or digit; got {raw!r}"
        )
    return value


def _urls(raw: str) -> str | None:
    urls = [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest:
            raise ValueError(f"expected http:// or https:// URLs, got {url!r}")
        if "@" in rest.split("/")[0]:
            # the URL would carry a secret into every message that names it
            raise ValueError(
                "put credentials in the _USERNAME and _PASSWORD (or _API_KEY) settings,"
                " not in the URL"
            )
    return ",".join(urls) or None


def _existing_file(raw: str) -> str | None:
    path = raw.strip()
    if path and not Path(path).is_file():
        raise ValueError(f"no file at {path!r}")
    return path or None


def _fingerprint(raw: str) -> str | None:
    value = raw.strip().replace(":", "").lower()
    if value and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError("expected a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return value or None


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


def _site_keys(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        site, sep, key = part.partition("=")
        if not sep or not key.strip():
            raise ValueError("give site=key pairs, comma-separated (the key is not shown)")
        pairs.append((_site(site), key.strip()))
    keys = [key for _, key in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("each site needs a key of its own: two sites share one")
    return tuple(pairs)


def _forward_users(raw: str) -> tuple[tuple[str, str, str | None], ...]:
    users: list[tuple[str, str, str | None]] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, password = part.strip().partition(":")
        user, at, site = name.partition("@")
        if not sep or not user or not password:
            raise ValueError(
                "give user:password or user@site:password, comma-separated (not shown)"
            )
        users.append((user, password, _site(site) if at else None))
    if len({u for u, _, _ in users}) != len(users):
        raise ValueError("a user is given twice")
    return tuple(users)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/?#]*):[^@/?#]*@")


def masked_url(text: str) -> str:
    """``text`` with the password of every URL in it masked (``http://user:***@host``): how
    a URL is shown on the screen or in a log line, never with its credentials."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


@dataclass(frozen=True, slots=True)
class _Declaration:
    default: str
    help: str
    parse: Callable[[str], Any] | None  # None: a section, kept as parsed TOML
    has_env: bool = True
    has_key: bool = True
    secret: bool = False


_DECLARATION = "metronome"  # the key of a field's metadata holding its declaration


def setting(
    default: str,
    help: str,
    parse: Callable[[str], T],
    *,
    secret: bool = False,
    in_file: bool = True,
) -> T:
    """Declare one setting of :class:`Settings`: ``default`` is the text an environment
    variable would hold (parsed like one), ``help`` the line documentation shows, ``parse``
    turns text into the field's type or raises :class:`ValueError` saying what it expected.
    ``secret`` values are not shown by ``metronome settings``; ``in_file=False`` settings
    have no configuration-file key."""
    declaration = _Declaration(default, help, parse, has_key=in_file, secret=secret)
    # a secret stays out of repr(settings), and so out of logs and tracebacks that show it
    return cast(T, field(repr=not secret, metadata={_DECLARATION: declaration}))


def section(help: str) -> Any:
    """Declare a top-level table of the configuration file kept as parsed TOML: an array of
    tables (``[[name]]``) for a field typed ``tuple[dict[str, Any], ...]``, a table
    (``[name]``) for one typed ``Mapping[str, Any]``. Empty when the file has none. Left out
    of ``hash(settings)``: parsed TOML is not hashable, and the settings stay so."""
    declaration = _Declaration("", help, None, has_env=False)
    return field(hash=False, metadata={_DECLARATION: declaration})


@dataclass(frozen=True, slots=True)
class Settings:
    """Metronome's configuration. Build it with :meth:`from_env`; never mutate it."""

    config: str | None = setting(
        "",
        "TOML configuration file whose keys are the settings below (`metronome --config`"
        " sets it); the environment wins over it. Unset: no file.",
        _optional_str,
        in_file=False,
    )
    host: str = setting("127.0.0.1", "Address the HTTP server binds to.", _str)
    port: int = setting("8080", "Port the HTTP server listens on.", _int(0, 65535))
    workers: int = setting("2", "Number of server worker processes.", _int(1, 256))
    data_dir: str = setting(
        "./metronome-data",
        "Directory for the spool, the embedded store, the sites cache and the daily salts.",
        _str,
    )
    elasticsearch_url: str | None = setting(
        "",
        "Elasticsearch URL, e.g. `https://localhost:9200`, or several nodes' URLs,"
        " comma-separated (a dead node is avoided). Unset: use the embedded store.",
        _urls,
    )
    elasticsearch_timeout_s: int = setting(
        "10", "Seconds to wait for one Elasticsearch request.", _int(1, 600)
    )
    # -- secured connections (issue 18) --
    elasticsearch_cloud_id: str | None = setting(
        "",
        "Elastic Cloud deployment's Cloud ID, used instead of `METRONOME_ELASTICSEARCH_URL`.",
        _optional_str,
    )
    elasticsearch_api_key: str | None = setting(
        "",
        "Elasticsearch API key: `id:api_key` or the encoded form (wins over user and password).",
        _optional_str,
        secret=True,
    )
    elasticsearch_username: str | None = setting(
        "", "User for Elasticsearch's basic authentication (unset: none).", _optional_str
    )
    elasticsearch_password: str | None = setting(
        "", "Password of `METRONOME_ELASTICSEARCH_USERNAME`.", _optional_str, secret=True
    )
    elasticsearch_ca_certs: str | None = setting(
        "",
        "PEM file of the CA that signed the cluster's certificate (unset: the system's CAs).",
        _existing_file,
    )
    elasticsearch_ca_fingerprint: str | None = setting(
        "",
        "SHA-256 fingerprint of the certificate the nodes present (hex, colons allowed;"
        " `openssl x509 -noout -fingerprint -sha256`), checked instead of a CA file. Not"
        " the CA's: Metronome's asynchronous client compares the node's own certificate.",
        _fingerprint,
    )
    elasticsearch_client_cert: str | None = setting(
        "", "PEM certificate Metronome shows the cluster (mutual TLS).", _existing_file
    )
    elasticsearch_client_key: str | None = setting(
        "", "PEM private key of `METRONOME_ELASTICSEARCH_CLIENT_CERT`.", _existing_file
    )
    elasticsearch_verify_certs: bool = setting(
        "on",
        "Check the cluster's TLS certificate (on/off); `off` logs a warning at every start.",
        _bool,
    )
    opensearch_url: str | None = setting(
        "",
        "OpenSearch URL, or several nodes' URLs, comma-separated: the store is OpenSearch"
        " (instead of `METRONOME_ELASTICSEARCH_URL`); the `METRONOME_ELASTICSEARCH_*`"
        " connection settings apply to it too (API keys and Cloud IDs excepted).",
        _urls,
    )
    opensearch_aws_sigv4: bool = setting(
        "off",
        "Sign OpenSearch requests with AWS SigV4 (AWS OpenSearch Service), with the"
        " credentials and region of the usual boto3 chain (on/off).",
        _bool,
    )
    opensearch_aws_service: str = setting(
        "es",
        "AWS service name SigV4 signs for: `es` (a managed domain) or `aoss` (Serverless).",
        _choice("es", "aoss"),
    )
    elasticsearch_retries: int = setting(
        "2",
        "Times one Elasticsearch request is retried (on another node when there are"
        " several) after a connection error, a timeout or a 502/503/504.",
        _int(0, 10),
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
        "Seconds a client has to send a request's line and headers, then its body; slower"
        " ones get `408 request_timeout`.",
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
    max_connections_per_address: int = setting(
        "64",
        "Most connections one client address (IPv6: one /64) may hold open per server"
        " worker; past it a new one gets `429 too_many_connections` before it is read"
        " (peers in `METRONOME_TRUSTED_PROXIES` are exempt; 0: no limit).",
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
    max_line_bytes: int = setting(
        "65536",
        "Longest access-log line (`import`, `ship`, `restore`), in bytes: a longer one is"
        " skipped in bounded memory and rejected as `line_too_long`.",
        _int(1024, 16 << 20),
    )
    rejects_max_bytes: int = setting(
        str(10 << 20),
        "Size at which `rejects.ndjson` (the access-log lines that were not stored) is"
        " renamed `rejects.1.ndjson`, replacing the previous one.",
        _int(4096, 1 << 40),
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
    # -- the forward input's credentials and bounds (issue 16) ------------------------------
    forward_shared_key: str | None = setting(
        "",
        "Shared key of Fluentd's `<security>` handshake the forward input asks every"
        " connection for; its records go to `METRONOME_LOG_SITE` (or, with"
        " `METRONOME_FORWARD_RECORD_SITE`, to a tick's `site`). Unset with no"
        " `METRONOME_FORWARD_SITE_KEYS`: no handshake, allowed on a loopback address only.",
        _optional_str,
        secret=True,
    )
    forward_site_keys: tuple[tuple[str, str], ...] = setting(
        "",
        "Per-site shared keys, `site=key` comma-separated: a connection that authenticates"
        " with a site's key sends that site's ticks and access lines, whatever the records"
        " say.",
        _site_keys,
        secret=True,
    )
    forward_users: tuple[tuple[str, str, str | None], ...] = setting(
        "",
        "Users the forward handshake also asks for (Fluentd's `<user>`), comma-separated"
        " `user:password`, or `user@site:password` for a user who sends that site's"
        " records; needs a shared key.",
        _forward_users,
        secret=True,
    )
    forward_record_site: bool = setting(
        "off",
        "Let a forwarded tick's `site` field choose its site (on/off), for connections whose"
        " key names no site: only for a sender you trust with every site.",
        _bool,
    )
    forward_max_frame_bytes: int = setting(
        str(16 << 20),
        "Largest forward-protocol frame, in bytes, as received and once decompressed; keep"
        " Fluentd's `chunk_limit_size` below it.",
        _int(1024, 1 << 30),
    )
    forward_max_frame_entries: int = setting(
        "10000",
        "Most entries in one forward-protocol frame, counted while decoding; keep Fluentd's"
        " `chunk_limit_records` below it.",
        _int(1, 1_000_000),
    )
    forward_connection_entries_per_s: int = setting(
        "20000",
        "Entries per second one forward connection is read at; a faster sender waits.",
        _int(1, 10_000_000),
    )
    forward_max_connections: int = setting(
        "64", "Forward-protocol connections open at once; more are closed.", _int(1, 100_000)
    )
    log_format: str = setting(
        "auto",
        "Access-log format (`--format`): `auto` (recognised from the first lines, then line"
        " by line), a format name (`metronome import --help` lists them), an NGINX"
        " `log_format` string or an Apache `LogFormat` string.",
        _str,
    )
    log_tz: tzinfo = setting(
        "UTC",
        "Time zone of access-log times written without an offset (W3C, HAProxy; `--tz`):"
        " a name such as `Europe/Paris`, `UTC`, or an offset such as `+01:00`.",
        _time_zone,
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
    # live subscriptions and the dashboard (metronome/live/)
    live_ping_s: int = setting(
        "15",
        "Seconds between the pings a live WebSocket connection gets; one that answers"
        " neither of two pings in a row is closed (4000) and its subscriptions freed.",
        _int(1, 3600),
    )
    live_max_connections: int = setting(
        "1000",
        "Most live connections (WebSocket and Server-Sent Events) per server worker; past"
        " it a new one is closed with 4029.",
        _int(1, 1_000_000),
    )
    live_max_connections_per_site: int = setting(
        "200",
        "Most live connections one site may hold per server worker; past it a new one is"
        " closed with 4029.",
        _int(1, 1_000_000),
    )
    live_max_subscriptions: int = setting(
        "20", "Most subscriptions on one live connection; past it 4030.", _int(1, 1000)
    )
    live_max_message_bytes: int = setting(
        "65536",
        "Largest message a live client may send (a subscription's query); past it the"
        " connection is closed with 1009.",
        _int(1024, 16_777_216),
    )
    live_buffer_bytes: int = setting(
        "1048576",
        "Bytes of pushes a live connection may leave unread (after coalescing) before it is"
        " closed as too slow (4008); a slow reader never slows the others.",
        _int(1024, 1_073_741_824),
    )
    live_min_frequency_ms: int = setting(
        "500",
        "Shortest push interval a subscription may ask for, in milliseconds.",
        _int(100, 3_600_000),
    )
    live_token_ttl_s: int = setting(
        "3600",
        "Seconds a token minted by `POST /live/token` (the dashboard's sign-in) stays valid.",
        _int(60, 604_800),
    )
    live_secret: str | None = setting(
        "",
        "Secret that signs live and dashboard tokens; give every host the same one. Unset:"
        " a random one kept in the data directory (`live-secret`, mode 0600).",
        _optional_str,
        secret=True,
    )
    # KPIs and insights (issue 22)
    kpi_interval_s: int = setting(
        "60",
        "Seconds between two evaluations of every KPI by the worker (0: KPIs are not evaluated).",
        _int(0, 86400),
    )
    insight_webhook_secret: str | None = setting(
        "",
        "Key that signs insight webhooks: `X-Metronome-Signature: sha256=<HMAC-SHA256 of the"
        " body>` (unset: unsigned).",
        _optional_str,
        secret=True,
    )
    # -- telemetry (issue 19): apps, the binoculars and upgrade-responder endpoints --
    telemetry_app: str = setting(
        "telemetry",
        "The app `/v1/metrics`, `/v1/checkupgrade` and `/v1/healthcheck` answer for (other"
        " apps answer under `/apps/{app}/v1/...`); it works with the defaults until"
        " `metronome apps create` stores it.",
        _site,
    )
    telemetry_max_body_bytes: int = setting(
        "262144",
        "Largest body of a telemetry request (`413 payload_too_large` above).",
        _int(1024, 64 << 20),
    )
    telemetry_backlog_bytes: int = setting(
        "67108864",
        "Spool backlog past which telemetry clients are told to report less often: the"
        " app's interval times 1 + each full amount behind (at most 8 times).",
        _int(0, 1 << 50),
    )
    telemetry_rate_per_ip: int = setting(
        "20",
        "Telemetry requests a second one client address may send (IPv6 per /64); 0 turns it off.",
        _int(0, 1_000_000),
    )
    telemetry_rate_per_ip_burst: int = setting(
        "200",
        "Telemetry requests one address may send at once before the rate applies.",
        _int(1, 100_000_000),
    )
    telemetry_rate_per_instance: int = setting(
        "6",
        "Telemetry requests a minute one instance (its instance tag) may send, also its"
        " burst; 0 turns it off.",
        _int(0, 1_000_000),
    )
    telemetry_raw_days: int = setting(
        "0",
        "Days raw telemetry points are kept, for apps that set none (0: as `METRONOME_RETENTION`).",
        _int(0, 100_000),
    )
    telemetry_rollup_interval_s: int = setting(
        "60",
        "Seconds between the worker's passes over telemetry rollups and retention"
        " (0: none; `metronome apps roll` runs one).",
        _int(0, 7 * 86400),
    )
    telemetry_rollup_days: int = setting(
        "0",
        "Days telemetry rollups are kept, for apps that set none (0: forever).",
        _int(0, 100_000),
    )
    # --- visits (issue 25) ---
    visit_gap_s: int = setting(
        "30m",
        "A visitor's events further apart than this start a new visit (`30m`, `1h`, `900s`).",
        _duration_s(60, 86400),
    )
    related_rollups: bool = setting(
        "on",
        "Answer related items on the embedded store from basket counts kept per UTC day,"
        " on Elasticsearch from the basket events' copies in one index (on/off); off counts"
        " every candidate's baskets from its events (slower, same answers).",
        _bool,
    )
    visit_state_max: int = setting(
        "100000",
        "Visitors whose open visit the shipper keeps in memory (those whose visit changed"
        " least recently leave first; the state on disk keeps them).",
        _int(100, 100_000_000),
    )
    collectors: tuple[dict[str, Any], ...] = section(
        "Collectors the worker runs (reserved: checked by the collectors feature)."
    )
    monitors: tuple[dict[str, Any], ...] = section(
        "Monitors the worker runs (reserved: checked by the monitors feature)."
    )
    event_schemas: Mapping[str, Any] = section(
        "Typed events' schemas by event name (reserved: checked by the typed-events feature)."
    )
    apps: tuple[dict[str, Any], ...] = section(
        "Apps that report telemetry (reserved: checked by the telemetry feature)."
    )
    # -- destinations (issue 23): accepted events forwarded to other tools ---------------
    destinations: tuple[dict[str, Any], ...] = section(
        "Where the worker forwards a site's accepted events (webhook, amplitude, ga4,"
        " metronome, rabbitmq): see the destinations guide. Secrets by reference only"
        " (`<key>_env`, `<key>_file`)."
    )
    # -- RabbitMQ in (issue 23): queues the worker consumes --------------------------------
    amqp_url: str | None = setting(
        "",
        "AMQP URL of the RabbitMQ that `[[queues]]` without a `url` of their own consume"
        " from, e.g. `amqp://user:password@rabbitmq:5672/%2F` (shown masked).",
        _optional_str,
        secret=True,
    )
    queues: tuple[dict[str, Any], ...] = section(
        "RabbitMQ queues `metronome worker` consumes (checked by the queue input;"
        " see docs/guides/rabbitmq.md)."
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Read every setting from ``env`` (``METRONOME_*``), then from the configuration
        file ``METRONOME_CONFIG`` names, then the defaults; ``overrides`` win over all."""
        unknown = set(overrides) - {s.name for s in _SETTINGS}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        path = env.get(CONFIG_VARIABLE, "").strip()
        in_file = _read_file(path) if path else {}
        values: dict[str, Any] = {}
        for s in _SETTINGS:
            if s.name in overrides:
                values[s.name] = overrides[s.name]
            elif s.env is not None and s.parse is not None and s.env in env:
                values[s.name] = _parse_env(s.env, s.parse, env[s.env])
            elif s.secret and s.env is not None and s.parse and s.env + FILE_SUFFIX in env:
                variable = s.env + FILE_SUFFIX
                values[s.name] = _parse_env(variable, s.parse, _secret_file(variable, env))
            elif s.key is not None and s.key in in_file:
                values[s.name] = _parse_toml(s, in_file[s.key], path)
            elif s.secret and s.key is not None and s.parse and f"{s.key}_file" in in_file:
                key = f"{s.key}_file"
                value = _parse_toml(s, in_file[key], path)
                values[s.name] = _parse_env(key, s.parse, _secret_file(key, {key: value or ""}))
            elif s.parse is not None:
                values[s.name] = s.parse(s.default)
            else:
                values[s.name] = MappingProxyType({}) if s.type == "table" else ()
        settings = cls(**values)
        settings._check_elasticsearch()
        return settings

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def _check_elasticsearch(self) -> None:
        """Settings of the Elasticsearch connection that only make sense together."""
        es, os_url = "METRONOME_ELASTICSEARCH_", "METRONOME_OPENSEARCH_URL"
        problems = (
            (
                self.elasticsearch_username and not self.elasticsearch_password,
                "USERNAME",
                f"is set without {es}PASSWORD",
            ),
            (
                self.elasticsearch_password and not self.elasticsearch_username,
                "PASSWORD",
                f"is set without {es}USERNAME",
            ),
            (
                self.elasticsearch_client_key and not self.elasticsearch_client_cert,
                "CLIENT_KEY",
                f"is set without {es}CLIENT_CERT",
            ),
            (
                self.elasticsearch_cloud_id and self.elasticsearch_url,
                "CLOUD_ID",
                f"conflicts with {es}URL",
            ),
            (
                self.opensearch_url and (self.elasticsearch_url or self.elasticsearch_cloud_id),
                "URL",
                f"conflicts with {os_url}: choose one store",
            ),
            (
                self.opensearch_url and self.elasticsearch_api_key,
                "API_KEY",
                "does not work with OpenSearch: use a user and password",
            ),
            (
                self.elasticsearch_ca_fingerprint and self.elasticsearch_client_cert,
                "CA_FINGERPRINT",
                f"cannot be used with a client certificate; use {es}CA_CERTS with {es}CLIENT_CERT",
            ),
        )
        for wrong, name, problem in problems:
            if wrong:
                raise ConfigError(f"{es}{name} {problem}", variable=es + name)

    @property
    def uses_elasticsearch(self) -> bool:
        """Whether the store is Elasticsearch or OpenSearch (a URL or a Cloud ID is set)."""
        return bool(self.elasticsearch_url or self.elasticsearch_cloud_id or self.opensearch_url)

    @property
    def search_engine(self) -> str:
        """``opensearch`` or ``elasticsearch``: which client and dialect the store uses."""
        return "opensearch" if self.opensearch_url else "elasticsearch"


@dataclass(frozen=True, slots=True)
class Setting:
    """One declared setting as documentation shows it (see :func:`settings_reference`)."""

    name: str
    """The :class:`Settings` attribute."""
    env: str | None
    """Its environment variable; None for a section of the configuration file."""
    key: str | None
    """Its configuration-file key (top level); None for ``METRONOME_CONFIG`` itself."""
    type: str
    """The TOML type of its file value: integer, boolean, string, array of strings, array
    of tables or table."""
    default: str
    """The default, as the environment variable's text; empty: unset."""
    help: str
    secret: bool
    """Not shown by ``metronome settings``."""
    parse: Callable[[str], Any] | None = field(repr=False, compare=False)
    """Text to value; None for a section."""


def _toml_type(hint: Any) -> str:
    if hint is bool:
        return "boolean"
    if hint is int:
        return "integer"
    if hint in (str, str | None, tzinfo):
        return "string"
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        return "array of tables" if get_origin(item) is dict else "array of strings"
    if get_origin(hint) is Mapping:
        return "table"
    raise TypeError(f"no TOML type for {hint!r}")


def _declared() -> tuple[Setting, ...]:
    hints = get_type_hints(Settings)
    declared = []
    for f in fields(Settings):
        d = f.metadata.get(_DECLARATION)
        if not isinstance(d, _Declaration):
            raise TypeError(f"Settings.{f.name} is not declared with setting() or section()")
        declared.append(
            Setting(
                name=f.name,
                env=ENV_PREFIX + f.name.upper() if d.has_env else None,
                key=f.name if d.has_key else None,
                type=_toml_type(hints[f.name]),
                default=d.default,
                help=d.help,
                secret=d.secret,
                parse=d.parse,
            )
        )
    return tuple(declared)


_SETTINGS = _declared()


def settings_reference() -> list[Setting]:
    """Every setting and section, in declaration order, for documentation to render."""
    return list(_SETTINGS)


def _secret_file(variable: str, env: Mapping[str, str]) -> str:
    """The secret held by the file ``env[variable]`` names, without its final newline."""
    path = env[variable].strip()
    try:
        return Path(path).read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(
            f"{variable}: cannot read {path!r}: {reason}", variable=variable
        ) from None


def _parse_env(variable: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}", variable=variable) from None


_ARTICLE = {"array": "an", "integer": "an"}


def _a(kind: str) -> str:
    return f"{_ARTICLE.get(kind.split()[0], 'a')} {kind}"


_TOML_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),  # before int: a TOML boolean is a Python int too
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
)


def _kind_of(value: Any) -> str:
    """What a TOML value is, with its article: "an integer", "a table"."""
    return _a(next((name for t, name in _TOML_KINDS if isinstance(value, t)), "date or time"))


def _toml_text(s: Setting, value: Any) -> str:
    """The text an environment variable would hold for a file value of ``s``'s type."""
    if isinstance(value, str):
        return value
    if s.type == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if s.type == "boolean" and isinstance(value, bool):
        return "on" if value else "off"
    if s.type == "array of strings" and isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return ",".join(value)
        raise ValueError("expected an array of strings, got an array holding other values")
    also = "" if s.type == "string" else " (or a string)"
    raise ValueError(f"expected {_a(s.type)}{also}, got {_kind_of(value)}")


def _section(s: Setting, value: Any) -> Any:
    if s.type == "table":
        if not isinstance(value, dict):
            raise ValueError(f"expected a table ([{s.key}]), got {_kind_of(value)}")
        return MappingProxyType(value)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"expected an array of tables ([[{s.key}]]), got {_kind_of(value)}")
    return tuple(value)


def _parse_toml(s: Setting, value: Any, path: str) -> Any:
    try:
        if s.parse is None:
            return _section(s, value)
        return s.parse(_toml_text(s, value))
    except ValueError as exc:
        raise ConfigError(f"{path}: {s.key}: {exc}", file=path, key=s.key) from None


def _read_file(path: str) -> dict[str, Any]:
    """The configuration file's top-level keys, each one a declared key."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"{CONFIG_VARIABLE}: no configuration file at {path!r}", variable=CONFIG_VARIABLE
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{CONFIG_VARIABLE}: cannot read {path!r}: {exc.strerror}", variable=CONFIG_VARIABLE
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", file=path) from None
    keys = [s.key for s in _SETTINGS if s.key is not None]
    keys += [f"{s.key}_file" for s in _SETTINGS if s.key is not None and s.secret]
    for key in table:
        if key not in keys:
            hint = difflib.get_close_matches(key.lower().removeprefix("metronome_"), keys, 1)
            also = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{path}: unknown key {key!r}{also}", file=path, key=key)
    return table


def settings_table() -> str:
    """The settings reference table (docs site, ``metronome settings --markdown``)."""
    lines = [
        "| variable | file key | type | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in _SETTINGS:
        variable = f"`{s.env}`" if s.env else "-"
        if s.key is None:
            key = "-"
        elif s.type == "array of tables":
            key = f"`[[{s.key}]]`"
        elif s.type == "table":
            key = f"`[{s.key}]`"
        else:
            key = f"`{s.key}`"
        default = f"`{s.default}`" if s.default else "(unset)"
        also = ""
        if s.secret and s.env:
            also = f" Or from a file: `{s.env}{FILE_SUFFIX}` (file key `{s.key}_file`)."
        lines.append(f"| {variable} | {key} | {s.type} | {default} | {s.help}{also} |")
    return "\n".join(lines)


def read_secret(
    table: Mapping[str, Any], key: str, where: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """A secret a configuration-file section holds by reference, never in the file itself:
    ``<key>_env`` names an environment variable holding it, ``<key>_file`` a file holding
    it (surrounding whitespace dropped; keep it mode 0600). None when neither is given.
    ValueError names the key (``where.<key>_env``) and never shows the secret."""
    if key in table:
        raise ValueError(
            f'{where}.{key}: give the secret by reference, {key}_env = "VARIABLE" or'
            f' {key}_file = "path", never in the file'
        )
    variable, path = table.get(f"{key}_env"), table.get(f"{key}_file")
    if variable is not None and path is not None:
        raise ValueError(f"{where}: give {key}_env or {key}_file, not both")
    if variable is not None:
        if not isinstance(variable, str) or not variable:
            raise ValueError(f"{where}.{key}_env: expected the name of an environment variable")
        value = (os.environ if environ is None else environ).get(variable, "").strip()
        if not value:
            raise ValueError(f"{where}.{key}_env: the environment variable {variable} is not set")
        return value
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}.{key}_file: expected a path")
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{where}.{key}_file: cannot read {path!r}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{where}.{key}_file: {path!r} is empty")
        return value
    return None
