"""Access-log lines to documents, without I/O: formats, rejects, URL rules, ids, mappings."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from metronome.config import Settings
from metronome.events import fields as F
from metronome.events.tick import Limits, RequestInfo, build_tick
from metronome.logs.formats import compile_format as compile_any_format
from metronome.logs.parse import (
    REJECT_REASONS,
    FormatError,
    LineParser,
    ParsedLine,
    Reject,
    build_log_document,
    compile_format,
)
from metronome.logs.rules import Match, RuleError, UrlRules
from metronome.store.templates import load_templates
from tests.support.mappings import leaf_fields

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
COMBINED = (
    '203.0.113.7 - - [10/Oct/2000:13:55:36 -0700] "GET /datasets/abc/download.csv'
    '?token=1 HTTP/1.1" 200 2326 "https://www.example.com/start/?q=1" "' + CHROME + '"'
)
PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
RULES = UrlRules.parse("/datasets/{id}/download.{format} -> download\n/datasets/{id}")
RECEIVED_MS = 1_800_000_000_000


def _ms(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """Epoch ms of a UTC time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


def parsed(line: str, fmt: str = "combined") -> ParsedLine:
    result = compile_format(fmt).parse(line)
    assert isinstance(result, ParsedLine), result
    return result


def rejected(line: str, fmt: str = "combined") -> Reject:
    result = compile_any_format(fmt).parse(line)
    assert isinstance(result, Reject), result
    return result


def document(
    line: str,
    fmt: str = "combined",
    *,
    source_id: str | None = "2049:77:0",
    offset: int | None = 0,
    rules: UrlRules = RULES,
    trusted: tuple[Any, ...] = PROXIES,
) -> dict[str, Any]:
    doc = build_log_document(
        parsed(line, fmt),
        source_id=source_id,
        offset=offset,
        rules=rules,
        trusted_proxies=trusted,
        received_ms=RECEIVED_MS,
    )
    assert doc.dataset == "logs"
    assert doc.id == doc.source["event"]["id"]
    return doc.source


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


# --------------------------------------------------------------------------- formats


def test_combined_line_is_split_into_its_raw_parts() -> None:
    line = parsed(COMBINED)
    assert (
        line.remote_addr,
        line.remote_user,
        line.method,
        line.target,
        line.protocol,
        line.status,
        line.body_bytes,
        line.referrer,
        line.user_agent,
    ) == (
        "203.0.113.7",
        None,
        "GET",
        "/datasets/abc/download.csv?token=1",
        "HTTP/1.1",
        200,
        2326,
        "https://www.example.com/start/?q=1",
        CHROME,
    )
    assert line.request == "GET /datasets/abc/download.csv?token=1 HTTP/1.1"
    assert line.time == "10/Oct/2000:13:55:36 -0700"
    assert line.timestamp_ms == _ms(2000, 10, 10, 20, 55, 36)
    assert line.line == COMBINED
    assert (line.forwarded_for, line.request_time, line.host) == (None, None, None)


def test_combined_reads_apache_lines_with_an_ident_and_dash_bytes() -> None:
    line = parsed(
        '192.0.2.9 ident frank [10/Oct/2000:13:55:36 -0700] "HEAD /a HTTP/1.0" 304 - "-" "-"'
    )
    assert (
        line.remote_user,
        line.method,
        line.status,
        line.body_bytes,
        line.referrer,
        line.user_agent,
    ) == ("frank", "HEAD", 304, None, None, None)


def test_common_format_has_no_referrer_or_agent() -> None:
    line = parsed(
        '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326',
        "common",
    )
    assert (line.target, line.body_bytes, line.referrer, line.user_agent) == (
        "/apache_pb.gif",
        2326,
        None,
        None,
    )
    assert rejected(COMBINED, "common").reason == "no_match"


def test_main_format_reads_x_forwarded_for() -> None:
    line = parsed(COMBINED.replace("203.0.113.7", "10.0.0.2") + ' "198.51.100.4, 10.0.0.9"', "main")
    assert line.forwarded_for == "198.51.100.4, 10.0.0.9"
    assert parsed(COMBINED + ' "-"', "main").forwarded_for is None


