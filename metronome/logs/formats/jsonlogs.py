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
from metronome.logs.parse import LineParser, ParsedLine, Reject, split_request

__all__ = ["CaddyParser", "TraefikJsonParser"]

_MAX_SHOWN = 120
_NONE = frozenset({"", "-"})


def _shown(text: str) -> str:
    return repr(text[:_MAX_SHOWN] + ("..." if len(text) > _MAX_SHOWN else ""))


def _object(text: str) -> dict[str, Any] | Reject:
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


def _text(value: Any) -> str | None:
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value if isinstance(v, str | int | float)) or None
    if value is None or isinstance(value, bool | dict):
        return None
    text = value if isinstance(value, str) else str(value)
    return None if text in _NONE else text


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


def _parsed(
    text: str,
    timestamp_ms: int,
    time_text: str,
    method: str,
    target: str,
    protocol: str | None,
    status: int,
    **parts: Any,
) -> ParsedLine | Reject:
    request = f"{method} {target}" if protocol is None else f"{method} {target} {protocol}"
    split = split_request(request)
    if split is None:
        return Reject("bad_request_line", f"not an HTTP request: {_shown(request)}")
    return ParsedLine(
        text,
        timestamp_ms,
        time_text,
        parts.get("addr"),
        parts.get("user"),
        request,
        split[0],
        split[1],
        split[2],
        status,
        parts.get("body_bytes"),
        parts.get("referrer"),
        parts.get("agent"),
        parts.get("forwarded"),
        parts.get("duration"),
        parts.get("host"),
        parts.get("server_port"),
    )


class CaddyParser(LineParser):
    """Caddy 2's JSON access log; see the module docstring."""

    name = "caddy"

    def parse(self, line: str) -> ParsedLine | Reject:
        text = line.rstrip("\r\n")
        obj = _object(text)
        if isinstance(obj, Reject):
            return obj
        request = obj.get("request")
        if not isinstance(request, dict) or "uri" not in request or "ts" not in obj:
            return Reject("no_match", f"not a Caddy access log line: {_shown(text)}")
        timestamp_ms = _time_ms(obj["ts"])
        if timestamp_ms is None:
            return Reject("bad_time", f"no time after 1970 in ts: {_shown(text)}")
        method, uri = _text(request.get("method")), _text(request.get("uri"))
        if method is None or uri is None:
            return Reject("bad_request_line", f"no method and URI: {_shown(text)}")
        status = _status(obj.get("status"))
        if status is None:
            return Reject("bad_status", f"no HTTP status code: {_shown(text)}")
        headers = request.get("headers")
        headers = headers if isinstance(headers, dict) else {}
        addr = _text(request.get("client_ip")) or _text(request.get("remote_ip"))
        port = _text(request.get("remote_port"))
        if addr is not None and port is not None and port.isdigit():
            addr = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        duration = obj.get("duration")
        return _parsed(
            text,
            timestamp_ms,
            str(obj["ts"]),
            method,
            uri,
            _text(request.get("proto")),
            status,
            addr=addr,
            user=_text(obj.get("user_id")),
            body_bytes=_count(obj.get("size")),
            referrer=_text(headers.get("Referer")),
            agent=_text(headers.get("User-Agent")),
            forwarded=_text(headers.get("X-Forwarded-For")),
            duration=float(duration) if isinstance(duration, int | float) else None,
            host=_text(request.get("host")),
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
        method, path = _text(obj.get("RequestMethod")), _text(obj.get("RequestPath"))
        if method is None or path is None:
            return Reject("bad_request_line", f"no method and path: {_shown(text)}")
        status = _status(obj.get("DownstreamStatus", obj.get("OriginStatus")))
        if status is None:
            return Reject("bad_status", f"no HTTP status code: {_shown(text)}")
        duration = obj.get("Duration")
        port = _text(obj.get("RequestPort"))
        return _parsed(
            text,
            timestamp_ms,
            str(time_value),
            method,
            path,
            _text(obj.get("RequestProtocol")),
            status,
            addr=_text(obj.get("ClientAddr")) or _text(obj.get("ClientHost")),
            user=_text(obj.get("ClientUsername")),
            body_bytes=_count(obj.get("DownstreamContentSize")),
            referrer=_text(obj.get("request_Referer")),
            agent=_text(obj.get("request_User-Agent")),
            forwarded=_text(obj.get("request_X-Forwarded-For")),
            duration=duration / 1e9 if isinstance(duration, int | float) else None,
            host=_text(obj.get("RequestHost")),
            server_port=int(port) if port is not None and port.isdigit() else None,
        )
