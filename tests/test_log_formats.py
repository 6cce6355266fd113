"""Every access-log format recognised without being told (issue 17).

The samples in tests/data/access_logs/ are written by hand from each server's
documentation of its format, with its edge cases (a ``"-"`` request, ``-`` sizes and
times, IPv6 and host-name clients, forwarded lists, a host:port prefix, ``#Fields:``
changing mid-file, bytes that are not UTF-8). ``expected.json`` holds, per sample, the
format detection must choose and the document (or the reject reason) of every line, with
the parts that vary left out: the event id and ingestion time, and the parsed user-agent
fields (tests/test_logs_parse.py checks those are exactly the ticks' ones).
"""

from __future__ import annotations

import bz2
import gzip
import ipaddress
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zstandard
from click.testing import CliRunner

from metronome.cli import main
from metronome.config import Settings
from metronome.logs.formats import FORMAT_HELP, UnknownFormat, compile_format, detect
from metronome.logs.ingest import LineConverter, open_lines
from metronome.logs.parse import ParsedLine, build_log_document
from metronome.logs.rules import UrlRules
from tests.support.backends import Backend

SAMPLES = Path(__file__).parent / "data" / "access_logs"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SAMPLES / "expected.json").read_text())
NAMES = sorted(EXPECTED)
RULES_TEXT = "/datasets/{id}/download.{format} -> download; /datasets/{id} -> view"
RULES = UrlRules.parse(RULES_TEXT)
FAMILY_OF = {  # which family each sample is in, for the round trip's spot checks
    "apache": [n for n in NAMES if n.startswith(("apache", "gandi", "icecast"))],
    "nginx": [n for n in NAMES if n.startswith("nginx")],
    "w3c": ["iis.log", "cloudfront.log", "netscaler.log", "shoutcast_w3c.log"],
    "aws": ["elb.log", "alb.log", "s3.log"],
    "other": ["haproxy.log", "caddy.log", "traefik.json.log", "traefik_clf.log"],
}


def sample_lines(name: str) -> list[str]:
    return [text for _, text in open_lines(str(SAMPLES / name), 65536)]


def projected(source: dict[str, Any]) -> dict[str, Any]:
    """A document without the parts that vary from run to run (see the module docstring)."""
    doc = json.loads(json.dumps(source))
    doc["event"].pop("id")
    doc["event"].pop("ingested")
    for key in ("@version", "site", "visitor"):
        doc.pop(key, None)
    if "user_agent" in doc:
        doc["user_agent"] = {"original": doc["user_agent"]["original"]}
    return doc  # type: ignore[no-any-return]


def documents_of(lines: list[str], name: str) -> list[dict[str, Any]]:
    parser = detect(lines).parser
    found: list[dict[str, Any]] = []
    for line in lines:
        result = parser.parse(line)
        if isinstance(result, ParsedLine):
            document = build_log_document(
                result,
                source_id="1:2:0",
                offset=0,
                rules=RULES,
                trusted_proxies=(),
                received_ms=0,
            )
            found.append(projected(document.source))
        else:
            assert result.message, (name, line)
            found.append({"reject": result.reason})
    return found


# --------------------------------------------------------------------------- detection


def test_the_samples_cover_every_family_the_issue_names() -> None:
    formats = {EXPECTED[name]["format"] for name in NAMES}
    assert {
        "common",
        "combined",
        "vhost_combined",
        "combined_extra",
        "gandi",
        "icecast2",
        "apache_ssl",
        "main",
        "main_timing",
        "vhost_main",
        "nginx_upstream_time",
        "json",
        "iis",
        "cloudfront",
        "cloudfront_rtmp",
        "netscaler",
        "incapsula",
        "shoutcast_w3c",
        "elb",
        "alb",
        "s3",
        "haproxy_http",
        "caddy",
        "traefik_json",
        "traefik_clf",
    } <= formats


@pytest.mark.parametrize("name", NAMES)
def test_every_sample_is_recognised_with_a_reason(name: str) -> None:
    detection = detect(sample_lines(name))
    assert detection.name == EXPECTED[name]["format"]
    assert detection.name in detection.reason
    assert "line" in detection.reason  # it says what it looked at


@pytest.mark.parametrize("name", NAMES)
def test_every_line_of_every_sample_gives_the_expected_document(name: str) -> None:
    assert documents_of(sample_lines(name), name) == EXPECTED[name]["documents"]