def test_ipv6_clients_are_parsed_and_stored_as_source_ip() -> None:
    source = document(COMBINED.replace("203.0.113.7", "2001:db8::7"))
    assert source["source"] == {"address": "2001:db8::7", "ip": "2001:db8::7"}
    assert parsed(COMBINED.replace("203.0.113.7", "2001:0DB8:0::07")).remote_addr == (
        "2001:0DB8:0::07"
    )  # as logged; the document holds the canonical form
    assert document(COMBINED.replace("203.0.113.7", "2001:0DB8:0::07"))["source"] == {
        "address": "2001:db8::7",
        "ip": "2001:db8::7",
    }


def test_dash_fields_are_none_and_absent_from_the_document() -> None:
    line = '- - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 200 - "-" "-"'
    parts = parsed(line)
    assert (
        parts.remote_addr,
        parts.remote_user,
        parts.body_bytes,
        parts.referrer,
        parts.user_agent,
    ) == (None, None, None, None, None)
    source = document(line)
    assert {"source", "referrer", "user_agent"}.isdisjoint(source)
    assert "body" not in source["http"]["response"]
    assert source["http"]["request"] == {"method": "GET"}
    assert source["bot"] is False


def test_escaped_quotes_in_agents_and_referrers_are_unescaped() -> None:
    apache = (
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.1" 200 5'
        ' "http://e.org/?q=\\"a\\"" "Agent \\"quoted\\" \\\\ slash"'
    )
    line = parsed(apache)
    assert line.referrer == 'http://e.org/?q="a"'
    assert line.user_agent == 'Agent "quoted" \\ slash'
    nginx = apache.replace('\\"', "\\x22").replace("\\\\", "\\x5C")
    assert parsed(nginx).user_agent == 'Agent "quoted" \\ slash'


def test_nginx_escapes_of_utf8_decode_and_of_control_bytes_stay_as_logged() -> None:
    line = (
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /x HTTP/1.1" 200 5 "-"'
        ' "caf\\xC3\\xA9 \\x07bell"'
    )
    assert parsed(line).user_agent == "café \\x07bell"


def test_request_without_http_version_is_a_request() -> None:
    line = parsed('192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /datasets/abc" 200 5 "-" "-"')
    assert (line.method, line.target, line.protocol) == ("GET", "/datasets/abc", None)
    assert "version" not in document(line.line)["http"]


def test_request_targets_with_spaces_and_absolute_urls() -> None:
    spaced = parsed('192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a b HTTP/1.1" 400 5 "-" "-"')
    assert (spaced.target, spaced.protocol) == ("/a b", "HTTP/1.1")
    source = document(
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "GET'
        ' http://Data.Example.org/datasets/x?y=1 HTTP/1.1" 200 5 "-" "-"'
    )
    assert source["url"] == {
        "original": "http://Data.Example.org/datasets/x?y=1",
        "domain": "data.example.org",
        "path": "/datasets/x",
        "query": "y=1",
    }
    connect = document(
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "CONNECT'
        ' example.org:443 HTTP/1.1" 405 5 "-" "-"'
    )
    assert connect["url"] == {"original": "example.org:443"}


