"""JSON access logs whose shape is a server's own: Caddy's and Traefik's.

- ``caddy``: Caddy 2's ``http.log.access`` lines: ``ts`` (epoch seconds, or a time text
  when ``time_format`` is set), ``request`` (``client_ip`` or ``remote_ip``,
  ``remote_port``, ``proto``, ``method``, ``host``, ``uri``, ``headers`` whose
  ``User-Agent``, ``Referer`` and ``X-Forwarded-For`` lists are read), ``status``,
  ``size`` and ``duration`` (seconds).
- ``traefik_json``: Traefik's JSON access log: ``StartUTC`` (or ``time``),
  ``ClientAddr``/``ClientHost``, ``RequestMethod``, ``RequestPath`` (with the query),
  ``RequestProtocol``, ``RequestHost``, ``RequestPort``, ``DownstreamStatus`` (else
  ``OriginStatus``), ``DownstreamContentSize``, ``Duration`` (nanoseconds), and the
  ``request_User-Agent``, ``request_Referer``, ``request_X-Forwarded-For`` headers when
  Traefik keeps them.

Other JSON lines (NGINX ``escape=json`` formats and most shippers' shapes) are the
``json`` format of :mod:`metronome.logs.parse`.
"""

from __future__ import annotations

from typing import Any

import orjson

from metronome.events.document import parse_iso
from metronome.logs.parse import LineParser, ParsedLine, Reject

__all__ = ["CaddyParser", "TraefikJsonParser"]

_MAX_SHOWN = 120
_NONE = frozenset({"", "-"})


def _shown(text: str) -> str:
    return repr(text[:_MAX_SHOWN] + ("..." if len(text) > _MAX_SHOWN else ""))


def _object(text: str) -> dict[str, Any] | Reject:
    if text[:1] == "{":  # most lines: no stripped copies of the line
        try:
            found: dict[str, Any] = orjson.loads(text)  # "{" starts an object, or no JSON
        except orjson.JSONDecodeError:
            return Reject("bad_json", f"not JSON: {_shown(text)}")
        return found
    if not text.strip():
        return Reject("empty", "an empty line")
    if not text.lstrip().startswith("{"):
        return Reject("no_match", f"not a JSON object: {_shown(text)}")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Reject("bad_json", f"not JSON: {_shown(text)}")
    if not isinstance(obj, dict):
        return Reject("bad_json", f"not a JSON object: {_shown(text)}")
    return obj


def _status(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    if isinstance(value, str) and value.isdigit() and 100 <= int(value) <= 599:
        return int(value)
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _time_ms(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        ms = round(value * 1000) if value < 1e11 else int(value)
        return ms if ms >= 0 else None
    if isinstance(value, str):
        moment = parse_iso(value)
        if moment is not None:
            ms = round(moment.timestamp() * 1000)
            return ms if ms >= 0 else None
    return None


def _header(headers: Any, name: str) -> str | None:
    """The first value of a header as Caddy logs them (``{"User-Agent": ["..."]}``)."""
    if type(headers) is not dict:
        return None
    values = headers.get(name)
    if type(values) is list and values and type(values[0]) is str:
        return ", ".join(values) if len(values) > 1 else values[0]
    return None


def _str(value: Any) -> str | None:
    return value if type(value) is str and value not in _NONE else None


class CaddyParser(LineParser):
    """Caddy 2's JSON access log; see the module docstring."""

    name = "caddy"

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        obj = _object(text)
        if type(obj) is not dict:
            return obj  # type: ignore[return-value]
        request = obj.get("request")
        if type(request) is not dict or "uri" not in request or "ts" not in obj:
            return Reject("no_match", f"not a Caddy access log line: {_shown(text)}")
        timestamp_ms = _time_ms(obj["ts"])
        if timestamp_ms is None:
            return Reject("bad_time", f"no time after 1970 in ts: {_shown(text)}")
        method, uri = _str(request.get("method")), _str(request.get("uri"))
        if method is None or uri is None or " " in method:
            return Reject("bad_request_line", f"no method and URI: {_shown(text)}")
        status = _status(obj.get("status"))
        if status is None:
            return Reject("bad_status", f"no HTTP status code: {_shown(text)}")
        headers = request.get("headers")
        addr = _str(request.get("client_ip")) or _str(request.get("remote_ip"))
        port = _str(request.get("remote_port"))
        if addr is not None and port is not None and port.isdigit():
            addr = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        duration = obj.get("duration")
        protocol = _str(request.get("proto"))
        return ParsedLine(
            text,
            timestamp_ms,
            str(obj["ts"]),
            addr,
            _str(obj.get("user_id")),
            f"{method} {uri}" if protocol is None else f"{method} {uri} {protocol}",
            method,
            uri,
            protocol,
            status,
            _count(obj.get("size")),
            _header(headers, "Referer"),
            _header(headers, "User-Agent"),
            _header(headers, "X-Forwarded-For"),
            float(duration) if isinstance(duration, int | float) else None,
            _str(request.get("host")),
            None,
        )


class TraefikJsonParser(LineParser):
    """Traefik's JSON access log; see the module docstring."""

    name = "traefik_json"

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        obj = _object(text)
        if isinstance(obj, Reject):
            return obj
        if "RequestMethod" not in obj or "RequestPath" not in obj:
            return Reject("no_match", f"not a Traefik access log line: {_shown(text)}")
        time_value = obj.get("StartUTC", obj.get("time"))
        timestamp_ms = _time_ms(time_value)
        if timestamp_ms is None:
            return Reject("bad_time", f"no time after 1970 in StartUTC: {_shown(text)}")
        method, path = _str(obj.get("RequestMethod")), _str(obj.get("RequestPath"))
        if method is None or path is None:
            return Reject("bad_request_line", f"no method and path: {_shown(text)}")
        status = _status(obj.get("DownstreamStatus", obj.get("OriginStatus")))
        if status is None:
            return Reject("bad_status", f"no HTTP status code: {_shown(text)}")
        duration = obj.get("Duration")
        port = _str(obj.get("RequestPort"))
        protocol = _str(obj.get("RequestProtocol"))
        if " " in method:
            return Reject("bad_request_line", f"not an HTTP method: {_shown(method)}")
        return ParsedLine(
            text,
            timestamp_ms,
            str(time_value),
            _str(obj.get("ClientAddr")) or _str(obj.get("ClientHost")),
            _str(obj.get("ClientUsername")),
            f"{method} {path}" if protocol is None else f"{method} {path} {protocol}",
            method,
            path,
            protocol,
            status,
            _count(obj.get("DownstreamContentSize")),
            _str(obj.get("request_Referer")),
            _str(obj.get("request_User-Agent")),
            _str(obj.get("request_X-Forwarded-For")),
            duration / 1e9 if isinstance(duration, int | float) else None,
            _str(obj.get("RequestHost")),
            int(port) if port is not None and port.isdigit() else None,
        )
