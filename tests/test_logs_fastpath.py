"""The fast ways to documents give exactly what the general ways give.

``combined``, ``common`` and ``main`` lines are read with ``str.split`` when that is
safe, and the regex otherwise (``_NcsaParser``); documents are built from caches. Here
every sample log, generated lines and the edge cases that could tell them apart (``-``
fields, IPv6, ports, forwarded lists, non-UTF-8 bytes, escapes, query strings, odd
methods, odd spacing) go both ways: the regex parser the format compiles to without the
fast path, and the fast one; documents are built with cold caches and with warm ones.
Parts, rejects and the documents' JSON bytes must be equal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.logs import parse as P
from metronome.logs.formats import compile_format as compile_any_format
from metronome.logs.formats import detect
from metronome.logs.formats.text import MAIN as TEXT_MAIN
from metronome.logs.parse import ParsedLine, build_log_document, decode_line
from metronome.logs.rules import UrlRules
from tests.support.fuzz import fuzz

SAMPLES = Path(__file__).parent / "data" / "access_logs"
RULES = UrlRules.parse("/datasets/{id}/download.{format} -> download\n/datasets/{id}\n/a/*")
PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
FORMATS = {
    "combined": P.FORMATS["combined"],
    "common": P.FORMATS["common"],
    "main": P.FORMATS["main"],
    "text_main": TEXT_MAIN,  # metronome.logs.formats' main: its ident may be anything
}
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)


def fast_parser(name: str) -> P.LineParser:
    if name == "text_main":
        parser = compile_any_format("main")
    else:
        parser = P.compile_format(name)
    assert type(parser).__name__ == "_NcsaParser", parser
    return parser


def regex_parser(name: str) -> P.LineParser:
    """The format as the regex alone reads it (what every line took before)."""
    return P._TextParser("main" if name == "text_main" else name, FORMATS[name])


def clear_caches() -> None:
    for memo in (
        P._TIME_LOCAL_MS,
        P._REQUESTS,
        P._targets,
        P._REFERRERS,
        P._AGENTS,
        P._REMOTES,
        P._SITES,
        P._TIME_KEYS,
        P._TIMESTAMPS,
        P._HOSTS,
        P._urls,
        P._ISO_MS,
        P._ISO_SECONDS,
    ):
        memo.clear()


def document_bytes(parsed: ParsedLine, offset: int | None, proxies: Any) -> bytes:
    document = build_log_document(
        parsed,
        source_id=None if offset is None else "2049:77:0",
        offset=offset,
        rules=RULES,
        trusted_proxies=proxies,
        received_ms=1_800_000_000_000,
        site_id="default" if offset is None or offset % 2 else "s2",
    )
    assert type(document) is P.Document
    return orjson.dumps([document.id, document.timestamp_ms, document.dataset, document.source])


class Counted:
    """How many lines the fast parser handed to the regex."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fallbacks = 0
        general = P._TextParser.parse

        def parse(parser: P._TextParser, line: str) -> Any:
            if type(parser) is not P._TextParser:
                self.fallbacks += 1
            return general(parser, line)

        monkeypatch.setattr(P._TextParser, "parse", parse)


def compare(name: str, lines: list[str]) -> int:
    """Parse ``lines`` both ways and build their documents cold and warm; the number of
    lines stored."""
    fast, slow = fast_parser(name), regex_parser(name)
    stored = 0
    warm: list[tuple[ParsedLine, int | None, bytes, bytes]] = []
    for number, line in enumerate(lines):
        expected, found = slow.parse(line), fast.parse(line)
        assert found == expected, line
        if isinstance(found, ParsedLine):
            stored += 1
            offset = None if number % 3 == 0 else number * 101
            clear_caches()
            cold = document_bytes(found, offset, PROXIES), document_bytes(found, offset, ())
            assert cold == (
                document_bytes(expected, offset, PROXIES),
                document_bytes(expected, offset, ()),
            ), line
            warm.append((found, offset, *cold))
    for found, offset, with_proxies, without in warm * 2:  # now from the caches
        assert document_bytes(found, offset, PROXIES) == with_proxies
        assert document_bytes(found, offset, ()) == without
    return stored