@pytest.mark.parametrize(
    ("stamp", "utc"),
    [
        ("10/Oct/2000:13:55:36 -0700", (2000, 10, 10, 20, 55, 36)),
        ("10/Oct/2000:13:55:36 +0000", (2000, 10, 10, 13, 55, 36)),
        ("11/Oct/2000:02:25:36 +0530", (2000, 10, 10, 20, 55, 36)),
        ("01/Jan/2025:00:30:00 +0100", (2024, 12, 31, 23, 30, 0)),
        ("29/Feb/2024:23:59:59 -1200", (2024, 3, 1, 11, 59, 59)),
    ],
)
def test_time_local_offsets_give_the_right_utc_milliseconds(
    stamp: str, utc: tuple[int, int, int, int, int, int]
) -> None:
    line = parsed(COMBINED.replace("10/Oct/2000:13:55:36 -0700", stamp))
    assert line.timestamp_ms == _ms(*utc)
    expected = datetime.fromtimestamp(_ms(*utc) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert document(line.line)[F.TIMESTAMP] == expected


def test_custom_log_format_with_request_time_gives_event_duration() -> None:
    fmt = (
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent'
        ' "$http_referer" "$http_user_agent" $request_time'
    )
    line = COMBINED + " 0.123"
    assert parsed(line, fmt).request_time == 0.123
    source = document(line, fmt)
    assert source["event"]["duration"] == 123_000_000
    assert rejected(COMBINED + " fast", fmt).reason == "no_match"
    assert "duration" not in document(COMBINED + " -", fmt)["event"]


def test_log_format_directive_with_quoted_pieces_compiles() -> None:
    directive = """log_format timed escape=default '$remote_addr - $remote_user [$time_local] '
                   '"$request" $status $body_bytes_sent '
                   '"$http_referer" "$http_user_agent" $request_time';"""
    assert parsed(COMBINED + " 1.500", directive).request_time == 1.5
    quoted = "'" + compile_format("combined").log_format + "'"  # type: ignore[attr-defined]
    assert parsed(COMBINED, quoted).status == 200


def test_log_format_with_iso_time_host_and_method_uri_args() -> None:
    fmt = (
        '$host $remote_addr [$time_iso8601] "$request_method $request_uri" $status'
        ' $bytes_sent $upstream_response_time "$http_user_agent" "$http_cookie" $pipe'
    )
    line = (
        'Data.Example.org:8080 2001:db8::1 [2000-10-10T13:55:36-07:00] "POST /datasets/a'
        '?x=1" 201 99 0.010, 0.020 "curl/8.5.0" "session=\\"s\\"; a=b" p'
    )
    parts = parsed(line, fmt)
    assert (
        parts.host,
        parts.method,
        parts.target,
        parts.status,
        parts.body_bytes,
        parts.timestamp_ms,
    ) == (
        "Data.Example.org:8080",
        "POST",
        "/datasets/a?x=1",
        201,
        99,
        _ms(2000, 10, 10, 20, 55, 36),
    )
    source = document(line, fmt)
    assert source["url"]["domain"] == "data.example.org"
    assert source["http"]["request"] == {"method": "POST"}
    assert source["item"] == {"id": "a"}


def test_log_format_with_uri_and_args_and_msec() -> None:
    fmt = '$msec $remote_addr "$request_method $uri $args" $status'
    line = parsed('971211336.250 192.0.2.1 "GET /datasets/abc q=1" 200', fmt)
    assert (line.timestamp_ms, line.target, line.request) == (
        971211336250,
        "/datasets/abc?q=1",
        "GET /datasets/abc?q=1",
    )
    assert parsed('971211336.250 192.0.2.1 "GET /datasets/abc -" 200', fmt).target == (
        "/datasets/abc"
    )


def test_hosts_of_lines_with_the_same_target_stay_apart() -> None:
    fmt = '$host $remote_addr [$time_local] "$request" $status'
    rest = '192.0.2.1 [10/Oct/2000:13:55:36 -0700] "GET /datasets/a?x=1 HTTP/1.1" 200'
    domains = [
        document(f"{host} {rest}", fmt)["url"].get("domain")
        for host in ("a.example.org", "B.example.org.", "_", "a.example.org")
    ]
    assert domains == ["a.example.org", "b.example.org", None, "a.example.org"]
    assert document(f"[::1]:8443 {rest}", fmt)["url"]["domain"] == "::1"


def test_unknown_variables_match_tokens_or_quoted_strings_and_are_ignored() -> None:
    fmt = (
        '$remote_addr $ssl_protocol [$time_local] "$request" $status "$http_cookie"'
        " $connection ${request_id}x"
    )
    line = parsed(
        '192.0.2.1 TLSv1.3 [10/Oct/2000:13:55:36 -0700] "GET / HTTP/2.0" 200'
        ' "a=\\"1\\" b" 17 abc123x',
        fmt,
    )
    assert (line.remote_addr, line.protocol, line.status) == ("192.0.2.1", "HTTP/2.0", 200)
    assert document(line.line, fmt)["http"]["version"] == "2.0"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("combind", "unknown log format"),
        ("", "unknown log format"),
        ('$remote_addr "$request" $status', "lacks a time"),
        ("$remote_addr [$time_local] $status", "lacks the request"),
        ('[$time_local] "$request"', "lacks $status"),
        ('[$time_local] "$request_method" $status', "lacks the request"),
    ],
)
def test_bad_formats_are_refused_when_compiled(text: str, problem: str) -> None:
    with pytest.raises(FormatError, match=problem.replace("$", r"\$")):
        compile_format(text)


def test_named_formats_compile_once_and_are_reused() -> None:
    parser = compile_format(" Combined ")
    assert isinstance(parser, LineParser) and parser.name == "combined"
    regex = parser.regex  # type: ignore[attr-defined]
    for _ in range(3):
        parser.parse(COMBINED)
    assert parser.regex is regex  # type: ignore[attr-defined]
    assert compile_format("json").name == "json"


