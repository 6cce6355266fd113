"""Apache ``LogFormat`` strings (``%h %l %u %t \\"%r\\" %>s %b``), translated into the
NGINX ``log_format`` strings the parser compiles.

The directives read: ``%h %a`` (client), ``%l`` (ident), ``%u`` (user), ``%t`` (time),
``%{msec}t``, ``%r`` (request line), ``%m``, ``%U%q`` (or ``%U``), ``%>s %s`` (status),
``%b %B %O`` (bytes), ``%{Referer}i``, ``%{User-Agent}i``, ``%{X-Forwarded-For}i``,
``%{Host}i``, ``%v %V`` (virtual host), ``%p`` (port), ``%D`` and ``%{us}T``
(microseconds), ``%T`` and ``%{s}T`` (seconds), ``%{ms}T``. Any other directive matches
one token, or one quoted string between quotes, and is ignored.
"""

from __future__ import annotations

import re

from metronome.logs.parse import FormatError

__all__ = ["is_apache_log_format", "nginx_log_format"]

_DIRECTIVE = re.compile(r"%(?:[<>]|!?\d{3}(?:,\d{3})*)*(?:\{([^}]*)\})?([a-zA-Z%])")
_PLAIN = {
    "h": "$remote_addr",
    "a": "$remote_addr",
    "l": "$remote_ident",
    "u": "$remote_user",
    "t": "[$time_local]",
    "r": "$request",
    "m": "$request_method",
    "U": "$uri",
    "s": "$status",
    "b": "$body_bytes_sent",
    "B": "$body_bytes_sent",
    "O": "$bytes_sent",
    "v": "$host",
    "V": "$host",
    "p": "$server_port",
    "D": "$request_time_us",
    "T": "$request_time_s",
}
_HEADERS = {
    "referer": "$http_referer",
    "user-agent": "$http_user_agent",
    "x-forwarded-for": "$http_x_forwarded_for",
    "host": "$host",
}
_UNITS = {"us": "$request_time_us", "ms": "$request_time_ms", "s": "$request_time_s"}


def is_apache_log_format(text: str) -> bool:
    """Whether ``text`` reads as an Apache ``LogFormat`` string rather than NGINX's."""
    return "$" not in text and _DIRECTIVE.search(text) is not None


def _directive(found: re.Match[str]) -> str:
    argument, letter = found.group(1), found.group(2)
    if letter == "%":
        return "%"
    if argument is not None:
        if letter == "i" and argument.lower() in _HEADERS:
            return _HEADERS[argument.lower()]
        if letter == "T" and argument in _UNITS:
            return _UNITS[argument]
        if letter == "t" and argument == "msec":
            return "$msec"
        if letter == "t":
            raise FormatError(f"the time format %{{{argument}}}t is not supported: use %t")
        if letter in "ap" and argument in ("c", "canonical", "local", "remote"):
            return _PLAIN[letter]
        name = re.sub(r"\W", "_", argument.lower())
        return f"${{apache_{letter}_{name}}}"
    if letter in _PLAIN:
        return _PLAIN[letter]
    return f"${{apache_{letter}}}"


def nginx_log_format(apache: str) -> str:
    """The NGINX ``log_format`` string reading the lines of an Apache ``LogFormat``."""
    text = apache.strip()
    directive = re.fullmatch(r'LogFormat\s+"(.*)"(?:\s+\S+)?', text, re.DOTALL)
    if directive:
        text = directive.group(1)
    text = text.replace('\\"', '"')
    text = re.sub(r"%(?:[<>])?U%(?:[<>])?q", "$request_uri", text)
    return _DIRECTIVE.sub(_directive, text)
