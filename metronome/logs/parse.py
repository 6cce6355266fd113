"""Access-log lines: parse them into their parts, then build Logstash-format documents.

This module is the core every format shares: the ``log_format`` compiler, the JSON
reader, the parts of a line and the document they make. The formats of other servers
(Apache, W3C, AWS, HAProxy, Caddy, Traefik) and recognising them are
:mod:`metronome.logs.formats`, which the importers use.

Formats (:func:`compile_format`):

- ``combined`` and ``common``: NGINX's and Apache's (Apache's ``%l`` ident may be any
  token, NGINX writes ``-`` there);
- ``main``: NGINX's default, ``combined`` + ``"$http_x_forwarded_for"``;
- any NGINX ``log_format`` string, with or without its ``log_format <name>`` directive
  and single-quoted pieces: it compiles once into one regex built from its variables;
- ``json``: one JSON object per line (NGINX ``escape=json`` formats, most log shippers).

Variables a ``log_format`` may use (others match a token or a quoted string and are
ignored): ``$remote_addr $remote_user $time_local $time_iso8601 $msec $request
$request_method $request_uri $uri $args $status $body_bytes_sent $bytes_sent
$http_referer $http_user_agent $http_x_forwarded_for $request_time
$upstream_response_time $host $server_name $server_port``, and Metronome's own for other
servers' formats (``_TYPED``: times without an offset, durations in other units, a syslog
prefix, further fields). A format needs a time (``$time_local``, ``$time_iso8601``,
``$msec`` or ``$time_nooffset``), the request (``$request``, or ``$request_method`` with
``$request_uri`` or ``$uri``) and ``$status`` (but for :func:`text_parser` told
otherwise). ``$remote_addr`` may hold a forwarded list (``10.0.0.2, 10.0.0.1``, quoted or
not): :mod:`metronome.logs.addresses` picks the client.

:meth:`LineParser.parse` answers a :class:`ParsedLine` or a :class:`Reject` whose
``reason`` is one of :data:`REJECT_REASONS`:

- ``empty``: nothing but white space;
- ``no_match``: the line does not have the format's shape;
- ``bad_json``: (``json``) not a JSON object;
- ``bad_time``: a time that is not a date (``32/Oct/2000``), before 1970, or missing;
- ``bad_request_line``: no HTTP request: ``"-"``, ``""``, a TLS handshake sent to a
  plain-HTTP port (NGINX logs it as ``"\\x16\\x03\\x01..." 400``), other binary garbage,
  a lowercase or missing method. Such lines are rejected, not stored: they name no URL,
  so no item, and the raw line stays in the archive; importers count rejects by reason;
- ``bad_status``: a status that is not an HTTP status code (100 to 599);
- ``header``: (W3C) a ``#`` directive such as ``#Fields:``, read but not a request.

Quoted values are unescaped: Apache's ``\\"`` and ``\\\\``, and NGINX's ``\\xHH`` runs
when they decode to printable UTF-8 (``\\x22`` is ``"``); anything else stays as logged,
but in a request target, where such bytes are percent-encoded (``/caf%E9``), as
:func:`decode_line` does with raw bytes that are not UTF-8.
A request line may lack the HTTP version (``GET /``). ``-`` means "none" everywhere.

:func:`build_log_document` turns a :class:`ParsedLine` into a :class:`Document` of
dataset ``logs``. The hot path is one regex match per line (for ``combined``, ``common``
and ``main``, two ``str.split`` calls where they give the same parts, else the regex)
plus lookups in bounded caches (times per distinct ``$time_local``, request lines,
request targets with their URL rule, hosts, clients, referrers, user agents), so
``combined`` lines become documents at 100,000 a second or more on one core
(``python -m benchmarks.parse``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache, partial
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson

from metronome.events.document import Document, FrozenDict, format_timestamp, parse_iso
from metronome.events.enrich import referrer_keys as _referrer_keys
from metronome.events.enrich import user_agent_fields
from metronome.events.fields import DEFAULT_SITE
from metronome.events.geo import country_iso_code
from metronome.events.visitor import VisitorIds
from metronome.logs.addresses import Client, resolve_client
from metronome.logs.rules import Match, UrlRules

__all__ = [
    "FORMATS",
    "REJECT_REASONS",
    "decode_line",
    "local_ms",
    "split_request",
    "text_parser",
    "FormatError",
    "LineParser",
    "ParsedLine",
    "Reject",
    "build_log_document",
    "compile_format",
]

DATASET = "logs"
EVENT_DATASET = "metronome." + DATASET

FORMATS: dict[str, str] = {
    # Apache's %l (identd) is an ignored variable, so "combined" reads both servers' lines.
    "common": '$remote_addr $remote_ident $remote_user [$time_local] "$request" $status'
    " $body_bytes_sent",
    "combined": '$remote_addr $remote_ident $remote_user [$time_local] "$request" $status'
    ' $body_bytes_sent "$http_referer" "$http_user_agent"',
    "main": '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent'
    ' "$http_referer" "$http_user_agent" "$http_x_forwarded_for"',
}
"""The named text formats, as NGINX ``log_format`` strings (``json`` is named too)."""

REJECT_REASONS = (
    "empty",
    "no_match",
    "bad_json",
    "bad_time",
    "bad_request_line",
    "bad_status",
    "header",
)

_MAX_SHOWN = 120  # characters of a line quoted in a reject message
_NONE = frozenset({"", "-"})
_STATUS = {str(code): code for code in range(100, 600)}
_UA_PARSE_CHARS = 1024  # as ticks: parse the first 1 KiB, store the first 2 KiB
_UA_STORE_CHARS = 2048


class FormatError(ValueError):
    """A format name or ``log_format`` string that cannot be compiled."""


class ParsedLine(NamedTuple):
    """The parts of one access-log line, as logged (``-`` and empty values are None).

    ``request`` is the request line (``GET /a?b=1 HTTP/1.1``), split into ``method``,
    ``target`` (``/a?b=1``) and ``protocol`` (``HTTP/1.1``, None when the line had no
    version). ``time`` is the time as logged; ``timestamp_ms`` the same instant in epoch
    milliseconds (UTC, the logged offset applied). ``request_time`` is in seconds.

    An immutable named tuple: at 100,000 lines a second, making one costs a fifth of what
    a frozen dataclass instance does, and :func:`build_log_document` reads every part in
    one unpacking.
    """

    line: str
    timestamp_ms: int
    time: str
    remote_addr: str | None
    remote_user: str | None
    request: str
    method: str
    target: str
    protocol: str | None
    status: int | None
    body_bytes: int | None
    referrer: str | None
    user_agent: str | None
    forwarded_for: str | None
    request_time: float | None
    host: str | None
    server_port: int | None = None


# ParsedLine(...) goes through a generated Python __new__ with 17 keyword-capable
# parameters; the text parser makes the same instance from a tuple display in one C call.
_new_parsed = tuple.__new__


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that is not stored: ``reason`` is a stable code (:data:`REJECT_REASONS`)."""

    reason: str
    message: str


