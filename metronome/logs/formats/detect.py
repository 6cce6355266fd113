"""Which format a log is in, recognised from its first lines, and the ``auto`` parser.

:func:`detect` reads up to :data:`SAMPLE_LINES` lines from the start of a file. A W3C
``#Fields:`` directive among them makes it a W3C file (its fields name the server). Else
every named format parses every sampled line: the format that stores the most of them
wins, then the one whose other lines it recognises but must reject (a ``"-"`` request, a
bad status: the line has that format's shape), then the more specific (the catalog's
order). A file where no format stores a line, or whose best format recognises fewer than
half of the sampled lines (not counting two, the first and last lines of a file cut out
of a longer one), is not an access log: :class:`UnknownFormat` says so and shows
its first line, and nothing is stored.

:class:`AutoParser` starts with the detected parser (or, with no sample, with the first
format that reads the first line) and keeps recognising line by line: a line the current
format cannot read is tried with the other formats of the same family (common and
combined lines in one file, a ``"-"`` request, a line with an extra field), then with
every format; the one that reads it becomes the current one. A W3C directive switches to
the W3C parser at any point.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, tzinfo

from metronome.logs.formats.catalog import FORMAT_HELP, named_parsers
from metronome.logs.formats.w3c import W3cParser, flavour
from metronome.logs.parse import FormatError, LineParser, ParsedLine, Reject

__all__ = ["SAMPLE_LINES", "AutoParser", "Detection", "UnknownFormat", "detect"]

SAMPLE_LINES = 50
_MAX_SHOWN = 120
_SHAPE_REJECTS = frozenset({"bad_time", "bad_request_line", "bad_status"})
_FAILED = frozenset({"no_match", "bad_json", "empty"})


class UnknownFormat(FormatError):
    """No format reads the first lines of a file: it is not an access log we know."""


@dataclass(frozen=True, slots=True)
class Detection:
    """The format chosen (``name``), a parser of it, and why (``reason``)."""

    name: str
    parser: LineParser
    reason: str


def _shown(text: str) -> str:
    return repr(text[:_MAX_SHOWN] + ("..." if len(text) > _MAX_SHOWN else ""))


def _fields(line: str) -> list[str] | None:
    return line[len("#Fields:") :].split() if line.startswith("#Fields:") else None


def detect(lines: list[str], tz: tzinfo = UTC) -> Detection:
    """The format of a file whose first lines are ``lines``; see the module docstring.
    Raises :class:`UnknownFormat` when it is none."""
    sample = [line.rstrip("\r\n") for line in lines if line.strip()][:SAMPLE_LINES]
    if not sample:
        raise UnknownFormat("the file is empty: there is no line to recognise a format from")
    directives = [line for line in sample if line.startswith("#")]
    for number, line in enumerate(sample, 1):
        fields = _fields(line)
        if fields is not None:
            name = flavour(directives)
            w3c = W3cParser(tz, fields, name=name)
            return Detection(
                name,
                AutoParser(tz, w3c),
                f"W3C extended log ({name}): the #Fields: directive of line {number} names"
                f" {' '.join(fields[:8])}{' ...' if len(fields) > 8 else ''}",
            )
    data = [line for line in sample if not line.startswith("#")]
    best: tuple[int, int] = (0, 0)
    chosen: LineParser | None = None
    for parser in named_parsers(tz):
        stored = recognised = 0
        for line in data:
            result = parser.parse(line)
            if isinstance(result, ParsedLine):
                stored += 1
                recognised += 1
            elif result.reason in _SHAPE_REJECTS:
                recognised += 1
        if (stored, recognised) > best:
            best, chosen = (stored, recognised), parser
    stored, recognised = best
    # a cut file's first and last lines may be pieces: they are not held against it
    if chosen is None or stored == 0 or recognised * 2 < len(data) - 2:
        known = ", ".join(name for name in FORMAT_HELP if name != "auto")
        raise UnknownFormat(
            f"not an access log Metronome recognises: no format ({known}) reads"
            f" {'any' if stored == 0 else 'half'} of its first {len(data)} lines; the first"
            f" is {_shown(data[0] if data else sample[0])}. Name the format with --format"
            " (a name, an NGINX log_format or an Apache LogFormat string)"
        )
    return Detection(
        chosen.name,
        AutoParser(tz, chosen),
        f"{chosen.name} ({FORMAT_HELP.get(chosen.name, chosen.name)}): it reads {stored} of"
        f" the first {len(data)} lines"
        + (f", and recognises {recognised - stored} more" if recognised > stored else ""),
    )


class AutoParser(LineParser):
    """Parses lines in the format they are in; see the module docstring. One per file."""

    name = "auto"

    def __init__(self, tz: tzinfo = UTC, first: LineParser | None = None) -> None:
        self._tz = tz
        self._all = named_parsers(tz)
        self._current: LineParser | None = first
        self._w3c: W3cParser | None = first if isinstance(first, W3cParser) else None
        if first is not None and not isinstance(first, W3cParser):
            self._all = [first] + [p for p in self._all if p.name != first.name]

    @property
    def current(self) -> LineParser | None:
        """The parser that read the last line (None before the first line)."""
        return self._current

    def parse(self, line: str) -> ParsedLine | Reject:
        current = self._current
        if current is not None:
            result = current.parse(line)
            if isinstance(result, ParsedLine) or result.reason not in _FAILED:
                return result
            failed = result
        else:
            failed = Reject("no_match", "")
        if line.startswith("#"):
            if self._w3c is None:
                self._w3c = W3cParser(self._tz)
            self._current = self._w3c
            return self._w3c.parse(line)
        if not line.strip():
            return Reject("empty", "an empty line")
        candidates = self._all
        if self._w3c is not None and current is not self._w3c:
            candidates = [self._w3c, *candidates]
        shape: tuple[LineParser, Reject] | None = None
        for parser in candidates:
            if parser is current:
                continue
            found = parser.parse(line)
            if isinstance(found, ParsedLine):
                self._current = parser
                return found
            if shape is None and found.reason in _SHAPE_REJECTS:
                shape = (parser, found)
        if shape is not None:
            return shape[1]
        if current is None or not failed.message:
            text = line.rstrip("\r\n")
            return Reject("no_match", f"no known access-log format reads it: {_shown(text)}")
        return failed
