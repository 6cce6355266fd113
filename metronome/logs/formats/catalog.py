"""The catalog of named formats: their help lines and their parsers, in detection order."""

from __future__ import annotations

from datetime import UTC, tzinfo

from metronome.logs.formats.jsonlogs import CaddyParser, TraefikJsonParser
from metronome.logs.formats.text import TEXT_FORMATS
from metronome.logs.parse import LineParser, compile_format, text_parser

__all__ = ["AUTO", "FORMAT_HELP", "W3C_NAMES", "named_parsers"]

AUTO = "auto"
W3C_NAMES = (
    "w3c",
    "iis",
    "cloudfront",
    "cloudfront_rtmp",
    "netscaler",
    "incapsula",
    "shoutcast_w3c",
)
FORMAT_HELP: dict[str, str] = {
    AUTO: "recognise the format from the first lines, then line by line (the default)",
    **{f.name: f.help for f in TEXT_FORMATS},
    "w3c": "W3C extended with #Fields: (IIS, Advanced Logging, CloudFront web and RTMP,"
    " NetScaler, Incapsula, SHOUTcast); also named iis, cloudfront, netscaler, ...",
    "caddy": "Caddy 2's JSON access log",
    "traefik_json": "Traefik's JSON access log",
    "json": "one JSON object a line (NGINX escape=json log_formats and the like)",
}
"""Every format name with one line of help (``metronome import --help`` lists them)."""


def named_parsers(tz: tzinfo = UTC) -> list[LineParser]:
    """A fresh parser of every named format except W3C (whose parser keeps a file's
    ``#Fields:``), in detection order: the more specific first."""
    parsers: list[LineParser] = [CaddyParser(), TraefikJsonParser(), compile_format("json")]
    parsers += [
        text_parser(f.name, f.log_format, tz=tz, require_status=f.name != "apache_ssl")
        for f in TEXT_FORMATS
    ]
    return parsers