# --------------------------------------------------------------------------- JSON lines


def test_json_lines_in_nginx_escape_json_shape() -> None:
    line = json.dumps(
        {
            "time_local": "10/Oct/2000:13:55:36 -0700",
            "remote_addr": "10.0.0.2",
            "request": "GET /datasets/abc/download.CSV?x=1 HTTP/2.0",
            "status": "200",
            "body_bytes_sent": "512",
            "http_referer": "",
            "http_user_agent": GOOGLEBOT,
            "http_x_forwarded_for": "198.51.100.4",
            "request_time": "0.004",
            "host": "data.example.org",
        }
    )
    parts = parsed(line, "json")
    assert (
        parts.timestamp_ms,
        parts.status,
        parts.body_bytes,
        parts.referrer,
        parts.request_time,
        parts.host,
    ) == (_ms(2000, 10, 10, 20, 55, 36), 200, 512, None, 0.004, "data.example.org")
    source = document(line, "json")
    assert source["source"] == {"address": "198.51.100.4", "ip": "198.51.100.4"}  # via 10.0.0.2
    assert source["item"] == {"id": "abc", "format": "csv"}
    assert source["event"]["action"] == "download"
    assert source["event"]["duration"] == 4_000_000
    assert source["bot"] is True


def test_json_lines_with_method_uri_and_other_key_names() -> None:
    line = json.dumps(
        {
            "@timestamp": "2000-10-10T20:55:36.250Z",
            "client_ip": "2001:db8::5",
            "method": "GET",
            "path": "/datasets/xyz",
            "query_string": "a=1",
            "protocol": "HTTP/1.1",
            "status": 304,
            "bytes": 0,
            "referer": "https://www.arcgis.com/home",
            "user_agent": CHROME,
        }
    )
    parts = parsed(line, "json")
    assert (parts.timestamp_ms, parts.request, parts.status, parts.body_bytes) == (
        _ms(2000, 10, 10, 20, 55, 36) + 250,
        "GET /datasets/xyz?a=1 HTTP/1.1",
        304,
        0,
    )
    source = document(line, "json")
    assert source["referrer"] == {"domain": "arcgis.com", "page": "arcgis.com/home"}
    assert source["source"] == {"address": "2001:db8::5", "ip": "2001:db8::5"}


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        (971211336, 971211336000),  # $msec-like epoch seconds
        (971211336.25, 971211336250),
        (971211336250, 971211336250),  # epoch milliseconds
        ("971211336.250", 971211336250),
        ("2000-10-10T13:55:36-07:00", 971211336000),
        ("2000-10-10T20:55:36", 971211336000),  # no offset: UTC
    ],
)
def test_json_times_in_seconds_milliseconds_and_iso(value: Any, expected_ms: int) -> None:
    line = json.dumps({"timestamp": value, "request": "GET / HTTP/1.1", "status": 200})
    assert parsed(line, "json").timestamp_ms == expected_ms


# --------------------------------------------------------------------------- rejects

REJECTS: list[tuple[str, str, str]] = [
    ("combined", "", "empty"),
    ("combined", "   \r\n", "empty"),
    ("json", " ", "empty"),
    ("combined", "this is not an access log line", "no_match"),
    ("combined", COMBINED.replace('" 200', '" 200 extra'), "no_match"),
    ("json", "{not json", "bad_json"),
    ("json", "[1, 2]", "bad_json"),
    ("combined", COMBINED.replace("10/Oct/2000", "32/Oct/2000"), "bad_time"),
    ("combined", COMBINED.replace("10/Oct/2000", "10/Foo/2000"), "bad_time"),
    ("combined", COMBINED.replace("10/Oct/2000", "10/Oct/1960"), "bad_time"),
    ("combined", COMBINED.replace("13:55:36 -0700", "yesterday"), "bad_time"),
    ("json", '{"request": "GET / HTTP/1.1", "status": 200}', "bad_time"),
    ("json", '{"time": "soon", "request": "GET / HTTP/1.1", "status": 200}', "bad_time"),
    (
        "combined",
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "\\x16\\x03\\x01\\x00\\xA5\\x01'
        '\\x00\\x00\\xA1\\x03\\x03" 400 157 "-" "-"',
        "bad_request_line",
    ),
    (
        "combined",
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "-" 400 0 "-" "-"',
        "bad_request_line",
    ),
    ("combined", '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "" 400 0 "-" "-"', "bad_request_line"),
    (
        "combined",
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "get / HTTP/1.1" 400 0 "-" "-"',
        "bad_request_line",
    ),
    (
        "combined",
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "SSH-2.0-Go" 400 0 "-" "-"',
        "bad_request_line",
    ),
    ("json", '{"time": "2000-10-10T20:55:36Z", "status": 200}', "bad_request_line"),
    ("combined", COMBINED.replace('" 200 ', '" OK '), "bad_status"),
    ("combined", COMBINED.replace('" 200 ', '" 999 '), "bad_status"),
    ("json", '{"time": "2000-10-10T20:55:36Z", "request": "GET / HTTP/1.1"}', "bad_status"),
    ("w3c", "#Fields: date time c-ip cs-method cs-uri-stem sc-status", "header"),
]


