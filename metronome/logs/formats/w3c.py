"""W3C extended log files: IIS (with Advanced Logging's custom fields), Amazon CloudFront
(web and RTMP distributions), Citrix NetScaler, Incapsula, SHOUTcast.

Such a file names its fields in a ``#Fields:`` directive, which may come again further
down with other fields (IIS starts one whenever its configuration changes): the parser
reads each line with the fields named last. Values are separated by spaces (IIS,
NetScaler, SHOUTcast; Advanced Logging and Incapsula quote values that hold spaces) or
by tabs (CloudFront); ``-`` is none. The date and the time are separate fields, anywhere
on the line, without an offset: they are read in ``tz`` (``--tz``, ``METRONOME_LOG_TZ``;
IIS and CloudFront write UTC, the default).

Which field gives what (the first one present wins):

- time: ``date``/``time``, else ``date-local``/``time-local``;
- client: ``c-ip`` (``c-port`` its port); ``x-forwarded-for`` / ``X-Forwarded-For`` is
  the forwarded chain;
- request: ``cs-method`` (CloudFront RTMP: ``x-event``, uppercased; SHOUTcast, which
  logs listeners' ``GET``s without a method: ``GET``), ``cs-uri-stem`` and
  ``cs-uri-query``, or ``cs-uri`` (a whole URL or path and query), ``cs-version`` or
  ``cs-protocol-version``;
- status: ``sc-status`` or ``c-status`` (RTMP logs none: no status);
- ``sc-bytes``, ``cs(Referer)``/``c-referrer``, ``cs(User-Agent)``/``c-user-agent``
  (IIS writes ``+`` for spaces, CloudFront percent-encodes), ``cs-username``,
  ``cs(Host)``/``cs-host``/``x-host-header``, ``s-port``;
- duration: ``time-taken`` (IIS and NetScaler: milliseconds; CloudFront: seconds with a
  fraction), ``x-duration`` (SHOUTcast: seconds).
"""

from __future__ import annotations

import re
from datetime import UTC, tzinfo
from urllib.parse import unquote

from metronome.logs.parse import LineParser, ParsedLine, Reject, local_ms

__all__ = ["W3cParser", "flavour"]

_TOKENS = re.compile(r'"([^"]*)"|(\S+)')
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_NONE = frozenset({"", "-"})
_MAX_SHOWN = 120

_ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("date", "date-local"),
    "time": ("time", "time-local"),
    "addr": ("c-ip",),
    "port": ("c-port",),
    "forwarded": ("x-forwarded-for",),
    "method": ("cs-method", "x-event"),
    "stem": ("cs-uri-stem",),
    "query": ("cs-uri-query",),
    "uri": ("cs-uri",),
    "protocol": ("cs-version", "cs-protocol-version"),
    "status": ("sc-status", "c-status"),
    "bytes": ("sc-bytes",),
    "referrer": ("cs(referer)", "cs(referrer)", "c-referrer"),
    "agent": ("cs(user-agent)", "c-user-agent"),
    "user": ("cs-username",),
    "host": ("cs(host)", "cs-host", "x-host-header"),
    "server_port": ("s-port",),
    "time_taken": ("time-taken",),
    "duration_s": ("x-duration",),
}


def flavour(directives: list[str]) -> str:
    """Which server wrote a W3C file with these ``#`` directives (the name detection
    shows): its ``#Software:`` or the fields its ``#Fields:`` name."""
    names = {
        name.lower()
        for line in directives
        if line.startswith("#Fields:")
        for name in line[len("#Fields:") :].split()
    }
    software = " ".join(line for line in directives if line.startswith("#Software:"))
    if "Internet Information Services" in software or "Advanced Logging" in software:
        return "iis"
    if "SHOUTcast" in software:
        return "shoutcast_w3c"
    if "Netscaler" in software or "NetScaler" in software:
        return "netscaler"
    if "x-edge-location" in names:
        return "cloudfront_rtmp" if "x-event" in names else "cloudfront"
    if "avgbandwidth" in names or "x-duration" in names:
        return "shoutcast_w3c"
    if "sc-servicename" in names:
        return "netscaler"
    if names & {"cs-vid", "cs-clapp", "cs-browsertype"}:
        return "incapsula"
    if names & {"s-sitename", "s-computername", "sc-win32-status", "sc-substatus", "date-local"}:
        return "iis"
    return "w3c"


def _moment_ms(date: str, time: str, tz: tzinfo) -> int | None:
    found_date = _DATE.fullmatch(date)
    found_time = _TIME.fullmatch(time)
    if found_date is None or found_time is None:
        return None
    year, month, day = (int(part) for part in found_date.groups())
    hour, minute, second = (int(part) for part in found_time.groups()[:3])
    return local_ms(year, month, day, hour, minute, second, found_time.group(4), tz)