def sample_lines() -> Iterator[str]:
    for path in sorted(SAMPLES.glob("*.log")):
        for raw in path.read_bytes().split(b"\n"):
            text = decode_line(raw.rstrip(b"\r"))
            if text.strip():
                yield text


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_sample_line_reads_the_same_both_ways(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = list(sample_lines())
    counted = Counted(monkeypatch)
    stored = compare(name, lines)
    assert stored >= 2
    # the fast path is taken: most stored lines never reach the regex
    assert counted.fallbacks < len(lines) - stored // 2


# ---------------------------------------------------------------------- edge cases

ADDRESSES = [
    "203.0.113.7",
    "2001:db8::1",
    "::1",
    "fd00::5",
    "10.0.0.9",
    "203.0.113.7:4431",
    "[2001:db8::1]:443",
    "client.example.org",
    "localhost",
    "unix:",
    "-",
    "10.0.0.2,10.0.0.1",
    "10.0.0.2, 10.0.0.1",
    "10.0.0.2,",
    ",",
    '"10.0.0.2, 203.0.113.9"',
    "_",
    "unknown",
]
IDENTS = ["-", "frank", '"quoted ident"', "x\ty"]
USERS = ["-", "alice", "b\u00e4r", "a\u00a0b", "é"]
TIMES = [
    "10/Oct/2000:13:55:36 -0700",
    "03/Dec/2026:23:59:59 +0000",
    "29/Feb/2024:00:00:00 +0530",
    "01/Jan/1970:00:00:00 +0000",
    "31/Dec/1969:23:59:59 +0000",
    "32/Oct/2000:13:55:36 -0700",
    "10/Oct/2000:13:55:36.123 +0100",
    "10/Oct/2000:13:55:36",
    "10/Oct/2000:13:55:36  -0700",
    "10/Oct/2000:13:55:36 -0700]x",
    "10/Foo/2000:13:55:36 -0700",
]
REQUESTS = [
    "GET / HTTP/1.1",
    "GET /datasets/parks-1/download.csv?token=1&x=%20 HTTP/1.1",
    "HEAD /datasets/roads-7 HTTP/2.0",
    "POST /a/b?c=d HTTP/1.0",
    "PROPFIND /dav/ HTTP/1.1",
    "M-SEARCH * HTTP/1.1",
    "CONNECT example.org:443 HTTP/1.1",
    "GET http://proxy.example.org:8080/x?y=1 HTTP/1.1",
    "get / HTTP/1.1",
    "GET /",
    "GET /a b HTTP/1.1",
    "GET  /double HTTP/1.1",
    "GET /caf%E9 HTTP/1.1",
    "GET /\u00e9t\u00e9?q=\u4e2d HTTP/1.1",
    "GET /x#frag HTTP/1.1",
    "GET /q?a=1?b=2 HTTP/3.0",
    "GET /x HTTP/9",
    "-",
    "",
    "hello",
    "\\x16\\x03\\x01\\x02\\x00",
    'GET /quote\\"d HTTP/1.1',
    "GET /caf\\xC3\\xA9 HTTP/1.1",
    "GET /big5\\xA7\\x41 HTTP/1.1",
]
STATUSES = ["200", "304", "404", "500", "099", "600", "abc", "-", "2OO"]
SIZES = ["0", "2326", "-", "+2750", "\u0661\u0662", "\u00b2", "12a", ""]
REFERRERS = [
    "-",
    "",
    "https://www.example.com/start/?q=1",
    "android-app://com.google.android.gm/",
    "http://h/\\x22quoted\\x22",
    'a \\"b\\" c',
]
AGENTS = [
    CHROME,
    "-",
    "",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "caf\u00e9 agent",
]
FORWARDED = ["-", "203.0.113.50", "203.0.113.50, 10.0.0.3", "2001:db8::9, fd00::1", "unknown"]
ENDINGS = ["", "\n", "\r\n", " ", "\t", " extra"]


def ncsa_line(
    addr: str,
    ident: str,
    user: str,
    time: str,
    request: str,
    status: str,
    size: str,
    referrer: str,
    agent: str,
    forwarded: str,
    quoted: int,
    ending: str,
    sep: str = " ",
) -> str:
    line = f'{addr}{sep}{ident} {user} [{time}] "{request}" {status} {size}'
    if quoted >= 3:
        line += f' "{referrer}" "{agent}"'
    if quoted == 4:
        line += f' "{forwarded}"'
    return line + ending


QUOTED = {"combined": 3, "common": 1, "main": 4, "text_main": 4}


def typical(name: str) -> dict[str, Any]:
    return {
        "addr": "203.0.113.7",
        "ident": "-",
        "user": "-",
        "time": TIMES[0],
        "request": REQUESTS[1],
        "status": "200",
        "size": "2326",
        "referrer": REFERRERS[2],
        "agent": CHROME,
        "forwarded": "-",
        "quoted": QUOTED[name],
        "ending": "",
    }


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_edge_case_reads_the_same_both_ways(name: str) -> None:
    """Every edge value, one field at a time, in an otherwise typical line (and in the
    other formats' shapes: a combined line read as common is no common line)."""
    lines = []
    for field, values in (
        ("addr", ADDRESSES),
        ("ident", IDENTS),
        ("user", USERS),
        ("time", TIMES),
        ("request", REQUESTS),
        ("status", STATUSES),
        ("size", SIZES),
        ("referrer", REFERRERS),
        ("agent", AGENTS),
        ("forwarded", FORWARDED),
        ("ending", ENDINGS),
        ("quoted", [1, 3, 4]),
    ):
        for value in values:
            lines.append(ncsa_line(**{**typical(name), field: value}))
    lines += [ncsa_line(**typical(name), sep=sep) for sep in ("  ", "\t", "\u00a0")]
    lines += ["", " ", "#Fields: date time", '"', '""""""', "a b c [t z] " + '"' * 6]
    stored = compare(name, lines)
    assert stored > 40


@given(data=st.data())
@fuzz(200)
def test_generated_lines_read_the_same_both_ways(data: st.DataObject) -> None:
    """Random mixes of the edge cases, and random text in every field."""
    name = data.draw(st.sampled_from(list(FORMATS)))
    noise = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)

    def field(values: list[Any]) -> Any:
        return data.draw(st.one_of(st.sampled_from(values), noise) if values else noise)

    line = ncsa_line(
        addr=field(ADDRESSES),
        ident=field(IDENTS),
        user=field(USERS),
        time=field(TIMES),
        request=field(REQUESTS),
        status=field(STATUSES),
        size=field(SIZES),
        referrer=field(REFERRERS),
        agent=field(AGENTS),
        forwarded=field(FORWARDED),
        quoted=data.draw(st.sampled_from([QUOTED[name], QUOTED[name], 1, 3, 4])),
        ending=data.draw(st.sampled_from(ENDINGS)),
    )
    compare(name, [line])