@pytest.mark.parametrize(("fmt", "line", "reason"), REJECTS)
def test_lines_that_cannot_be_stored_are_rejected_with_a_stable_reason(
    fmt: str, line: str, reason: str
) -> None:
    result = rejected(line, fmt)
    assert result.reason == reason
    assert result.message
    assert len(result.message) < 300


def test_every_reject_reason_is_reachable() -> None:
    assert {reason for _, _, reason in REJECTS} == set(REJECT_REASONS)


def test_tls_probe_is_rejected_with_its_status_and_bytes_shown_as_logged() -> None:
    result = rejected(
        '192.0.2.1 - - [10/Oct/2000:13:55:36 -0700] "\\x16\\x03\\x01\\x00" 400 157 "-" "-"'
    )
    assert result.reason == "bad_request_line"
    assert "status 400" in result.message and "\\\\x16\\\\x03" in result.message


def test_binary_garbage_in_an_agent_does_not_reject_the_line() -> None:
    line = parsed(COMBINED.replace(CHROME, "\\x00\\xFF\\xFE junk"))
    assert line.user_agent == "\\x00\\xFF\\xFE junk"
    assert document(line.line)["user_agent"]["original"] == "\\x00\\xFF\\xFE junk"


# --------------------------------------------------------------------------- URL rules


def test_url_rules_map_a_download_to_item_event_and_format() -> None:
    assert RULES.match("/datasets/abc/download.csv") == Match("abc", "download", "csv")
    assert RULES.match("/datasets/abc") == Match("abc", "view", None)
    assert RULES.match("/datasets/abc/other") is None
    assert RULES.match("/") is None
    source = document(COMBINED)
    assert source["item"] == {"id": "abc", "format": "csv"}
    assert source["event"]["action"] == "download"


def test_url_rules_first_match_wins_and_wildcards_span_segments() -> None:
    rules = UrlRules.parse("""
        # maps first
        /maps/{id}/* -> map_view   # a comment after a rule
        /maps/* -> other ; /files/{id}.{format} -> download
        /static/*
    """)
    assert rules.match("/maps/7/a/b") == Match("7", "map_view", None)
    assert rules.match("/maps/7") == Match("/maps/7", "other", None)
    assert rules.match("/files/a.b.CSV") == Match("a.b", "download", "csv")
    assert rules.match("/static/css/x.css") == Match("/static/css/x.css", "view", None)
    assert len(rules.rules) == 4


def test_url_rule_values_are_percent_decoded() -> None:
    assert RULES.match("/datasets/parks%20dc") == Match("parks dc", "view", None)


def test_paths_without_a_rule_have_no_item_or_action() -> None:
    source = document(COMBINED.replace("/datasets/abc/download.csv", "/about"))
    assert "item" not in source and "action" not in source["event"]
    assert "item" not in document(COMBINED, rules=UrlRules())


@pytest.mark.parametrize(
    ("text", "number", "problem"),
    [
        ("datasets/{id}", 1, "starting with '/'"),
        ("/a/{id} -> download; /b/{ID}", 2, "unknown placeholder {ID}"),
        ("/a/{id", 1, "unbalanced"),
        ("/a/{id}/{id}", 1, "appears twice"),
        ("/a ->", 1, "must follow '->'"),
        ("/a -> two words", 1, "not an event name"),
        ("/a\n/b c -> view", 2, "spaces"),
    ],
)
def test_bad_url_rules_are_refused_naming_the_rule(text: str, number: int, problem: str) -> None:
    with pytest.raises(RuleError, match=f"URL rule {number} .*{problem}") as info:
        UrlRules.parse(text)
    assert info.value.number == number


