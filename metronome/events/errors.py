"""Error reports: the ``error`` tick's fields, and the fingerprint that groups them.

An ``error`` tick (``"event": "error"``, from the browser tracker or a server through a
client) may carry ``message``, ``type``, ``source``, ``line``, ``column`` and ``stack``;
they go to ``error.*`` (ECS names), never to ``params.*``. On any other event these keys
stay free parameters, as they always were.

Grouping happens at ingestion, so a report groups by one keyword (``error.fingerprint``)
on either store. The group is the error's type, its message *normalised* (URLs, UUIDs,
hexadecimal ids, e-mail addresses, quoted strings and numbers replaced by placeholders:
``Cannot read "x" of item 42`` and ``Cannot read "y" of item 7`` are one error) and the
**top stack frame** as ``file:function``. The frame has no line or column numbers on
purpose: they change with every build of a bundle (and with every edit above the
failing line in a server's source), which would split one error into a new group per
release, while a function in a file is where a person goes to fix it. Files are kept
without query strings, fragments and origin, so a cache-busting ``app.js?v=3`` or a CDN
host does not split a group either. Without a stack, the source file stands in for the
frame. The fingerprint is the first 16 hex digits of the group's SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from metronome.errors import InvalidField, LimitExceeded

__all__ = [
    "ERROR_KEYS",
    "MAX_MESSAGE_CHARS",
    "MAX_STACK_CHARS",
    "error_fields",
    "fingerprint",
    "normalise_message",
    "top_frame",
]

ERROR_KEYS = frozenset({"message", "type", "source", "line", "column", "stack"})
"""What an ``error`` tick may say about the error (the rest are free parameters)."""
MAX_MESSAGE_CHARS = 1024
MAX_TYPE_CHARS = 256
MAX_STACK_CHARS = 16_384
MAX_POSITION = 10_000_000  # a line or column past this is no source position
MAX_GROUP_CHARS = 1024

_PLACEHOLDERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>()]+", re.I), "<url>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "<email>"),
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
        "<uuid>",
    ),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|`[^`\n]*`|\u201c[^\u201d\n]*\u201d"), "<str>"),
    (re.compile(r"(?<![\w<])[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?(?!\d)", re.I), "<n>"),
)
_SPACE = re.compile(r"\s+")

# One frame of a stack, most recent first (JavaScript) or last (Python):
#   V8:        "    at render (https://x.org/app.js?v=3:10:5)" or "    at https://x.org/app.js:1:2"
#   Firefox:   "render@https://x.org/app.js:10:5"
#   Python:    '  File "/srv/app/views.py", line 12, in show'
#   Go:        "main.handler(...)\n\t/srv/app/main.go:42 +0x1d" (function, then file)
_V8 = re.compile(
    r"^\s*at (?:(?:async )?(?P<fn>[^\s(]+(?: \[as [^\]]+\])?) \()?"
    r"(?P<file>.+?)(?::\d+)?(?::\d+)?\)?\s*$"
)
_GECKO = re.compile(r"^\s*(?P<fn>[^@\s]*)@(?P<file>.+?)(?::\d+)?(?::\d+)?\s*$")
_PYTHON = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+, in (?P<fn>\S+)')
_GO_FILE = re.compile(r"^\t(?P<file>\S+\.go):\d+")
_GO_FN = re.compile(r"^(?P<fn>[\w./*()-]+)\(.*\)$")


def normalise_message(message: str) -> str:
    """The message with what varies between occurrences of one error replaced."""
    text = message
    for pattern, placeholder in _PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return _SPACE.sub(" ", text).strip()


def _file(location: str) -> str:
    """A frame's file without origin, query, fragment or position: ``/static/app.js``."""
    location = location.strip()
    if "://" in location:
        parts = urlsplit(location)
        location = parts.path or "/"
    else:
        location = location.split("?", 1)[0].split("#", 1)[0]
    return location


def top_frame(stack: str) -> str | None:
    """``file:function`` of the frame the error was raised in, or None when the stack
    has no frame this understands (V8, Firefox/Safari, Python and Go traces)."""
    lines = stack.splitlines()
    python = [m for line in lines if (m := _PYTHON.match(line))]
    if python:  # a Python traceback lists the innermost frame last
        return f"{_file(python[-1]['file'])}:{python[-1]['fn']}"
    for index, line in enumerate(lines):
        go = _GO_FILE.match(line)
        if go and index > 0 and (fn := _GO_FN.match(lines[index - 1].strip())):
            return f"{_file(go['file'])}:{fn['fn']}"
        match = _V8.match(line) if line.lstrip().startswith("at ") else _GECKO.match(line)
        if match and ("/" in match["file"] or "." in match["file"]):
            return f"{_file(match['file'])}:{match['fn'] or '<anonymous>'}"
    return None


def fingerprint(
    error_type: str | None, message: str | None, source: str | None, stack: str | None
) -> tuple[str, str]:
    """``(group, fingerprint)``: the readable group (type, normalised message, top frame
    or source file) and its hash. See the module's docstring for why no line numbers."""
    frame = top_frame(stack) if stack else None
    if frame is None and source:
        frame = _file(source)
    head = normalise_message(message or "")
    group = f"{error_type}: {head}" if error_type else head or "(no message)"
    if frame:
        group += f" at {frame}"
    group = group[:MAX_GROUP_CHARS]
    digest = hashlib.sha256(group.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return group, digest


def _text(raw: dict[str, Any], key: str, limit: int) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidField(f"'{key}' of an error must be text", field=key)
    value = value.strip()
    if len(value) > limit:
        raise LimitExceeded(
            f"'{key}' of an error is {len(value)} characters long; the limit is {limit}",
            field=key,
            limit=limit,
        )
    return value or None


def _position(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POSITION:
        raise InvalidField(
            f"'{key}' of an error is a whole number from 0 to {MAX_POSITION}", field=key
        )
    return value


def error_fields(raw: dict[str, Any], max_value_length: int) -> dict[str, Any]:
    """The ``error`` object of an error tick's document (validated; 4xx errors name the
    key), with its group and fingerprint."""
    message = _text(raw, "message", MAX_MESSAGE_CHARS)
    error_type = _text(raw, "type", MAX_TYPE_CHARS)
    source = _text(raw, "source", max_value_length)
    stack = _text(raw, "stack", MAX_STACK_CHARS)
    line = _position(raw, "line")
    column = _position(raw, "column")
    group, digest = fingerprint(error_type, message, source, stack)
    error: dict[str, Any] = {"group": group, "fingerprint": digest}
    for key, value in (
        ("message", message),
        ("type", error_type),
        ("source", source),
        ("line", line),
        ("column", column),
        ("stack_trace", stack),
    ):
        if value is not None:
            error[key] = value
    return error
