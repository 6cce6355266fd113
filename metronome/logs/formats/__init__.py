"""Access-log formats by name, and recognising them: one module per family.

- :mod:`~metronome.logs.formats.text`: NGINX, Apache/NCSA, Icecast2, Gandi, OVH, AWS ELB,
  ALB and S3, HAProxy, Traefik's CLF: NGINX ``log_format`` strings compiled by
  :mod:`metronome.logs.parse`;
- :mod:`~metronome.logs.formats.apache`: Apache ``LogFormat`` strings, translated;
- :mod:`~metronome.logs.formats.w3c`: W3C extended logs (IIS, CloudFront, NetScaler,
  Incapsula, SHOUTcast), read with their ``#Fields:`` directive;
- :mod:`~metronome.logs.formats.jsonlogs`: Caddy and Traefik JSON (other JSON lines:
  ``json``);
- :mod:`~metronome.logs.formats.catalog`: the names, their help and parsers;
- :mod:`~metronome.logs.formats.detect`: which format a file is in, from its first lines,
  and the parser that keeps recognising close variants line by line (``auto``).

:func:`compile_format` is what ``--format`` and ``METRONOME_LOG_FORMAT`` name.
"""

from __future__ import annotations

from datetime import UTC, tzinfo

from metronome.logs.formats.apache import is_apache_log_format, nginx_log_format
from metronome.logs.formats.catalog import AUTO, FORMAT_HELP, W3C_NAMES, named_parsers
from metronome.logs.formats.detect import AutoParser, Detection, UnknownFormat, detect
from metronome.logs.formats.w3c import W3cParser
from metronome.logs.parse import FormatError, LineParser, text_parser
from metronome.logs.parse import compile_format as _compile_basic

__all__ = [
    "AUTO",
    "FORMAT_HELP",
    "W3C_NAMES",
    "AutoParser",
    "Detection",
    "UnknownFormat",
    "compile_format",
    "detect",
    "named_parsers",
]


def compile_format(spec: str, tz: tzinfo = UTC) -> LineParser:
    """The parser ``spec`` names: ``auto``, a name of :data:`FORMAT_HELP` (or of
    :data:`W3C_NAMES`), an NGINX ``log_format`` string or an Apache ``LogFormat``
    string. Times logged without an offset are read in ``tz``. Raises
    :class:`~metronome.logs.parse.FormatError` for anything else."""
    text = spec.strip()
    name = text.lower()
    if name == AUTO:
        return AutoParser(tz)
    if name in W3C_NAMES:
        return W3cParser(tz, name=name)
    for parser in named_parsers(tz):
        if parser.name == name:
            return parser
    if is_apache_log_format(text):
        return text_parser("LogFormat", nginx_log_format(text), tz=tz)
    if "$" not in text:
        raise FormatError(
            f"unknown log format {spec!r}: not one of {', '.join(FORMAT_HELP)} (nor a"
            " log_format string with $variables or a LogFormat string with %directives)"
        )
    return _compile_basic(text, tz)