# --------------------------------------------------------------------------- documents


def test_document_is_a_logstash_ecs_document_of_the_logs_dataset() -> None:
    source = document(COMBINED)
    assert source == {
        "@timestamp": "2000-10-10T20:55:36.000Z",
        "@version": "1",
        "event": {
            "id": source["event"]["id"],
            "dataset": "metronome.logs",
            "ingested": "2027-01-15T08:00:00.000Z",
            "action": "download",
        },
        "http": {
            "request": {"method": "GET", "referrer": "https://www.example.com/start/?q=1"},
            "response": {"status_code": 200, "body": {"bytes": 2326}},
            "version": "1.1",
        },
        "url": {
            "original": "/datasets/abc/download.csv?token=1",
            "path": "/datasets/abc/download.csv",
            "query": "token=1",
        },
        "item": {"id": "abc", "format": "csv"},
        "source": {"address": "203.0.113.7", "ip": "203.0.113.7"},
        "referrer": {"domain": "example.com", "page": "example.com/start"},
        "user_agent": source["user_agent"],
        "bot": False,
        "site": {"id": "default"},
    }
    assert "log" not in source  # raw lines go to the archive, not the index


def test_document_fields_are_all_mapped_by_the_logs_templates() -> None:
    fmt = (
        '$host $remote_addr [$time_local] "$request" $status $body_bytes_sent'
        ' "$http_referer" "$http_user_agent" "$http_x_forwarded_for" $request_time'
    )
    line = f'data.example.org 10.0.0.1 {COMBINED.split(" ", 3)[3]} "192.0.2.1" 0.5'
    flat = _flatten(document(line, fmt))
    assert set(flat) <= F.LOG_FIELDS
    assert F.CLIENT_IP not in flat and not any(k.startswith("params") for k in flat)
    assert {
        F.SOURCE_IP,
        F.HTTP_REQUEST_METHOD,
        F.URL_QUERY,
        F.HTTP_VERSION,
        F.HTTP_RESPONSE_STATUS_CODE,
        F.HTTP_RESPONSE_BODY_BYTES,
        F.EVENT_DURATION,
        F.URL_DOMAIN,
        F.ITEM_ID,
        F.ITEM_FORMAT,
        F.EVENT_ACTION,
        F.REFERRER_PAGE,
    } <= set(flat)
    assert isinstance(flat[F.HTTP_RESPONSE_STATUS_CODE], int)
    assert isinstance(flat[F.HTTP_RESPONSE_BODY_BYTES], int)


def test_same_file_and_offset_give_the_same_id() -> None:
    first = build_log_document(
        parsed(COMBINED),
        source_id="2049:77:0",
        offset=4096,
        rules=RULES,
        trusted_proxies=(),
        received_ms=1,
    )
    again = build_log_document(
        parsed(COMBINED),
        source_id="2049:77:0",
        offset=4096,
        rules=UrlRules(),
        trusted_proxies=PROXIES,
        received_ms=2,
    )
    assert first.id == again.id
    assert len(first.id) == 32 and int(first.id, 16) >= 0
    assert first.id.startswith(f"{parsed(COMBINED).timestamp_ms:012x}")


def _id_of(line: str, source_id: str | None, offset: int | None) -> str:
    """The event id of ``line`` read at ``offset`` of the file ``source_id``."""
    return build_log_document(
        parsed(line),
        source_id=source_id,
        offset=offset,
        rules=RULES,
        trusted_proxies=(),
        received_ms=1,
    ).id


def test_different_offset_or_file_gives_a_different_id() -> None:
    ids = {
        _id_of(COMBINED, source_id, offset)
        for source_id, offset in [
            ("2049:77:0", 0),
            ("2049:77:0", 1),
            ("2049:77:1", 0),
            ("2049:78:0", 0),
        ]
    }
    assert len(ids) == 4


def test_without_a_file_identity_the_id_comes_from_the_line_and_its_time() -> None:
    id_of = _id_of
    assert id_of(COMBINED, None, None) == id_of(COMBINED, None, 7) == id_of(COMBINED, "x", None)
    assert id_of(COMBINED, None, None) != id_of(COMBINED.replace("2326", "2327"), None, None)
    assert id_of(COMBINED, None, None) != id_of(COMBINED, "2049:77:0", 0)