class LineParser:
    """Parses lines of one format; made by :func:`compile_format`, reusable, thread-safe."""

    name: str

    def parse(self, line: str) -> ParsedLine | Reject:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _shown(text: str) -> str:
    return repr(text[:_MAX_SHOWN] + ("..." if len(text) > _MAX_SHOWN else ""))


class _Memo(dict[Any, Any]):
    """``memo[key]`` is ``function(key)``, computed once: a bounded cache for the per-line
    lookups (times, request lines, clients, referrers, user agents).

    It is emptied whenever it holds ``maxsize`` answers, and a text key longer than
    ``max_key_chars`` is answered without being kept, so memory stays flat (at most
    ``maxsize`` keys of at most ``max_key_chars`` each) however many distinct or long keys
    a log holds. A hit is one dict lookup: no recency list to update, as
    :func:`functools.lru_cache` does, which shows at 100,000 lines a second.
    """

    __slots__ = ("_function", "_max_key_chars", "_maxsize")

    def __init__(
        self, function: Callable[[Any], Any], maxsize: int, max_key_chars: int = 2048
    ) -> None:
        super().__init__()
        self._function = function
        self._maxsize = maxsize
        self._max_key_chars = max_key_chars

    def __missing__(self, key: Any) -> Any:
        value = self._function(key)
        if key.__class__ is str and len(key) > self._max_key_chars:
            return value
        if len(self) >= self._maxsize:
            self.clear()
        self[key] = value
        return value


# --------------------------------------------------------------------------- values


_ESCAPES = re.compile(r'(?:\\x[0-9A-Fa-f]{2})+|\\(["\\])')


def _unescape_one(match: re.Match[str]) -> str:
    char = match.group(1)
    if char is not None:
        return char
    run = match.group(0)
    try:
        text = bytes.fromhex(run.replace("\\x", "")).decode("utf-8")
    except ValueError:
        return run
    return text if text.isprintable() else run


_SURROGATES = re.compile("[\udc80-\udcff]+")
_HEX_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{ord(char) - 0xDC00:02X}" for char in match.group(0))