@pytest.mark.parametrize("name", NAMES)
def test_shuffled_samples_are_recognised_and_read_alike(name: str) -> None:
    lines = sample_lines(name)
    expected = EXPECTED[name]["documents"]
    rng = random.Random(name)
    for _ in range(5):
        order = list(range(len(lines)))
        rng.shuffle(order)
        shuffled = [lines[i] for i in order]
        assert detect(shuffled).name == EXPECTED[name]["format"]
        if not any(line.startswith("#Fields:") for line in lines[1:]):
            # one #Fields: (or none): every line reads as in the file's own order
            got = documents_of(shuffled, name)
            want = [expected[i] for i in order]
            assert Counter(json.dumps(d, sort_keys=True) for d in got) == Counter(
                json.dumps(d, sort_keys=True) for d in want
            )


@pytest.mark.parametrize("name", NAMES)
def test_truncated_samples_are_still_recognised(name: str) -> None:
    """A file cut out of a longer log (by a byte range, a rotation, a partial copy)
    starts and ends with pieces of lines."""
    lines = sample_lines(name)
    header = [line for line in lines if line.startswith("#")]
    data = [line for line in lines if not line.startswith("#")] * 3
    cut = [data[0][len(data[0]) // 2 :], *header, *data[1:-1], data[-1][: len(data[-1]) // 2]]
    detection = detect(cut)
    assert detection.name == EXPECTED[name]["format"]
    if sum(line.startswith("#Fields:") for line in lines) > 1:
        return  # its lines need the #Fields: that came before each in the file
    results = [detection.parser.parse(line) for line in cut]
    stored = sum(isinstance(r, ParsedLine) for r in results)
    want = sum("reject" not in d for d in EXPECTED[name]["documents"]) * 3
    assert want - 2 <= stored <= want


@pytest.mark.parametrize(
    "content",
    [
        "# Metronome\n\nA self-hosted usage-analytics service.\n\n## Quick start\n",
        "id,name,count\n1,alpha,3\n2,beta,5\n",
        '{"name": "metronome", "version": "1.0.0"}\n{"name": "other"}\n',
        "2026-12-03 12:00:01 INFO worker started\n2026-12-03 12:00:02 INFO spool empty\n",
    ],
    ids=["markdown", "csv", "json-not-a-log", "app-log"],
)
def test_a_file_that_is_not_an_access_log_is_refused_with_its_first_line(content: str) -> None:
    lines = content.splitlines()
    with pytest.raises(UnknownFormat) as info:
        detect(lines)
    message = str(info.value)
    assert "not an access log" in message and "--format" in message
    first = next(line for line in lines if line.strip() and not line.startswith("#"))
    assert first[:40] in message


def test_mixed_common_and_combined_lines_are_read_line_by_line() -> None:
    combined = sample_lines("apache_combined.log")
    common = sample_lines("apache_common.log")
    mixed = [line for pair in zip(combined, common, strict=False) for line in pair]
    parser = detect(mixed).parser
    results = [parser.parse(line) for line in mixed]
    stored = [r for r in results if isinstance(r, ParsedLine)]
    rejected = [r for r in results if not isinstance(r, ParsedLine)]
    assert len(stored) == len(mixed) - 1  # the "-" request of a 408 is the only reject
    assert [r.reason for r in rejected] == ["bad_request_line"]
    assert "no request" in rejected[0].message and "408" in rejected[0].message


# --------------------------------------------------------------------------- addresses


def test_the_client_of_a_forwarded_list_is_the_nearest_hop_not_a_trusted_proxy() -> None:
    line = sample_lines("nginx_xff_first.log")[0]  # "198.51.100.4, 10.0.0.1" first
    parsed = compile_format("combined").parse(line)
    assert isinstance(parsed, ParsedLine)

    def client(*trusted: str) -> dict[str, Any]:
        networks = tuple(ipaddress.ip_network(t) for t in trusted)
        source = build_log_document(
            parsed,
            source_id=None,
            offset=None,
            rules=RULES,
            trusted_proxies=networks,
            received_ms=0,
        ).source
        return {"source": dict(source["source"]), "related": source["related"]}

    assert client() == {
        "source": {"address": "10.0.0.1", "ip": "10.0.0.1"},  # the balancer's own hop
        "related": {"ip": ["198.51.100.4", "10.0.0.1"]},
    }
    assert client("10.0.0.0/8")["source"] == {"address": "198.51.100.4", "ip": "198.51.100.4"}
    # a trusted proxy never makes an address left of an untrusted one believed
    forged = line.replace("198.51.100.4, 10.0.0.1", "6.6.6.6, 198.51.100.4, 10.0.0.1")
    parsed = compile_format("combined").parse(forged)
    assert isinstance(parsed, ParsedLine)
    assert client("10.0.0.0/8")["source"]["ip"] == "198.51.100.4"


def test_client_policy_drops_or_truncates_the_forwarded_chain_too(tmp_path: Path) -> None:
    line = sample_lines("nginx_main.log")[1]  # with a forwarded list
    for policy, source, related in [
        ("drop", None, None),
        ("truncate", {"ip": "10.0.0.0"}, {"ip": ["198.51.100.0", "10.0.0.0", "10.0.0.0"]}),
        (
            "keep",
            {"address": "10.0.0.2", "ip": "10.0.0.2"},
            {"ip": ["198.51.100.4", "10.0.0.3", "10.0.0.2"]},
        ),
    ]:
        settings = Settings.from_env(
            {"METRONOME_DATA_DIR": str(tmp_path / policy), "METRONOME_CLIENT_IP": policy}
        )
        converter = LineConverter(settings)
        document, _ = converter.convert(line, None, None, 0)
        converter.close()
        assert document is not None
        assert document.source.get("source") == source, policy
        assert document.source.get("related") == related, policy


# --------------------------------------------------------------------------- formats


def test_apache_logformat_strings_are_read_as_written() -> None:
    parser = compile_format('%v:%p %h %l %u %t \\"%r\\" %>s %O \\"%{Referer}i\\" %D')
    line = (
        'data.example.org:443 192.0.2.7 - - [10/Oct/2000:13:55:40 -0700] "GET /a?b=1'
        ' HTTP/1.1" 200 512 "https://www.example.org/" 1500'
    )
    parsed = parser.parse(line)
    assert isinstance(parsed, ParsedLine)
    assert (parsed.host, parsed.server_port, parsed.target) == ("data.example.org", 443, "/a?b=1")
    assert parsed.request_time == 0.0015  # %D: microseconds
    assert parsed.referrer == "https://www.example.org/"


def test_any_nginx_log_format_compiles_including_json_ones() -> None:
    parser = compile_format(
        'log_format edge \'$host $remote_addr [$time_local] "$request" $status'
        " $body_bytes_sent rt=$request_time urt=$upstream_response_time';"
    )
    parsed = parser.parse(
        'data.example.org 192.0.2.7 [10/Oct/2000:13:55:40 -0700] "GET / HTTP/1.1" 200 5'
        " rt=0.250 urt=0.100, 0.150"
    )
    assert isinstance(parsed, ParsedLine) and parsed.request_time == 0.25


def test_times_without_an_offset_are_read_in_the_given_time_zone() -> None:
    from zoneinfo import ZoneInfo

    line = sample_lines("haproxy.log")[0]  # [10/Oct/2000:20:55:40.655]
    utc = compile_format("haproxy_http").parse(line)
    paris = compile_format("haproxy_http", ZoneInfo("Europe/Paris")).parse(line)
    assert isinstance(utc, ParsedLine) and isinstance(paris, ParsedLine)
    assert utc.timestamp_ms - paris.timestamp_ms == 2 * 3600 * 1000  # CEST in October
    w3c = sample_lines("iis.log")
    shifted = compile_format("iis", ZoneInfo("America/New_York"))
    results = [shifted.parse(line) for line in w3c]
    first = next(r for r in results if isinstance(r, ParsedLine))
    assert first.timestamp_ms == 971211340000 + 4 * 3600 * 1000  # EDT


def test_unknown_format_names_are_refused_listing_the_known_ones() -> None:
    from metronome.logs.parse import FormatError

    with pytest.raises(FormatError, match="combined, common"):
        compile_format("apache2")


def test_compressed_logs_are_recognised_by_their_content_not_their_name(
    tmp_path: Path,
) -> None:
    raw = (SAMPLES / "apache_combined.log").read_bytes()
    packed = {
        "gz.log": gzip.compress(raw),
        "bz2.txt": bz2.compress(raw),
        "zst.gz": zstandard.ZstdCompressor().compress(raw),
        "plain.bz2": raw,
    }
    for name, content in packed.items():
        (tmp_path / name).write_bytes(content)
        assert [t for _, t in open_lines(str(tmp_path / name), 65536)] == sample_lines(
            "apache_combined.log"
        ), name


def test_import_and_ship_help_list_every_format() -> None:
    for command in ("import", "ship"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0, result.output
        for option in ("--format", "--url-rules", "--tz", "--site"):
            assert option in result.output
        for name in FORMAT_HELP:
            assert name in result.output, (command, name)


# --------------------------------------------------------------------------- round trip


def test_every_sample_round_trips_through_import_into_the_store_and_query(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    files = []
    expected: list[dict[str, Any]] = []
    for name in NAMES:
        raw = (SAMPLES / name).read_bytes().replace(b"/datasets/abc", f"/datasets/{item}".encode())
        path = tmp_path / name
        path.write_bytes(raw if name != "elb.log" else bz2.compress(raw))  # one compressed
        files.append(str(path))
        for doc in EXPECTED[name]["documents"]:
            if doc.get("item", {}).get("id") == "abc":
                text = json.dumps(doc).replace("/datasets/abc", f"/datasets/{item}")
                expected.append(json.loads(text.replace('"id": "abc"', f'"id": "{item}"')))
    rules = tmp_path / "rules.txt"
    rules.write_text(RULES_TEXT.replace("; ", "\n") + "\n")

    result = backend.server.run_cli("import", *files, "--url-rules", str(rules))
    assert result.returncode == 0, result.stderr
    for name in NAMES:  # it says which format it chose for each file, and why
        assert f"{tmp_path / name}: {EXPECTED[name]['format']} " in result.stderr or (
            f"{tmp_path / name}: W3C extended log ({EXPECTED[name]['format']})" in result.stderr
        ), name
    lines = sum(len(EXPECTED[n]["documents"]) for n in NAMES)
    stored = sum(1 for n in NAMES for d in EXPECTED[n]["documents"] if "reject" not in d)
    rejects = Counter(d["reject"] for n in NAMES for d in EXPECTED[n]["documents"] if "reject" in d)
    reasons = ", ".join(f"{k} {v}" for k, v in rejects.most_common())
    assert f"read {lines} lines, stored {stored}, already stored 0, rejected" in result.stderr
    assert f"({reasons})" in result.stderr

    # visits (issue 25) are assigned across the import: tests/test_journeys.py checks them
    found = sorted(
        (projected({k: v for k, v in d.items() if k != "visit"}) for d in backend.find(item)),
        key=lambda d: json.dumps(d, sort_keys=True),
    )
    assert found == sorted(expected, key=lambda d: json.dumps(d, sort_keys=True))

    resp = backend.client.post(
        "/query",
        json={
            "source": "logs",
            "range": {"from": "2000-10-10", "to": "2000-10-11"},
            "dimensions": ["format"],
            "filters": [["is", "item", [item]]],
            "bots": "include",
        },
    )
    assert resp.status_code == 200, resp.text
    downloads = sum(1 for d in expected if d["item"].get("format") == "csv")
    views = sum(1 for d in expected if "format" not in d["item"])
    counts = {tuple(r["dimensions"]): r["metrics"][0] for r in resp.json()["results"]}
    assert counts == {("csv",): downloads, (None,): views}
    ports = backend.client.post(
        "/query",
        json={
            "source": "logs",
            "range": {"from": "2000-10-10", "to": "2000-10-11"},
            "dimensions": ["destination.port"],
            "filters": [["is", "item", [item]], ["is", "format", ["csv"]]],
            "bots": "include",
        },
    )
    assert ports.status_code == 200, ports.text
    want = Counter(
        d.get("destination", {}).get("port") for d in expected if d["item"].get("format") == "csv"
    )
    got = {r["dimensions"][0]: r["metrics"][0] for r in ports.json()["results"]}
    assert got == dict(want)


def test_a_file_that_is_not_a_log_stores_nothing_and_says_why(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    good = tmp_path / "access.log"
    good.write_text(
        sample_lines("apache_combined.log")[1].replace("/datasets/abc", f"/datasets/{item}") + "\n"
    )
    notes = tmp_path / "notes.md"
    notes.write_text("# Release notes\n\nNothing to see here.\n")
    result = backend.server.run_cli("import", str(good), str(notes))
    assert result.returncode == 1
    assert f"{notes}: not an access log Metronome recognises" in result.stderr
    assert "'# Release notes'" in result.stderr or "Nothing to see here" in result.stderr
    assert "Traceback" not in result.stderr
    assert backend.find(item) == []  # not even the good file's line: nothing was stored


def test_bad_format_and_time_zone_flags_are_usage_errors(backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(sample_lines("apache_combined.log")[0] + "\n")
    bad_format = backend.server.run_cli("import", str(log), "--format", "apache2")
    assert bad_format.returncode == 2
    assert "--format: unknown log format 'apache2'" in bad_format.stderr
    bad_tz = backend.server.run_cli("import", str(log), "--tz", "Mars/Base")
    assert bad_tz.returncode == 2 and "Mars/Base" in bad_tz.stderr
    forced = backend.server.run_cli("import", str(log), "--format", "common")
    assert forced.returncode == 0, forced.stderr
    assert "rejected 1 (no_match 1)" in forced.stderr  # a combined line is no common line


def test_standard_input_is_recognised_by_content_even_compressed(
    backend: Backend, item: str
) -> None:
    import subprocess
    import sys

    raw = (  # every line its own (the session's store has the samples' lines already)
        (SAMPLES / "traefik_clf.log")
        .read_bytes()
        .replace(b"/datasets/abc", f"/datasets/{item}".encode())
        .replace(b"/login", f"/login-{item}".encode())
    )
    result = subprocess.run(
        [sys.executable, "-m", "metronome", "import", "-"],
        env={**backend.server.env, "METRONOME_URL_RULES": RULES_TEXT},
        input=zstandard.ZstdCompressor().compress(raw),
        capture_output=True,
        timeout=300,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "standard input: traefik_clf (" in stderr
    assert "read 2 lines, stored 2, already stored 0, rejected 0" in stderr
    assert backend.tock(item, **{"from": "2000-10-10", "to": "2000-10-10"})["downloads"] == {
        "csv": 1
    }


def test_ship_recognises_each_file_and_follows_fields_changing_mid_file(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    import subprocess
    import sys
    import time

    w3c = tmp_path / "u_ex001010.log"
    w3c.write_bytes(
        (SAMPLES / "iis.log").read_bytes().replace(b"/datasets/abc", f"/datasets/{item}".encode())
    )
    proxy = tmp_path / "haproxy.log"
    proxy.write_bytes(
        (SAMPLES / "haproxy.log")
        .read_bytes()
        .replace(b"/datasets/abc", f"/datasets/{item}".encode())
    )
    ship = subprocess.Popen(
        [sys.executable, "-m", "metronome", "ship", str(w3c), str(proxy), "--tz", "+02:00"],
        env={**backend.server.env, "METRONOME_URL_RULES": RULES_TEXT},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    window = {"from": "2000-10-10", "to": "2000-10-10"}
    try:
        deadline = time.monotonic() + 60
        while backend.tock(item, **window)["downloads"] != {"csv": 2}:
            assert time.monotonic() < deadline, backend.tock(item, **window)
            time.sleep(0.3)
        with w3c.open("a") as handle:  # IIS starts new fields after a configuration change
            handle.write(
                "#Fields: date time c-ip cs-method cs-uri-stem sc-status time-taken\n"
                f"2000-10-10 21:00:00 192.0.2.50 GET /datasets/{item}/download.kml 200 7\n"
            )
        while backend.tock(item, **window)["downloads"] != {"csv": 2, "kml": 1}:
            assert time.monotonic() < deadline, backend.tock(item, **window)
            time.sleep(0.3)
    finally:
        ship.terminate()
        _, stderr = ship.communicate(timeout=30)
    assert ship.returncode == 0, stderr.decode()
    text = stderr.decode()
    assert f"{w3c}: W3C extended log (iis)" in text
    assert f"{proxy}: haproxy_http (" in text
    proxied = [d for d in backend.find(item) if d.get("source", {}).get("port") == 33317]
    assert [d["@timestamp"] for d in proxied] == ["2000-10-10T18:55:40.655Z"]  # --tz +02:00


def test_ship_refuses_a_file_that_is_not_an_access_log(backend: Backend, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\neggs\nmilk\n")
    result = backend.server.run_cli("ship", str(notes), timeout_s=60)
    assert result.returncode == 1
    assert f"{notes}: not an access log Metronome recognises" in result.stderr
    assert "'shopping list'" in result.stderr


def test_long_lines_are_not_kept_in_the_parse_caches() -> None:
    """Caches keyed on what a log holds keep no long keys (issue 16): a log of huge
    request targets leaves memory flat."""
    import tracemalloc

    parser = compile_format("combined")
    template = sample_lines("apache_combined.log")[1]
    warm = parser.parse(template)  # loads the country database, once per process
    assert isinstance(warm, ParsedLine)
    build_log_document(
        warm, source_id=None, offset=None, rules=RULES, trusted_proxies=(), received_ms=0
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            line = template.replace("/datasets/abc/download.csv", f"/{i}/" + "a" * 100_000)
            parsed = parser.parse(line)
            assert isinstance(parsed, ParsedLine)
            build_log_document(
                parsed,
                source_id=None,
                offset=None,
                rules=RULES,
                trusted_proxies=(),
                received_ms=0,
            )
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000  # kept, the 200 targets alone would hold 20 MB