def test_non_utf8_bytes_read_the_same_both_ways() -> None:
    """Latin-1 and Big5 bytes in a URL, as ``metronome import`` decodes them."""
    raws = [
        b'203.0.113.7 - - [10/Oct/2000:13:55:36 -0700] "GET /caf\xe9 HTTP/1.1" 200 5 "-" "x"',
        b'203.0.113.7 - - [10/Oct/2000:13:55:36 -0700] "GET /\xa7A?q=\xb0 HTTP/1.1" 200 5'
        b' "http://r/\xe9" "agent \xff"',
        b'2001:db8::1 - \xe9 [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"',
    ]
    lines = [decode_line(raw) for raw in raws]
    assert compare("combined", lines) == 3


def test_every_sample_document_is_the_same_from_cold_and_warm_caches() -> None:
    """Every family's sample (hosts, ports, forwarded lists, durations): a document built
    from the caches is the one built without them."""
    files = {path.name: path.read_bytes() for path in sorted(SAMPLES.glob("*.log"))}
    rest = ' 203.0.113.7 - - [10/Oct/2000:13:55:36 -0700] "GET {} HTTP/1.1" 200 5 "-" "-"'
    files["hosts"] = "\n".join(  # one target on many hosts, and the other way round
        host + rest.format(target)
        for target in ("/x?y=1", "http://c.example.org:81/x?y=1", "/datasets/a")
        for host in ("a.example.org:443", "B.example.org.", "[2001:db8::1]:8443", "_", "-")
    ).encode()
    stored = 0
    for name, content in files.items():
        texts = [decode_line(raw.rstrip(b"\r")) for raw in content.split(b"\n")]
        texts = [text for text in texts if text.strip()]
        parser = detect(texts[:50]).parser
        built = []
        for number, text in enumerate(texts):
            found = parser.parse(text)
            if isinstance(found, ParsedLine):
                clear_caches()
                built.append((found, number, document_bytes(found, number, PROXIES)))
        for found, number, cold in built * 2:
            assert document_bytes(found, number, PROXIES) == cold, (name, found.line)
        stored += len(built)
    assert stored > 50


def test_iso_times_read_per_second_are_the_times_read_whole() -> None:
    """ELB's, ALB's and JSON logs' times (``...T00:00:00.186641Z``): the seconds come
    from a cache, the fraction is added as ``datetime.timestamp()`` adds it."""
    seconds = [0, 1, 59, 86_399, 951_782_400, 1_795_647_600, 4_102_444_799, 253_402_300_799]
    texts = [
        datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction}Z"
        for second in seconds
        for fraction in ("000", "001", "499", "500", "999", "186641", "000500", "999999")
    ]
    texts += [
        "1969-12-31T23:59:59.999Z",
        "2026-13-01T00:00:00.123Z",
        "2026-02-29T00:00:00.123Z",
        "2026-11-26T24:00:00.000000Z",
        "2026-11-26 00:00:00.123Z",
        "2026-11-26T00:00:00,123Z",
        "2026-11-26T00:00:00.12\u0663Z",
        "2026-11-26T00:00:00.123z",
        "2026-11-26T00:00:00.1234Z",
        "2026-11-26T00:00:00.123+01:00",
    ]
    for text in texts:
        P._ISO_SECONDS.clear()
        assert P._iso_fraction_ms(text) == P._iso_ms(text), text
        assert P._iso_fraction_ms(text) == P._iso_ms(text), text  # now from the cache
    assert P._iso_fraction_ms("2026-11-26T00:00:00.186641Z") == 1_795_651_200_187