def decode_line(raw: bytes) -> str:
    """The text of a line's bytes: UTF-8, with any byte that is not (Latin-1 or Big5 in a
    URL) percent-encoded (``\xe9`` -> ``%E9``), so no line is rejected for its encoding and
    the bytes stay recoverable."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _SURROGATES.sub(_percent, raw.decode("utf-8", "surrogateescape"))


def _unescape(value: str) -> str:
    """Apache's ``\\"``/``\\\\`` and NGINX's printable ``\\xHH`` runs, decoded."""
    return _ESCAPES.sub(_unescape_one, value)


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_TIME_LOCAL = re.compile(
    r"(\d{1,2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,6}))?"
    r" ?([+-])(\d{2}):?(\d{2})"
)
_EPOCH = re.compile(r"\d{1,16}(?:\.\d{1,9})?")


def _valid_ms(ms: int) -> int | None:
    return ms if ms >= 0 else None


def _time_local_ms(text: str) -> int | None:
    """``10/Oct/2000:13:55:36 -0700`` (the offset applied) as epoch ms, or None."""
    found = _TIME_LOCAL.fullmatch(text)
    if found is None:
        return None
    day, month, year, hour, minute, second, fraction, sign, off_h, off_m = found.groups()
    if month not in _MONTHS:
        return None
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    if offset >= timedelta(hours=24):
        return None
    try:
        moment = datetime(
            int(year),
            _MONTHS[month],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )
    except ValueError:
        return None
    seconds = int(moment.timestamp())
    millis = int((fraction or "0").ljust(3, "0")[:3])
    return _valid_ms(seconds * 1000 + millis)


def _time_nooffset_ms(text: str, tz: tzinfo) -> int | None:
    """``06/Feb/2009:12:14:14.655`` (HAProxy: no offset) read in ``tz``, as epoch ms."""
    found = _TIME_LOCAL.fullmatch(text + " +0000")
    if found is None or found.group(2) not in _MONTHS:
        return None
    day, month, year, hour, minute, second, fraction = found.groups()[:7]
    return local_ms(
        int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), fraction, tz
    )


def local_ms(
    year: int,
    month: int,
    day: int,
    hour: int,
    minute: int,
    second: int,
    fraction: str | None,
    tz: tzinfo,
) -> int | None:
    """A wall-clock time logged without an offset, read in ``tz``, as epoch ms (or None
    when it is no date, or before 1970)."""
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        return None
    millis = int((fraction or "0").ljust(3, "0")[:3])
    return _valid_ms(int(moment.timestamp()) * 1000 + millis)


def _iso_ms(text: str) -> int | None:
    """ISO 8601 (``$time_iso8601``: ``2000-10-10T13:55:36-07:00``) as epoch ms; no offset
    means UTC."""
    moment = parse_iso(text)
    return None if moment is None else _valid_ms(round(moment.timestamp() * 1000))


def _epoch_ms(text: str, *, seconds: bool = True) -> int | None:
    """``$msec`` (``1700000000.123``, seconds) as epoch ms; ``seconds=False``: already ms."""
    if not _EPOCH.fullmatch(text):
        return None
    whole, _, fraction = text.partition(".")
    if not seconds:
        return int(whole)
    return int(whole) * 1000 + int(fraction.ljust(3, "0")[:3])


def _msec_ms(text: str) -> int | None:
    return _epoch_ms(text)


# a time text repeats on every line logged in the same second (or millisecond)
_TIME_LOCAL_MS = _Memo(_time_local_ms, 8192)
_ISO_SECONDS = _Memo(parse_iso, 8192, max_key_chars=20)


def _iso_fraction_ms(text: str) -> int | None:
    """``_iso_ms`` of ``2026-11-26T00:00:00.186641Z`` (ELB's, ALB's and most JSON logs'
    times: 3 or 6 digits of fraction, UTC), the seconds read once per second
    (:data:`_ISO_SECONDS`) and the ms computed as ``datetime.timestamp()`` does (exact
    microseconds divided by 10**6, then rounded), so the answer is the same."""
    if (
        len(text) in (24, 27)
        and text[19] == "."
        and text[-1] == "Z"
        and text[10] == "T"
        and text[4] == "-"
        and text[13] == ":"
    ):
        fraction = text[20:-1]
        if fraction.isascii() and fraction.isdigit():
            moment = _ISO_SECONDS[text[:19] + "Z"]
            if moment is not None:
                micros = int(moment.timestamp()) * 1_000_000 + int(fraction.ljust(6, "0"))
                return _valid_ms(round(micros / 1_000_000 * 1000))
    return _iso_ms(text)


_ISO_MS = _Memo(_iso_fraction_ms, 8192)
_MSEC_MS = _Memo(_msec_ms, 1024)


_METHOD = re.compile(r"[A-Z][A-Z0-9_\-]{0,31}")
_PROTOCOL = re.compile(r"HTTP/\d{1,2}(?:\.\d{1,2})?")
_LOOSE_REQUEST = re.compile(
    r"([A-Z][A-Z0-9_\-]{0,31}) +(\S.*?)(?: +(HTTP/\d{1,2}(?:\.\d{1,2})?))? *"
)


_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_COMMON_PROTOCOLS = frozenset({"HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/3.0"})


def _split_request(request: str) -> tuple[str, str, str | None] | None:
    """``(method, target, protocol or None)`` of a request line, or None if it is none.

    Parsers read it through :data:`_REQUESTS`, cached: the lines of a site repeat.
    """
    parts = request.split(" ")
    if (
        len(parts) == 3
        and parts[0] in _COMMON_METHODS
        and parts[2] in _COMMON_PROTOCOLS
        and parts[1]
    ):  # most request lines, without a regex
        return parts[0], parts[1], parts[2]
    if len(parts) == 3:
        method, target, protocol = parts
        if target and _METHOD.fullmatch(method) and _PROTOCOL.fullmatch(protocol):
            return method, target, protocol
    elif len(parts) == 2:
        method, target = parts
        if target and _METHOD.fullmatch(method):
            return method, target, None
    found = _LOOSE_REQUEST.fullmatch(request)  # spaces inside the target, doubled spaces
    if found is None:
        return None
    method, target, protocol = found.groups()
    return method, target, protocol


_REQUESTS = _Memo(_split_request, 16_384)


def split_request(request: str) -> tuple[str, str, str | None] | None:
    """``(method, target, protocol or None)`` of a request line, or None if it is none
    (cached, bounded)."""
    return _REQUESTS[request]  # type: ignore[no-any-return]


def _target_parts(target: str) -> tuple[str | None, str | None, str | None]:
    """``(domain, path, query)`` of a request target; each None when it has none.

    Origin form (``/a?b``) has no domain; absolute form (``http://h/a``, sent to proxies)
    has one; ``*`` and authority form (``CONNECT host:443``) have no path.
    """
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return None, path.partition("#")[0], query.partition("#")[0] or None
    if "://" in target:
        try:
            parts = urlsplit(target)
            host = parts.hostname
        except ValueError:
            return None, None, None
        return _domain(host), parts.path or "/", parts.query or None
    return None, None, None


def _domain(host: str | None) -> str | None:
    """``$host`` as ``url.domain``: lowercased, no port or trailing dot; ``_`` is none
    (cached for host names up to 255 characters, as DNS has them)."""
    if host is not None and len(host) > 255:
        return _domain_of(host)
    return _domain_of_cached(host)


def _domain_of(host: str | None) -> str | None:
    if not host:
        return None
    if host.startswith("["):  # [v6]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.lower().rstrip(".")
    return host if host and host not in ("-", "_") else None


_domain_of_cached = lru_cache(maxsize=1024)(_domain_of)


def _host_port(host: str) -> int | None:
    """The port of a ``host:port`` (or ``[v6]:port``) as logged, or None."""
    _, colon, digits = host.rpartition(":")
    if not colon or not digits.isdigit() or (host.count(":") > 1 and "]" not in host):
        return None
    port = int(digits)
    return port if port <= 65535 else None


def _number(value: str | None) -> int | None:
    return None if value is None or value in _NONE else int(value)


def _seconds(value: str | None) -> float | None:
    return None if value is None or value in _NONE else float(value)


# --------------------------------------------------------------------------- text formats

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_QUOTED = r'[^"\\]*(?:\\.[^"\\]*)*'
_BRACKETED = r"[^\]]*"
_TOKEN = r"\S+"
_NUMBER_OR_DASH = r"\+?\d+|-"  # HAProxy writes +2750 for a size counted when cut short
_SECONDS_OR_DASH = r"\d+(?:\.\d+)?|-"
_UNQUOTED = {  # variables whose values may hold spaces even without quotes around them
    "time_local": r"\S+ \S+",
    "request": r"\S+(?: \S+){0,2}",
    "upstream_response_time": r"\S+(?:(?:, | : )\S+)*",
    # a client, or an X-Forwarded-For list written where the client goes (10.0.0.2, 10.0.0.1)
    "remote_addr": r'"[^"]*"|[^\s,"]+(?:, *[^\s,"]+)*',
    "http_x_forwarded_for": r'[^\s,"]+(?:, *[^\s,"]+)*',
}
_TYPED = {  # in every context
    "body_bytes_sent": _NUMBER_OR_DASH,
    "bytes_sent": _NUMBER_OR_DASH,
    "request_time": _SECONDS_OR_DASH,
    "server_port": r"\d{1,5}|-",
    # Metronome's own variables, for the formats of other servers (metronome.logs.formats)
    "time_nooffset": r"\d{1,2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?",
    "request_time_ms": r"\d+|-",  # milliseconds (S3 total time)
    "request_time_s": r"\d+|-",  # whole seconds (Icecast's time connected)
    "request_time_frac": r"\d+\.\d{3}|-",  # NGINX's $request_time, always with its ms
    "request_time_msunit": r"\d+ms",  # Traefik's CLF: 12ms
    "request_time_us": r"\d+|-",  # microseconds (Apache %D)
    "elb_times": r"-?\d+(?:\.\d+)? -?\d+(?:\.\d+)? -?\d+(?:\.\d+)?",  # three parts, s
    "haproxy_times": r"(?:\+?-?\d+/){2,5}\+?-?\d+",  # .../Tt in ms, the last the total
    "syslog": r"(?:(?:[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\S+)"
    r" \S+ [^\s:]+(?:\[\d+\])?: )?",
    "haproxy_captures": r"(?: \{[^}]*\})*",
    "rest": r"(?: .*)?",  # more fields after the known ones, ignored
}
_DURATIONS: dict[str, Callable[[str], float | None]] = {
    "request_time": float,
    "request_time_ms": lambda text: int(text) / 1000,
    "request_time_s": float,
    "request_time_frac": float,
    "request_time_msunit": lambda text: int(text[:-2]) / 1000,
    "request_time_us": lambda text: int(text) / 1_000_000,
    "elb_times": lambda text: _elb_seconds(text),
    "haproxy_times": lambda text: _haproxy_seconds(text),
}
"""How each duration variable's text becomes seconds (None: not measured)."""


def _elb_seconds(text: str) -> float | None:
    """ELB's request, backend and response processing times (-1: not forwarded), summed."""
    first, second, third = text.split(" ")  # the regex allows exactly three
    request, backend, response = float(first), float(second), float(third)
    if request < 0 or backend < 0 or response < 0:
        return None
    return 0.0 + request + backend + response  # added in sum()'s order


def _haproxy_seconds(text: str) -> float | None:
    """HAProxy's ``Tq/Tw/Tc/Tr/Tt``: the last is the total in ms (-1: aborted)."""
    total = int(text.rpartition("/")[2].lstrip("+"))
    return None if total < 0 else total / 1000


KNOWN_VARIABLES = frozenset(
    {
        "remote_addr",
        "remote_user",
        "time_local",
        "time_iso8601",
        "msec",
        "request",
        "request_method",
        "request_uri",
        "uri",
        "args",
        "status",
        "body_bytes_sent",
        "bytes_sent",
        "http_referer",
        "http_user_agent",
        "http_x_forwarded_for",
        "request_time",
        "upstream_response_time",
        "host",
        "server_name",
        "server_port",
        *(name for name in _TYPED if name not in ("syslog", "haproxy_captures", "rest")),
    }
)
# what a line's parts are read from, in order (the first variable a format has wins)
_SLOTS: tuple[tuple[str, ...], ...] = (
    ("remote_addr",),
    ("remote_user",),
    ("request", "request_method"),
    ("request_uri", "uri"),
    ("args",),
    ("status",),
    ("body_bytes_sent", "bytes_sent"),
    ("http_referer",),
    ("http_user_agent",),
    ("http_x_forwarded_for",),
    tuple(_DURATIONS),
    ("host", "server_name"),
    ("server_port",),
)
_TIMES: tuple[tuple[str, _Memo], ...] = (
    ("time_local", _TIME_LOCAL_MS),
    ("time_iso8601", _ISO_MS),
    ("msec", _MSEC_MS),
    ("time_nooffset", _TIME_LOCAL_MS),  # replaced per parser by one in its time zone
)
_EMPTY_GROUP = "__none"


def _unwrap_directive(text: str) -> str:
    """A ``log_format`` as written in nginx.conf (name, escape=, '...' pieces, ``;``)."""
    text = text.strip()
    directive = re.fullmatch(r"log_format\s+\S+\s+(?:escape=\S+\s+)?(.*?)\s*;?", text, re.DOTALL)
    if directive:
        text = directive.group(1)
    if re.fullmatch(r"(?:'[^']*'\s*)+", text):
        text = "".join(re.findall(r"'([^']*)'", text))
    return text


def _variable_pattern(name: str, before: str, after: str) -> str:
    if name in _TYPED:
        return _TYPED[name]
    if before.endswith('"') and after.startswith('"'):
        return _QUOTED
    if before.endswith("[") and after.startswith("]"):
        return _BRACKETED
    if name not in KNOWN_VARIABLES:
        return f'"{_QUOTED}"|{_TOKEN}'
    return _UNQUOTED.get(name, _TOKEN)


class _TextParser(LineParser):
    """One precompiled regex; the parts it captures are read in one ``group()`` call."""

    def __init__(
        self, name: str, log_format: str, tz: tzinfo = UTC, *, require_status: bool = True
    ) -> None:
        self.name = name
        self.log_format = log_format
        pieces = _VARIABLE.split(log_format)  # literal, braced, bare, literal, ...
        literals = pieces[0::3]
        names = [braced or bare for braced, bare in zip(pieces[1::3], pieces[2::3], strict=True)]
        if not names:
            raise FormatError(
                f"unknown log format {log_format!r}: not a format name (metronome import"
                " --help lists them), nor an NGINX log_format with $variables"
            )
        present = set(names)
        time_var = next((t for t in _TIMES if t[0] in present), None)
        missing = []
        if time_var is None:
            missing.append("a time ($time_local, $time_iso8601 or $msec)")
        if "request" not in present and not (
            "request_method" in present and present & {"request_uri", "uri"}
        ):
            missing.append("the request ($request, or $request_method and $request_uri)")
        if "status" not in present and require_status:
            missing.append("$status")
        if missing:
            raise FormatError(f"log format {log_format!r} lacks {' and '.join(missing)}")
        assert time_var is not None

        regex = [re.escape(literals[0])]
        captured: set[str] = set()
        for i, var in enumerate(names):
            pattern = _variable_pattern(var, literals[i], literals[i + 1])
            if var in KNOWN_VARIABLES and var not in captured:
                captured.add(var)
                regex.append(f"(?P<{var}>{pattern})")
            else:
                regex.append(f"(?:{pattern})")
            regex.append(re.escape(literals[i + 1]))
        regex.append(f"(?P<{_EMPTY_GROUP}>)")
        try:
            compiled = re.compile("".join(regex))
        except re.error as exc:  # pragma: no cover - every piece is escaped or ours
            raise FormatError(f"log format {log_format!r} does not compile: {exc}") from None
        self._fullmatch = compiled.fullmatch
        self.regex = compiled
        index = compiled.groupindex

        def slot(candidates: tuple[str, ...]) -> int:
            return next((index[c] for c in candidates if c in index), index[_EMPTY_GROUP])

        self._times = time_var[1]
        if time_var[0] == "time_nooffset":  # offset-less times are read in the given zone
            self._times = _Memo(partial(_time_nooffset_ms, tz=tz), 8192)
        self._groups = (index[time_var[0]], *(slot(s) for s in _SLOTS))
        self._whole_request = "request" in index
        self._has_status = "status" in index
        duration = next((d for d in _DURATIONS if d in index), "request_time")
        self._duration = _DURATIONS[duration]

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        found = self._fullmatch(text)
        if found is None:
            if not text.strip():
                return Reject("empty", "an empty line")
            return Reject("no_match", f"not a {self.name} line: {_shown(text)}")
        (
            time_text,
            addr,
            user,
            request,
            uri,
            args,
            status,
            nbytes,
            referrer,
            agent,
            forwarded,
            request_time,
            host,
            port,
        ) = found.group(*self._groups)
        timestamp_ms = self._times[time_text]
        if timestamp_ms is None:
            return Reject("bad_time", f"not a time after 1970: {_shown(time_text)}")
        if not self._whole_request:  # $request_method $request_uri [$args]
            if args and args != "-":
                uri = f"{uri}?{args}"
            request = f"{request} {uri}"
        if "\\" in request:
            request = _unescape(request)
        split = _REQUESTS[request]
        if split is None:
            return Reject("bad_request_line", _no_request(request, status))
        method, target, protocol = split
        if "\\x" in target:  # NGINX's escapes of bytes that are not UTF-8: %-encoded
            target = _HEX_ESCAPE.sub(r"%\1", target)
        if self._has_status:
            code = _STATUS.get(status)
            if code is None:
                return Reject("bad_status", f"not an HTTP status code: {_shown(status)}")
        else:
            code = None
        if referrer in _NONE:
            referrer = None
        elif "\\" in referrer:
            referrer = _unescape(referrer)
        if agent in _NONE:
            agent = None
        elif "\\" in agent:
            agent = _unescape(agent)
        return _new_parsed(
            ParsedLine,
            (
                text,
                timestamp_ms,
                time_text,
                None if addr in _NONE else addr.strip('"'),
                None if user in _NONE else user,
                request,
                method,
                target,
                protocol,
                code,
                None if nbytes in _NONE else int(nbytes),
                referrer,
                agent,
                None if forwarded in _NONE else forwarded,
                None if request_time in _NONE else self._duration(request_time),
                None if host in _NONE else host,
                None if port in _NONE else int(port),
            ),
        )


def _no_request(request: str, status: str | None) -> str:
    """The reject message of a request that is none: what it was and what it means."""
    if request in _NONE:
        why = "the client sent no request (a timeout or a closed connection)"
    elif request.startswith(("\\x16\\x03", "\x16\x03")):
        why = "a TLS handshake sent to a plain-HTTP port"
    else:
        why = "not an HTTP request line"
    shown = f"status {status}" if status else "no status"
    return f"{why} ({shown}): {_shown(request)}"


def text_parser(
    name: str, log_format: str, *, tz: tzinfo = UTC, require_status: bool = True
) -> LineParser:
    """A parser of ``log_format`` (an NGINX ``log_format`` string) called ``name``: times
    without an offset are read in ``tz``; ``require_status=False`` for formats that log
    none (Apache mod_ssl's request log). Raises :class:`FormatError` as
    :func:`compile_format` does."""
    return _text_parser(name, log_format, tz, require_status=require_status)


def _text_parser(
    name: str, log_format: str, tz: tzinfo = UTC, *, require_status: bool = True
) -> _TextParser:
    shape = _NCSA_SHAPES.get(log_format)
    if shape is not None and require_status:
        return _NcsaParser(name, log_format, tz, quoted=shape[0], dash_ident=shape[1])
    return _TextParser(name, log_format, tz, require_status=require_status)


_NCSA = '$remote_addr $remote_ident $remote_user [$time_local] "$request" $status $body_bytes_sent'
_NCSA_SHAPES: dict[str, tuple[int, bool]] = {
    FORMATS["common"]: (1, False),
    FORMATS["combined"]: (3, False),
    FORMATS["combined"] + ' "$http_x_forwarded_for"': (4, False),  # formats.text's main
    FORMATS["main"]: (4, True),  # its ident is a literal "-"
}
"""The NCSA formats read by :class:`_NcsaParser`: per ``log_format``, its quoted fields
(request, referrer, user agent, X-Forwarded-For) and whether the ident must be ``-``."""
assert all(f.startswith(_NCSA) or f == FORMATS["main"] for f in _NCSA_SHAPES)


class _NcsaParser(_TextParser):
    """``common``, ``combined`` and ``main`` (the lines most logs hold), read with
    :meth:`str.split` instead of the regex where that gives the very same parts.

    A line is split at its double quotes, then its head at spaces; the split is taken only
    when the line has no backslash (so no escaped quote), exactly the format's number of
    quotes, single spaces between printable head fields (no other white space, which the
    regex's ``\\S`` refuses), an address without a comma, ``[time]``, a known status, a
    plain size and a request line and time that read. In every other case, and for every
    line that would be rejected, the regex decides (:meth:`_TextParser.parse`), so both
    ways give equal :class:`ParsedLine` s and rejects (``tests/test_logs_fastpath.py``
    compares them). Reading a ``combined`` line this way takes about half the time the
    regex way does (2.7 to 3.2 against 5.6 microseconds, timed on a loaded machine).
    """

    def __init__(
        self, name: str, log_format: str, tz: tzinfo, *, quoted: int, dash_ident: bool
    ) -> None:
        super().__init__(name, log_format, tz)
        self._quoted = quoted
        self._pieces = 2 * quoted + 1
        self._dash_ident = dash_ident

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        parts = text.split('"')
        if len(parts) != self._pieces or "\\" in text:
            return _TextParser.parse(self, text)
        head = parts[0]
        fields = head.split(" ")
        if len(fields) != 6 or not head.isprintable():
            return _TextParser.parse(self, text)
        addr, ident, user, day, zone, end = fields
        if (
            end
            or not (addr and ident and user)
            or day[:1] != "["
            or zone[-1:] != "]"
            or "," in addr
            or (self._dash_ident and ident != "-")
        ):
            return _TextParser.parse(self, text)
        time_text = f"{day[1:]} {zone[:-1]}"
        timestamp_ms = self._times[time_text]
        tail = parts[2].split(" ")
        quoted = self._quoted
        if quoted == 1:
            if len(tail) != 3:
                return _TextParser.parse(self, text)
            referrer = agent = forwarded = None
        else:
            if len(tail) != 4 or tail[3] or parts[4] != " " or parts[-1]:
                return _TextParser.parse(self, text)
            referrer = parts[3]
            if referrer in _NONE:
                referrer = None
            agent = parts[5]
            if agent in _NONE:
                agent = None
            forwarded = None
            if quoted == 4:
                if parts[6] != " ":
                    return _TextParser.parse(self, text)
                forwarded = parts[7]
                if forwarded in _NONE:
                    forwarded = None
        blank, status, nbytes = tail[:3]
        code = _STATUS.get(status)
        request = parts[1]
        split = _REQUESTS[request]
        if (
            blank
            or timestamp_ms is None
            or "]" in time_text
            or code is None
            or split is None
            or (nbytes != "-" and not (nbytes.isascii() and nbytes.isdigit()))
        ):
            return _TextParser.parse(self, text)
        return _new_parsed(
            ParsedLine,
            (
                text,
                timestamp_ms,
                time_text,
                None if addr == "-" else addr,
                None if user == "-" else user,
                request,
                split[0],
                split[1],
                split[2],
                code,
                None if nbytes == "-" else int(nbytes),
                referrer,
                agent,
                forwarded,
                None,
                None,
                None,
            ),
        )


# --------------------------------------------------------------------------- JSON lines

_JSON_KEYS = {
    "addr": ("remote_addr", "client_ip"),
    "time": ("time", "time_local", "time_iso8601", "timestamp", "@timestamp", "msec"),
    "request": ("request",),
    "method": ("method", "request_method"),
    "uri": ("request_uri", "uri", "path", "url"),
    "args": ("args", "query_string"),
    "protocol": ("protocol", "server_protocol", "http_version"),
    "status": ("status", "status_code"),
    "bytes": ("body_bytes_sent", "bytes", "bytes_sent"),
    "referrer": ("http_referer", "referer", "referrer"),
    "agent": ("http_user_agent", "user_agent"),
    "forwarded": ("http_x_forwarded_for", "x_forwarded_for"),
    "request_time": ("request_time",),
    "user": ("remote_user",),
    "host": ("host", "server_name"),
}


_SECONDS = re.compile(_SECONDS_OR_DASH)


def _json_text(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = obj.get(key)
        if value.__class__ is str:  # most values: no isinstance calls
            if value and value != "-":
                return value
            continue
        if value is None or isinstance(value, bool | dict | list):
            continue
        text = value if isinstance(value, str) else str(value)
        if text not in _NONE:
            return text
    return None


def _json_time(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, int | None]:
    for key in keys:
        value = obj.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            # epoch seconds (nginx $msec) or, when that would be after 5138, milliseconds
            text = repr(value)
            seconds = value < 1e11
            ms = round(value * 1000) if seconds else int(value)
            return text, _valid_ms(ms)
        if not isinstance(value, str) or value in _NONE:
            continue
        if _EPOCH.fullmatch(value):
            return value, _epoch_ms(value, seconds=float(value) < 1e11)
        if "/" in value:
            return value, _TIME_LOCAL_MS[value]
        return value, _ISO_MS[value]
    return None, None


class _JsonParser(LineParser):
    name = "json"

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, ...], dict[str, tuple[str, ...]]] = {}

    def _present(self, obj: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """Per part, the keys of :data:`_JSON_KEYS` this object has, in their order of
        preference: worked out once per distinct set of keys (lines of one log share
        theirs), for at most 64 sets of at most 64 short keys."""
        shape = tuple(obj)
        found = self._shapes.get(shape)
        if found is None:
            found = {
                part: tuple(key for key in keys if key in obj) for part, keys in _JSON_KEYS.items()
            }
            if len(shape) <= 64 and sum(map(len, shape)) <= 2048:
                if len(self._shapes) >= 64:
                    self._shapes.clear()
                self._shapes[shape] = found
        return found

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            if not text.strip():
                return Reject("empty", "an empty line")
            return Reject("bad_json", f"not JSON: {_shown(text)}")
        if not isinstance(obj, dict):
            return Reject("bad_json", f"not a JSON object: {_shown(text)}")
        keys = self._present(obj)
        time_text, timestamp_ms = _json_time(obj, keys["time"])
        if time_text is None or timestamp_ms is None:
            return Reject(
                "bad_time",
                f"no time after 1970 under any of {', '.join(_JSON_KEYS['time'])}: {_shown(text)}",
            )
        request = _json_text(obj, keys["request"])
        if request is None:
            method = _json_text(obj, keys["method"])
            uri = _json_text(obj, keys["uri"])
            if method and uri:
                args = _json_text(obj, keys["args"])
                protocol = _json_text(obj, keys["protocol"])
                request = " ".join(
                    p for p in (method, f"{uri}?{args}" if args else uri, protocol) if p
                )
        if request is not None and "\\" in request:
            request = _unescape(request)
        parts = _REQUESTS[request] if request else None
        if request is None or parts is None:
            return Reject("bad_request_line", f"no HTTP request line: {_shown(text)}")
        status = _json_text(obj, keys["status"])
        code = _STATUS.get(status) if status is not None else None
        if code is None:
            return Reject("bad_status", f"no HTTP status code: {_shown(text)}")
        nbytes = _json_text(obj, keys["bytes"])
        request_time = _json_text(obj, keys["request_time"])
        return ParsedLine(
            text,
            timestamp_ms,
            time_text,
            _json_text(obj, keys["addr"]),
            _json_text(obj, keys["user"]),
            request,
            parts[0],
            parts[1],
            parts[2],
            code,
            int(nbytes) if nbytes is not None and nbytes.isascii() and nbytes.isdigit() else None,
            _json_text(obj, keys["referrer"]),
            _json_text(obj, keys["agent"]),
            _json_text(obj, keys["forwarded"]),
            float(request_time) if request_time and _SECONDS.fullmatch(request_time) else None,
            _json_text(obj, keys["host"]),
        )


def compile_format(name_or_nginx_log_format: str, tz: tzinfo = UTC) -> LineParser:
    """A parser for ``combined``, ``common``, ``main``, ``json`` or an NGINX ``log_format``.

    The regex is built once, here; keep the parser and call :meth:`LineParser.parse` per
    line. Raises :class:`FormatError` for an unknown name, or a ``log_format`` without a
    time, the request or ``$status``. Times without an offset are read in ``tz``; all
    of Metronome's named formats are in :mod:`metronome.logs.formats`.
    """
    text = name_or_nginx_log_format.strip()
    if text.lower() == "json":
        return _JsonParser()
    if text.lower() in FORMATS:
        return _text_parser(text.lower(), FORMATS[text.lower()])
    log_format = _unwrap_directive(text)
    return _text_parser("log_format", log_format, tz)


# --------------------------------------------------------------------------- documents

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# In real logs targets, clients, referrers and agents repeat: their parts of a document
# are made once, cached below and shared by the documents that have them, so they are
# FrozenDicts (as ticks' user_agent objects are).

_TARGETS_MAX = 65_536
_MAX_CACHED_KEY_CHARS = 2048
_targets: dict[str, tuple[UrlRules, FrozenDict, str | None, FrozenDict | None]] = {}


def _target_fields(
    target: str, rules: UrlRules
) -> tuple[UrlRules, FrozenDict, str | None, FrozenDict | None]:
    """``(rules, url object, event.action, item object)`` of a request target, cached.

    :func:`build_log_document` reads ``_targets`` first; an entry holds the rules it was
    made with, so another rules object is never answered from it.
    """
    domain, path, query = _target_parts(target)
    url: dict[str, Any] = {"original": target}
    if domain is not None:
        url["domain"] = domain
    action = item = None
    if path is not None:
        url["path"] = path
        action, item = _action_item(rules.match(path))
    if query is not None:
        url["query"] = query
    entry = (rules, FrozenDict(url), action, item)
    if len(target) > _MAX_CACHED_KEY_CHARS:  # a long target is built each time, never kept
        return entry
    if len(_targets) >= _TARGETS_MAX:
        _targets.clear()
    _targets[target] = entry
    return entry


def _action_item(match: Match | None) -> tuple[str | None, FrozenDict | None]:
    """``(event.action, item object)`` of a URL rule's match (both None without one)."""
    if match is None:
        return None, None
    if match.format is None:
        return match.event, FrozenDict(id=match.item_id)
    return match.event, FrozenDict(id=match.item_id, format=match.format)


_GET = FrozenDict(method="GET")


def _referrer_fields(referrer: str) -> tuple[FrozenDict, FrozenDict | None]:
    """``(http.request object of a GET from it, referrer object or None)``."""
    domain, page = _referrer_keys(referrer)
    keys = FrozenDict(domain=domain, page=page) if domain and page else None
    return FrozenDict(method="GET", referrer=referrer), keys


def _agent(user_agent: str) -> tuple[FrozenDict, bool]:
    """``(user_agent object, bot)`` exactly as ticks have them."""
    return user_agent_fields(user_agent[:_UA_PARSE_CHARS], user_agent[:_UA_STORE_CHARS])


def _client_parts(client: Client) -> tuple[FrozenDict, FrozenDict | None]:
    """``(source object, client object or None)`` of a client: ``{"address", "ip",
    "port"}`` (those it has) and ``{"geo": {"country_iso_code": ...}}`` from the bundled
    offline database."""
    source: dict[str, Any] = {"address": client.address}
    if client.ip is not None:
        source["ip"] = client.ip
    if client.port is not None:
        source["port"] = client.port
    country = None if client.ip is None else country_iso_code(client.ip)
    geo = None if country is None else FrozenDict(geo=FrozenDict(country_iso_code=country))
    return FrozenDict(source), geo


_NO_CLIENT: tuple[None, None] = (None, None)
_MAX_CACHED_REMOTE = 64  # longer client fields (forwarded lists) are not cached


def _remote_fields(remote_addr: str) -> tuple[FrozenDict | None, FrozenDict | None]:
    """``(source object, client object)`` of a client field holding one address (no
    proxies); both None when it names no client."""
    client = resolve_client(remote_addr, None, ())
    return _NO_CLIENT if client is None else _client_parts(client)


def _site(site_id: str) -> FrozenDict:
    """The ``site`` object of a site id."""
    return FrozenDict(id=site_id)


def _time_keys(timestamp_ms: int) -> tuple[str, str]:
    """``@timestamp`` text and the 12 hex digits that start event ids, per distinct ms."""
    return format_timestamp(timestamp_ms), f"{timestamp_ms & 0xFFFFFFFFFFFF:012x}"


def _host_parts(host: str) -> tuple[str | None, int | None]:
    """``(url.domain, destination.port)`` of ``$host`` (``host:port`` as logged)."""
    return _domain(host), _host_port(host)


_URLS_MAX = 16_384
_urls: dict[tuple[str, str], FrozenDict] = {}


def _with_domain(target: str, url: FrozenDict, domain: str) -> FrozenDict:
    """The url object of an origin-form ``target`` with ``$host``'s domain, cached per
    target and domain (the url object depends on nothing else)."""
    key = (target, domain)
    found = _urls.get(key)
    if found is None:
        found = FrozenDict(url, domain=domain)
        if len(target) <= _MAX_CACHED_KEY_CHARS and len(domain) <= 255:
            if len(_urls) >= _URLS_MAX:
                _urls.clear()
            _urls[key] = found
    return found


_HOSTS = _Memo(_host_parts, 4096, max_key_chars=300)
_REFERRERS = _Memo(_referrer_fields, 4096)
_AGENTS = _Memo(_agent, 4096)
_REMOTES = _Memo(_remote_fields, 65_536)
_SITES = _Memo(_site, 256)
_TIME_KEYS = _Memo(_time_keys, 4096)
_TIMESTAMPS = _Memo(format_timestamp, 256)  # event.ingested: one per batch of lines


def build_log_document(
    parsed: ParsedLine,
    *,
    source_id: str | None,
    offset: int | None,
    rules: UrlRules,
    trusted_proxies: tuple[Network, ...],
    received_ms: int,
    visitors: VisitorIds | None = None,
    site_id: str = DEFAULT_SITE,
) -> Document:
    """The Logstash-format ECS document of one parsed access-log line (dataset ``logs``).

    **Ids are deterministic**, so importing the same log twice stores each line once:
    ``event.id`` (also the store's ``_id``) is 12 hex digits of the line's own timestamp
    in ms (ids sort by time, like tick ids) followed by the first 20 hex digits of
    SHA-256 of ``f"{source_id}\\0{offset}"``: the file's identity
    (:mod:`metronome.logs.follow`: ``<dev>:<inode>:<generation>``) and the byte offset of
    the line's start. When either is unknown (``None``: lines from a pipe), the hash is of
    ``f"{line}\\0{timestamp_ms}"`` instead, so identical lines logged in the same
    millisecond are then stored once.

    Fields: ``@timestamp`` (the line's time), ``@version``, ``event.id``,
    ``event.dataset`` (``metronome.logs``), ``event.ingested`` (``received_ms``),
    ``event.action`` (the event of the first URL rule matching the path and taking the
    status, by default 2xx and 304; absent when none matches, and then no ``item.*``
    either), ``event.duration`` (ns, from
    ``$request_time``), ``source.ip`` (``$remote_addr``, or the client named by
    ``X-Forwarded-For`` when ``$remote_addr`` is one of ``trusted_proxies``),
    ``http.request.method``, ``http.version`` (``1.1``), ``http.response.status_code``,
    ``http.response.body.bytes``, ``url.original`` (the request target as logged),
    ``url.path``, ``url.query`` (without ``?``), ``url.domain`` (``$host``, or an
    absolute target's host), ``http.request.referrer`` with ``referrer.domain`` and
    ``referrer.page``, ``user_agent.*`` and ``bot`` exactly as ticks have them, and
    ``item.id``/``item.format`` from the URL rule, ``site.id`` (``site_id``:
    ``METRONOME_LOG_SITE``), and ``visitor.id`` (from ``source.ip`` and the user agent on
    the line's day, per site, when ``visitors`` is given). The raw line is not stored.
    """
    (
        line,
        timestamp_ms,
        _,
        remote_addr,
        _,
        _,
        method,
        target,
        protocol,
        status,
        body_bytes,
        referrer,
        user_agent,
        forwarded_for,
        request_time,
        host,
        server_port,
    ) = parsed
    timestamp, id_prefix = _TIME_KEYS[timestamp_ms]
    if source_id is not None and offset is not None:
        key = f"{source_id}\0{offset}".encode("utf-8", "surrogatepass")
    else:
        key = f"{line}\0{timestamp_ms}".encode("utf-8", "surrogatepass")
    event_id = id_prefix + _sha256(key).hexdigest()[:20]
    event: dict[str, Any] = {
        "id": event_id,
        "dataset": EVENT_DATASET,
        "ingested": _TIMESTAMPS[received_ms],
    }
    entry = _targets.get(target)
    if entry is None or entry[0] is not rules:
        entry = _target_fields(target, rules)
    _, url, action, item = entry
    if status not in rules.like_200 and status is not None and "path" in url:
        action, item = _action_item(rules.match(url["path"], status))  # 2xx, 304 unless told
    if referrer is None:
        request = _GET if method == "GET" else {"method": method}
        referrer_object = None
    else:
        request, referrer_object = _REFERRERS[referrer]
        if method != "GET":
            request = {"method": method, "referrer": referrer}
    response: dict[str, Any]
    if status is None:
        response = {} if body_bytes is None else {"body": {"bytes": body_bytes}}
    elif body_bytes is None:
        response = {"status_code": status}
    else:
        response = {"status_code": status, "body": {"bytes": body_bytes}}
    http: dict[str, Any] = (
        {"request": request, "response": response}
        if protocol is None
        else {"request": request, "response": response, "version": protocol[5:]}
    )
    if not response:  # a format that logs neither status nor size (mod_ssl's, RTMP)
        del http["response"]
    source: dict[str, Any] = {
        "@timestamp": timestamp,
        "@version": "1",
        "event": event,
        "http": http,
        "url": url,
        "bot": False,
        "site": _SITES[site_id],
    }
    if action is not None:
        event["action"] = action
        source["item"] = item
    if host is not None:
        domain, host_port = _HOSTS[host]
        if domain is not None and "domain" not in url:
            source["url"] = _with_domain(target, url, domain)
        if server_port is None:
            server_port = host_port
    if server_port is not None:
        source["destination"] = {"port": server_port}
    if request_time is not None:
        event["duration"] = round(request_time * 1_000_000_000)
    if remote_addr is not None:
        # a client logged without a port is a key of _REMOTES as it is (see below)
        known = _REMOTES.get(remote_addr) if forwarded_for is None else None
        if known is not None:
            address, client = known
        elif (
            forwarded_for is None
            and len(remote_addr) <= _MAX_CACHED_REMOTE
            and "," not in remote_addr
        ):
            port = None
            head, colon, digits = remote_addr.rpartition(":")
            if (
                colon
                and digits.isdigit()
                and len(digits) <= 5
                and (":" not in head or (head[0] == "[" and head[-1] == "]"))
            ):  # v4:port, name:port, [v6]:port: cached per address, not per connection
                remote_addr, port = head, int(digits)
            address, client = _REMOTES[remote_addr]
            if port is not None and port <= 65535 and address is not None:
                address = {**address, "port": port}
        else:  # forwarded lists are not cached: a client writes them
            chosen = resolve_client(remote_addr, forwarded_for, trusted_proxies)
            address, client = _NO_CLIENT if chosen is None else _client_parts(chosen)
            if chosen is not None and chosen.related:
                source["related"] = {"ip": list(chosen.related)}
        if address is not None:
            source["source"] = address
            if client is not None:
                source["client"] = client
    if referrer_object is not None:
        source["referrer"] = referrer_object
    if user_agent is not None:
        source["user_agent"], source["bot"] = _AGENTS[user_agent]
    if visitors is not None and "source" in source:
        client_source = source["source"]  # a host name when the log has no address
        visitor_key = client_source.get("ip") or client_source["address"]
        visitor = visitors.visitor_id(timestamp_ms, visitor_key, user_agent, site_id)
        if visitor is not None:
            source["visitor"] = {"id": visitor}
    document = _new_document(Document)
    _set_id(document, event_id)
    _set_timestamp_ms(document, timestamp_ms)
    _set_dataset(document, DATASET)
    _set_source(document, source)
    return document


# Document(...) is a frozen dataclass: its __init__ sets each of the four fields through
# object.__setattr__ and keyword arguments, a third of a microsecond more per line than
# setting its slots directly, which is all it does (it has no __post_init__).
_sha256 = hashlib.sha256
_new_document = object.__new__
_set_id = vars(Document)["id"].__set__
_set_timestamp_ms = vars(Document)["timestamp_ms"].__set__
_set_dataset = vars(Document)["dataset"].__set__
_set_source = vars(Document)["source"].__set__
assert not hasattr(Document, "__post_init__")