def _agent(value: str) -> str:
    if "%" in value:
        return unquote(value)
    if "+" in value and " " not in value:
        return value.replace("+", " ")
    return value


def _shown(text: str) -> str:
    return repr(text[:_MAX_SHOWN] + ("..." if len(text) > _MAX_SHOWN else ""))


class W3cParser(LineParser):
    """Reads lines with the fields of the last ``#Fields:`` directive; see the module
    docstring. One parser per file: it keeps that directive."""

    def __init__(
        self, tz: tzinfo = UTC, fields: list[str] | None = None, name: str = "w3c"
    ) -> None:
        self.name = name
        self._tz = tz
        self._slots: tuple[int, ...] = ()
        self._has: set[str] = set()
        self._count = 0
        self._times: dict[str, int | None] = {}  # per distinct date and time, bounded
        if fields is not None:
            self._set_fields(fields)

    def _set_fields(self, fields: list[str]) -> None:
        lowered = [name.lower() for name in fields]
        self._count = len(lowered)
        slots = []
        for names in _ALIASES.values():
            found = next((lowered.index(n) for n in names if n in lowered), -1)
            slots.append(found)
        self._slots = tuple(slots)
        self._has = {part for part, at in zip(_ALIASES, slots, strict=True) if at >= 0}
        self._default_method = None if "method" in self._has else "GET"

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        if not text.strip():
            return Reject("empty", "an empty line")
        if text[0] == "#":
            if text.startswith("#Fields:"):
                self._set_fields(text[len("#Fields:") :].split())
            return Reject("header", f"a W3C directive, not a request: {_shown(text)}")
        if not self._count:
            return Reject("no_match", f"a line before any #Fields: directive: {_shown(text)}")
        if "\t" in text:
            values = text.split("\t")
        elif '"' not in text:
            values = text.split(" ")
        else:
            values = [
                found.group(1) if found.group(2) is None else found.group(2)
                for found in _TOKENS.finditer(text)
            ]
        if len(values) != self._count:
            values = text.split()  # several spaces between values
            if len(values) != self._count:
                return Reject(
                    "no_match",
                    f"{len(values)} values where #Fields: names {self._count}: {_shown(text)}",
                )
        (
            date,
            time,
            addr,
            client_port,
            forwarded,
            method,
            stem,
            query,
            uri,
            protocol,
            status_text,
            nbytes,
            referrer,
            agent,
            user,
            host,
            server_port,
            taken,
            seconds,
        ) = [None if at < 0 or (v := values[at]) in _NONE else v for at in self._slots]
        timestamp_ms = None
        if date is not None and time is not None:
            key = f"{date} {time}"
            timestamp_ms = self._times.get(key, -1)
            if timestamp_ms == -1:
                timestamp_ms = _moment_ms(date, time, self._tz)
                if len(key) <= 40:  # a date and a time; anything longer is not kept
                    if len(self._times) >= 8192:
                        self._times.clear()
                    self._times[key] = timestamp_ms
        if timestamp_ms is None:
            return Reject("bad_time", f"no date and time after 1970: {_shown(text)}")
        method = method.upper() if method else self._default_method
        target = stem
        if target is not None:
            if query is not None:
                target = f"{target}?{query}"
        else:
            target = uri
        if target is not None and target[0] != "/" and "://" not in target:
            host, slash, path = target.partition("/")  # Incapsula: host/path?query
            target = slash + path or "/"
        if method is None or target is None:
            return Reject("bad_request_line", f"no method and URL: {_shown(text)}")
        if protocol is not None and not protocol.upper().startswith("HTTP/"):
            protocol = None
        request = f"{method} {target}" if protocol is None else f"{method} {target} {protocol}"
        status: int | None = None
        if status_text is not None:
            if not status_text.isdigit() or not 100 <= int(status_text) <= 599:
                return Reject("bad_status", f"not an HTTP status code: {_shown(status_text)}")
            status = int(status_text)
        duration: float | None = None
        if taken is not None:
            try:
                duration = float(taken) if "." in taken else int(taken) / 1000
            except ValueError:
                duration = None
        elif seconds is not None and seconds.isdigit():
            duration = float(seconds)
        if addr is not None and client_port is not None and client_port.isdigit():
            addr = f"[{addr}]:{client_port}" if ":" in addr else f"{addr}:{client_port}"
        return ParsedLine(
            text,
            timestamp_ms,
            f"{date} {time}",
            addr,
            user,
            request,
            method,
            target,
            protocol.upper() if protocol else None,
            status,
            int(nbytes) if nbytes is not None and nbytes.isdigit() else None,
            referrer,
            None if agent is None else _agent(agent),
            forwarded,
            duration,
            host,
            int(server_port) if server_port is not None and server_port.isdigit() else None,
        )