def test_forwarded_for_is_believed_only_through_trusted_proxies() -> None:
    def client(peer: str, forwarded: str, trusted: tuple[Any, ...] = PROXIES) -> str:
        line = COMBINED.replace("203.0.113.7", peer) + f' "{forwarded}"'
        return str(document(line, "main", trusted=trusted)["source"]["ip"])

    assert client("10.0.0.2", "198.51.100.4") == "198.51.100.4"
    assert client("10.0.0.2", "6.6.6.6, 198.51.100.4, 10.9.9.9") == "198.51.100.4"
    assert client("203.0.113.9", "198.51.100.4") == "203.0.113.9"  # untrusted peer
    assert client("10.0.0.2", "198.51.100.4", trusted=()) == "10.0.0.2"
    assert client("fd00::1", "2001:db8::9") == "2001:db8::9"
    assert client("10.0.0.2", "-") == "10.0.0.2"


def test_an_unparsable_client_address_is_left_out() -> None:
    assert "source" not in document(COMBINED.replace("203.0.113.7", "unix:"))


def test_googlebot_is_a_bot_and_browsers_and_curl_are_not() -> None:
    assert document(COMBINED.replace(CHROME, GOOGLEBOT))["bot"] is True
    assert document(COMBINED)["bot"] is False
    assert document(COMBINED.replace(CHROME, "curl/8.5.0"))["bot"] is False


def test_user_agent_fields_are_exactly_those_of_ticks() -> None:
    for agent in (CHROME, GOOGLEBOT, "curl/8.5.0", "x" * 3000):
        tick = build_tick({"id": "a"}, RequestInfo(RECEIVED_MS, None, agent), Limits())
        source = document(COMBINED.replace(CHROME, agent))
        assert source["user_agent"] == tick.source["user_agent"]
        assert source["bot"] is tick.source["bot"]


def test_documents_do_not_share_mutable_state_with_each_other() -> None:
    first = document(COMBINED, offset=1)
    second = document(COMBINED, offset=2)
    assert first["event"] is not second["event"]
    assert first["http"] is not second["http"]
    assert first["http"]["response"] is not second["http"]["response"]


def test_parsed_lines_are_immutable_values_equal_to_their_constructor() -> None:
    line = parsed(COMBINED)
    assert ParsedLine(**line._asdict()) == line
    assert ParsedLine._fields == tuple(ParsedLine.__annotations__)
    assert hash(line) == hash(parsed(COMBINED))
    assert line.status == 200 and line.method == "GET" and line.protocol == "HTTP/1.1"
    with pytest.raises(AttributeError):
        line.status = 500  # type: ignore[misc]
    reject = rejected("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        reject.reason = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- templates


def test_logs_templates_map_exactly_the_log_fields() -> None:
    templates = {t.name: t for t in load_templates(Settings.from_env({}))}
    index = templates["metronome-logs"].body
    assert index["index_patterns"] == ["metronome-logs-*"]
    assert index["priority"] == 200
    assert index["composed_of"] == [
        "metronome-settings",
        "metronome-base-mappings",
        "metronome-logs-mappings",
        "metronome-visit-mappings",  # the visit fields of events (issue 25)
    ]
    mapped: set[str] = set()
    for name in index["composed_of"]:
        mapped |= leaf_fields(
            templates[name].body["template"].get("mappings", {}).get("properties", {})
        )
    assert mapped == set(F.LOG_FIELDS)


def test_logs_mapping_types() -> None:
    templates = {t.name: t for t in load_templates(Settings.from_env({}))}
    props = templates["metronome-logs-mappings"].body["template"]["mappings"]["properties"]
    http = props["http"]["properties"]
    assert props["source"]["properties"]["ip"]["type"] == "ip"
    assert http["request"]["properties"]["method"]["type"] == "keyword"
    assert http["version"]["type"] == "keyword"
    assert http["response"]["properties"]["status_code"]["type"] in ("short", "integer")
    assert http["response"]["properties"]["body"]["properties"]["bytes"]["type"] == "long"
    assert props["url"]["properties"]["query"]["type"] == "keyword"
    assert props["event"]["properties"]["duration"]["type"] == "long"
    assert {props["item"]["properties"][k]["type"] for k in ("id", "format")} == {"keyword"}
    assert {props["referrer"]["properties"][k]["type"] for k in ("domain", "page")} == {"keyword"}
    assert "dynamic" not in templates["metronome-logs-mappings"].body["template"]["mappings"]
