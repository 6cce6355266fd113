"""Access-log parsing on one core: combined lines to finished documents, versus a bare regex.

Both contenders read the same N generated ``combined`` lines (default 200,000) in this
process, pinned to one CPU:

* metronome: ``compile_format("combined").parse(line)`` then ``build_log_document`` for
  every line (time, request line, URL rules, user agent and bot flag, referrer keys,
  client address, deterministic event id): the whole domain path from line to document;
* metronome_import: the same lines through what ``metronome import`` and ``metronome
  ship`` run per line (``LineConverter.convert``): the above, plus the visitor id (a
  keyed BLAKE2b per new client and user agent), the client-address policy
  (``METRONOME_CLIENT_IP``, default drop), the referrer blocklist and the counts. Reported
  beside the goal, which is for the line-to-document path the issue names;
* regex_floor: one precompiled regex that only matches a combined line
  (``pattern.match(line)``, nothing extracted or built): what any regex-based parser pays
  at least;
* one contender per format family (issue 17), each the same requests written the way
  that family's servers write them and read line -> document like ``metronome``:
  ``auto_combined`` (the parser ``import`` detects and uses by default, which recognises
  close variants line by line), ``apache_vhost`` (``vhost_combined`` with host:port),
  ``nginx_timing`` (``main`` + ``$request_time``/``$upstream_response_time``),
  ``w3c_iis``, ``aws_elb``, ``aws_alb``, ``aws_s3``, ``haproxy`` (with the syslog prefix),
  ``caddy_json``, ``traefik_json``, ``nginx_json``. Goal: none below 50,000 lines/s.

The lines are reproducible (``--lines-seed``): ~200 distinct user agents with a skewed
popularity (browsers, phones, crawlers, scripts), 5,000 clients (a fifth IPv6), dataset
pages and downloads, searches, static files, redirects and 404s, referrers or ``-``, and
times ~50 lines per second apart. After one unrecorded pass of each contender, the
measured passes alternate in shuffled rounds (``--seed``).

    python -m benchmarks.parse [--lines 200000] [--trials 5] [--families all|none]

Throughput is lines per CPU second of this process (``time.process_time``), so other
work sharing the machine does not count against it; lines per wall second are recorded
too. Goal: >= 100,000 lines/s line -> document. The ratio to the regex floor says how
much of the work is more than matching (and is comparable across machines).
"""

from __future__ import annotations

import gc
import ipaddress
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _common as C
from metronome.config import Settings
from metronome.logs.formats import compile_format as compile_any_format
from metronome.logs.formats import detect
from metronome.logs.ingest import LineConverter
from metronome.logs.parse import ParsedLine, build_log_document, compile_format
from metronome.logs.rules import UrlRules

NAME = "parse"
GOAL_LINES_PER_S = 100_000
FAMILY_GOAL_LINES_PER_S = 50_000
DEFAULT_LINES = 200_000
DEFAULT_LINES_SEED = 20_261_123
START_S = 1_795_647_600  # 2026-11-26T00:00:00+01:00
RULES = """
/datasets/{id}/download.{format} -> download
/datasets/{id}
/maps/{id}/* -> view
"""
TRUSTED_PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)
SOURCE_ID = "2049:1310723:0"
RECEIVED_MS = (START_S + 86_400) * 1000

_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # a quoted value with \" escapes, unrolled
FLOOR = re.compile(
    rf"(\S+) (\S+) (\S+) \[([^\]]*)\] {_QUOTED} (\d{{3}}) (\d+|-)"
    rf" {_QUOTED} {_QUOTED}"
)


# --------------------------------------------------------------------------- log lines


def user_agents(rng: random.Random, n: int = 200) -> list[str]:
    """``n`` distinct user agents, most popular first: browsers, then crawlers and tools."""
    windows = ("Windows NT 10.0; Win64; x64", "Windows NT 6.1; Win64; x64")
    macs = ("Macintosh; Intel Mac OS X 10_15_7", "Macintosh; Intel Mac OS X 14_4")
    androids = (
        "Linux; Android 14; Pixel 8",
        "Linux; Android 13; SM-S918B",
        "Linux; Android 12; moto g(60)",
        "Linux; Android 10; K",
    )
    iphones = (
        "iPhone; CPU iPhone OS 17_4 like Mac OS X",
        "iPad; CPU OS 16_7 like Mac OS X",
        "iPhone; CPU iPhone OS 16_6 like Mac OS X",
    )
    fixed = [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML,"
        " like Gecko) Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1;"
        " +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
        "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
        "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like"
        " Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
        "DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)",
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "curl/7.88.1",
        "curl/8.5.0",
        "Wget/1.21.3",
        "python-requests/2.31.0",
        "python-requests/2.32.3",
        "Go-http-client/1.1",
        "Go-http-client/2.0",
        "okhttp/4.12.0",
        "QGIS/33400/Windows 10 Version 2009",
        "ArcGIS Pro 3.2.0 (Windows)",
    ]
    found: list[str] = []
    seen: set[str] = set()
    while len(found) < n - len(fixed):
        kind = rng.random()
        if kind < 0.45:
            system = rng.choice(windows + macs + ("X11; Linux x86_64",))
            major = rng.randrange(110, 131)
            agent = (
                f"Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko)"
                f" Chrome/{major}.0.{rng.randrange(5000, 6800)}.{rng.randrange(40, 200)}"
                " Safari/537.36"
            )
            if rng.random() < 0.2:
                agent += f" Edg/{major}.0.{rng.randrange(1000, 2500)}.{rng.randrange(40, 99)}"
        elif kind < 0.65:
            system = rng.choice(androids)
            agent = (
                f"Mozilla/5.0 ({system}) AppleWebKit/537.36 (KHTML, like Gecko)"
                f" Chrome/{rng.randrange(110, 131)}.0.0.0 Mobile Safari/537.36"
            )
        elif kind < 0.85:
            system = rng.choice(iphones)
            version = f"{rng.randrange(15, 18)}.{rng.randrange(0, 7)}"
            agent = (
                f"Mozilla/5.0 ({system}) AppleWebKit/605.1.15 (KHTML, like Gecko)"
                f" Version/{version} Mobile/15E148 Safari/604.1"
            )
        else:
            system = rng.choice(windows + macs + ("X11; Ubuntu; Linux x86_64",))
            major = rng.randrange(110, 132)
            agent = f"Mozilla/5.0 ({system}; rv:{major}.0) Gecko/20100101 Firefox/{major}.0"
        if agent not in seen:
            seen.add(agent)
            found.append(agent)
    # a few crawlers and tools are popular (Googlebot third), the rest are in the tail
    return found[:2] + fixed[:1] + found[2:10] + fixed[1:6] + found[10:] + fixed[6:]


def clients(rng: random.Random, n: int = 5000) -> list[str]:
    result = []
    for _ in range(n):
        if rng.random() < 0.2:
            result.append(
                f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}"
                f"::{rng.randrange(1, 1 << 16):x}"
            )
        else:
            result.append(
                f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}"
                f".{rng.randrange(1, 255)}"
            )
    return result


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


def generate_lines(n: int, seed: int) -> list[str]:
    """``n`` NGINX ``combined`` lines, the same for the same seed."""
    rng = random.Random(seed)
    agents = user_agents(rng)
    agent_weights = _zipf_weights(len(agents))
    addresses = clients(rng)
    address_weights = _zipf_weights(len(addresses), 0.8)
    datasets = [
        f"{rng.choice(('parks', 'roads', 'census', 'trees', 'zoning'))}-{i}" for i in range(1000)
    ]
    dataset_weights = _zipf_weights(len(datasets), 0.9)
    referrers = ["-"] * 8 + [
        "https://data.example.org/",
        "https://data.example.org/search?q=parks",
        "https://www.google.com/",
        "https://www.arcgis.com/home/index.html",
        "https://www.bing.com/search?q=city+data",
        "https://news.example.net/story/7",
        "android-app://com.google.android.gm/",
    ]
    formats = ("csv", "csv", "csv", "geojson", "kml", "shp", "zip")
    statics = (
        "/static/js/app.3f9a1c.js",
        "/static/css/site.8b21.css",
        "/favicon.ico",
        "/robots.txt",
        "/static/img/logo.svg",
    )
    lines = []
    now = float(START_S)
    for _ in range(n):
        now += rng.expovariate(50.0)
        stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0100", time.gmtime(now + 3600))
        kind = rng.random()
        status = 200
        if kind < 0.35:
            target = f"/datasets/{rng.choices(datasets, dataset_weights)[0]}"
        elif kind < 0.50:
            name = rng.choices(datasets, dataset_weights)[0]
            target = f"/datasets/{name}/download.{rng.choice(formats)}"
        elif kind < 0.58:
            target = f"/maps/{rng.randrange(300)}/view"
        elif kind < 0.66:
            words = rng.choice(("parks", "roads", "bus+stops"))
            target = f"/search?q={words}&page={rng.randrange(1, 6)}"
        elif kind < 0.70:
            limit = rng.choice((10, 50, 100))
            target = f"/api/v1/items?limit={limit}&offset={rng.randrange(0, 500, 10)}"
        elif kind < 0.92:
            target = rng.choice(statics)
            status = rng.choice((200, 200, 304))
        elif kind < 0.96:
            target = f"/wp-login.php?x={rng.randrange(1000)}"
            status = 404
        else:
            target = "/"
            status = rng.choice((200, 301))
        if status == 200 and rng.random() < 0.03:
            status = rng.choice((500, 403, 206))
        method = "GET" if rng.random() < 0.95 else rng.choice(("HEAD", "POST"))
        protocol = rng.choice(("HTTP/1.1", "HTTP/1.1", "HTTP/2.0", "HTTP/1.0"))
        size = 0 if status in (301, 304) else rng.randrange(200, 250_000)
        lines.append(
            f"{rng.choices(addresses, address_weights)[0]} - - [{stamp}]"
            f' "{method} {target} {protocol}" {status} {size}'
            f' "{rng.choice(referrers)}" "{rng.choices(agents, agent_weights)[0]}"'
        )
    return lines


# --------------------------------------------------------------------------- families


IIS_FIELDS = (
    "#Fields: date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip"
    " cs-version cs(User-Agent) cs(Referer) sc-status sc-substatus sc-win32-status sc-bytes"
    " time-taken"
)


def _with_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def family_lines(lines: list[str]) -> dict[str, tuple[str, list[str]]]:
    """The same requests as ``lines`` (combined), as each family writes them: per family
    the format to read them with and the lines (W3C: its #Fields: directive first)."""
    import orjson

    parser = compile_format("combined")
    parsed = [parser.parse(line) for line in lines]
    out: dict[str, list[str]] = {k: [] for k in FAMILY_FORMATS}
    out["w3c_iis"].append(IIS_FIELDS)
    for i, (line, p) in enumerate(zip(lines, parsed, strict=True)):
        assert isinstance(p, ParsedLine)
        seconds, ms = divmod(p.timestamp_ms, 1000)
        tm = time.gmtime(seconds)
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{ms:03d}000Z"
        clf = time.strftime("%d/%b/%Y:%H:%M:%S", tm)
        agent = p.user_agent or "-"
        referrer = p.referrer or "-"
        size = p.body_bytes or 0
        taken = (i * 7) % 900
        port = 1024 + i % 60000
        path, _, query = p.target.partition("?")
        out["auto_combined"].append(line)
        out["apache_vhost"].append(f"data.example.org:443 {line}")
        out["nginx_timing"].append(f'{line} "-" 0.{taken:03d} 0.{max(taken - 1, 0):03d}')
        out["w3c_iis"].append(
            f"{time.strftime('%Y-%m-%d %H:%M:%S', tm)} 10.0.0.5 {p.method} {path}"
            f" {query or '-'} 443 - {p.remote_addr} {p.protocol or 'HTTP/1.1'}"
            f" {agent.replace(' ', '+')} {referrer} {p.status} 0 0 {size} {taken}"
        )
        absolute = f"{p.method} https://data.example.org:443{p.target} {p.protocol}"
        elb = (
            f"{iso} my-lb {_with_port(p.remote_addr or '-', port)} 10.0.0.1:80 0.000073"
            f' 0.{taken:06d} 0.000057 {p.status} {p.status} 0 {size} "{absolute}"'
            f' "{agent}" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2'
        )
        out["aws_elb"].append(elb)
        out["aws_alb"].append(
            f"https {elb.replace('my-lb', 'app/my-lb/50dc6c495c0c9188')}"
            " arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/t/73e2d6bc"
            f' "Root=1-58337262-{i:024x}" "data.example.org" "-" 0 {iso} "forward" "-" "-"'
            ' "10.0.0.1:80" "200" "-" "-"'
        )
        out["aws_s3"].append(
            f"79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be data-bucket"
            f" [{clf} +0000] {p.remote_addr} - {i:016X} REST.GET.OBJECT {path.lstrip('/') or '-'}"
            f' "{p.request}" {p.status} - {size} {size} {taken} 10 "{referrer}" "{agent}" -'
            " s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3= SigV4"
            " ECDHE-RSA-AES128-GCM-SHA256 AuthHeader data-bucket.s3.amazonaws.com TLSv1.2"
        )
        out["haproxy"].append(
            f"{time.strftime('%b %d %H:%M:%S', tm)} lb1 haproxy[14389]:"
            f" {_with_port(p.remote_addr or '-', port)} [{clf}.{ms:03d}] http-in"
            f" app/srv1 0/0/1/{taken}/{taken + 1} {p.status} {size} - - ---- 1/1/1/1/0 0/0"
            f' {{data.example.org}} {{}} "{p.request}"'
        )
        headers: dict[str, list[str]] = {"User-Agent": [agent]}
        if p.referrer:
            headers["Referer"] = [p.referrer]
        out["caddy_json"].append(
            orjson.dumps(
                {
                    "level": "info",
                    "ts": p.timestamp_ms / 1000,
                    "logger": "http.log.access",
                    "msg": "handled request",
                    "request": {
                        "remote_ip": p.remote_addr,
                        "remote_port": str(port),
                        "proto": p.protocol,
                        "method": p.method,
                        "host": "data.example.org",
                        "uri": p.target,
                        "headers": headers,
                    },
                    "duration": taken / 1000,
                    "size": size,
                    "status": p.status,
                }
            ).decode()
        )
        traefik: dict[str, Any] = {
            "ClientAddr": _with_port(p.remote_addr or "-", port),
            "ClientHost": p.remote_addr,
            "DownstreamContentSize": size,
            "DownstreamStatus": p.status,
            "Duration": taken * 1_000_000,
            "RequestHost": "data.example.org",
            "RequestMethod": p.method,
            "RequestPath": p.target,
            "RequestProtocol": p.protocol,
            "StartUTC": iso,
            "request_User-Agent": agent,
        }
        if p.referrer:
            traefik["request_Referer"] = p.referrer
        out["traefik_json"].append(orjson.dumps(traefik).decode())
        out["nginx_json"].append(
            orjson.dumps(
                {
                    "time_local": p.time,
                    "remote_addr": p.remote_addr,
                    "request": p.request,
                    "status": str(p.status),
                    "body_bytes_sent": str(size),
                    "http_referer": referrer,
                    "http_user_agent": agent,
                    "request_time": f"0.{taken:03d}",
                }
            ).decode()
        )
    return {name: (FAMILY_FORMATS[name], found) for name, found in out.items()}


FAMILY_FORMATS = {
    "auto_combined": "auto",
    "apache_vhost": "vhost_combined",
    "nginx_timing": "main_timing",
    "w3c_iis": "iis",
    "aws_elb": "elb",
    "aws_alb": "alb",
    "aws_s3": "s3",
    "haproxy": "haproxy_http",
    "caddy_json": "caddy",
    "traefik_json": "traefik_json",
    "nginx_json": "json",
}
"""Each family contender and the format name detection must find for its lines."""


# --------------------------------------------------------------------------- contenders


def _family_contender(
    name: str, spec: str, lines: list[str], rules: UrlRules
) -> tuple[Callable[[], int], int]:
    """Detection chooses the parser from the first lines (it must choose ``spec``), then
    every line goes line -> document; returns the run and the lines it must store."""
    detection = detect(lines[:50])
    expected = "auto" if spec == "auto" else spec
    if spec != "auto" and detection.name != expected:
        raise C.BenchmarkError(f"{name}: detected {detection.name}, not {expected}")
    stored = len(lines) - (1 if lines[0].startswith("#") else 0)

    def run() -> int:
        parse = (detection.parser if spec == "auto" else compile_any_format(spec)).parse
        build = build_log_document
        done = 0
        for offset, line in enumerate(lines):
            parsed = parse(line)
            if type(parsed) is ParsedLine:
                build(
                    parsed,
                    source_id=SOURCE_ID,
                    offset=offset,
                    rules=rules,
                    trusted_proxies=TRUSTED_PROXIES,
                    received_ms=RECEIVED_MS,
                )
                done += 1
        return done

    return run, stored


def make_families(lines: list[str]) -> dict[str, tuple[Callable[[], int], int]]:
    rules = UrlRules.parse(RULES)
    return {
        name: _family_contender(name, spec, found, rules)
        for name, (spec, found) in family_lines(lines).items()
    }


def make_contenders(lines: list[str], data_dir: str) -> dict[str, Callable[[], int]]:
    parser = compile_format("combined")
    converter = LineConverter(
        Settings.from_env(
            {
                "METRONOME_DATA_DIR": data_dir,
                "METRONOME_LOG_FORMAT": "combined",
                "METRONOME_URL_RULES": RULES,
                "METRONOME_TRUSTED_PROXIES": ",".join(str(n) for n in TRUSTED_PROXIES),
            }
        )
    )
    rules = UrlRules.parse(RULES)
    offsets = []
    position = 0
    for line in lines:
        offsets.append(position)
        position += len(line.encode()) + 1

    def metronome() -> int:
        parse = parser.parse
        build = build_log_document
        done = 0
        for line, offset in zip(lines, offsets, strict=True):
            parsed = parse(line)
            if type(parsed) is ParsedLine:
                build(
                    parsed,
                    source_id=SOURCE_ID,
                    offset=offset,
                    rules=rules,
                    trusted_proxies=TRUSTED_PROXIES,
                    received_ms=RECEIVED_MS,
                )
                done += 1
        return done

    def metronome_import() -> int:
        convert = converter.convert
        done = 0
        for line, offset in zip(lines, offsets, strict=True):
            if convert(line, SOURCE_ID, offset, RECEIVED_MS)[0] is not None:
                done += 1
        return done

    def regex_floor() -> int:
        match = FLOOR.match
        done = 0
        for line in lines:
            if match(line) is not None:
                done += 1
        return done

    return {
        "metronome": metronome,
        "metronome_import": metronome_import,
        "regex_floor": regex_floor,
    }


def timed(run: Callable[[], int], expected: int) -> dict[str, Any]:
    """One pass: lines per CPU second of this process (the unit), and per wall second."""
    gc.collect()
    started_cpu, started = time.process_time(), time.perf_counter()
    done = run()
    cpu_seconds = time.process_time() - started_cpu
    seconds = time.perf_counter() - started
    if done != expected:
        raise C.BenchmarkError(f"{done} of {expected} lines made it through")
    return {
        "cpu_seconds": cpu_seconds,
        "seconds": seconds,
        "lines_per_s": expected / cpu_seconds,
        "lines_per_wall_s": expected / seconds,
    }


def pin_one_cpu(cpu: int | None) -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    chosen = cpu if cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {chosen})
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=5, warmup=None)
    parser.add_argument(
        "--lines",
        type=int,
        default=DEFAULT_LINES,
        help=f"log lines per pass [default: {DEFAULT_LINES}]",
    )
    parser.add_argument(
        "--lines-seed",
        type=int,
        default=DEFAULT_LINES_SEED,
        help=f"seed of the generated lines [default: {DEFAULT_LINES_SEED}]",
    )
    parser.add_argument(
        "--families",
        choices=("all", "none"),
        default="all",
        help="also measure every format family (issue 17) [default: all]",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="CPU to pin this process to [default: the lowest allowed]",
    )
    args = parser.parse_args(argv)
    if args.duration is not None or args.warmup is not None:
        print(
            f"{NAME}: --duration/--warmup do not apply (a trial is one pass over --lines;"
            " the warm-up is one pass of each)",
            file=sys.stderr,
        )
    seed = C.new_seed(args.seed)
    load_at_start = C.loadavg()
    started_at = time.time()
    cpu = pin_one_cpu(args.cpu)

    print(f"{NAME}: generating {args.lines:,} combined lines...", file=sys.stderr)
    lines = generate_lines(args.lines, args.lines_seed)
    data_dir = tempfile.mkdtemp(prefix="metronome-bench-parse-")  # the visitor-id salts
    contenders = make_contenders(lines, data_dir)
    expected_lines = dict.fromkeys(contenders, len(lines))
    if args.families == "all":
        print(f"{NAME}: writing the same requests in every format family...", file=sys.stderr)
        for label, (run, stored) in make_families(lines).items():
            contenders[label] = run
            expected_lines[label] = stored
    warmups: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    try:
        for _, label in C.trial_order(list(contenders), 1, seed + 1):
            r = timed(contenders[label], expected_lines[label])
            warmups[label] = {
                "lines_per_s": round(r["lines_per_s"], 1),
                "lines_per_wall_s": round(r["lines_per_wall_s"], 1),
            }
        for round_no, label in C.trial_order(list(contenders), args.trials, seed):
            r = timed(contenders[label], expected_lines[label])
            trials.append(
                {
                    "round": round_no,
                    "contender": label,
                    "cpu_seconds": round(r["cpu_seconds"], 4),
                    "seconds": round(r["seconds"], 4),
                    "lines_per_s": round(r["lines_per_s"], 1),
                    "lines_per_wall_s": round(r["lines_per_wall_s"], 1),
                }
            )
            print(
                f"  round {round_no} {label:16} {r['lines_per_s']:12,.0f} lines/s"
                f" ({r['lines_per_wall_s']:,.0f} per wall second)",
                file=sys.stderr,
            )
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    per_s = {
        label: C.median(t["lines_per_s"] for t in trials if t["contender"] == label)
        for label in contenders
    }
    per_wall_s = {
        label: C.median(t["lines_per_wall_s"] for t in trials if t["contender"] == label)
        for label in contenders
    }
    result_ratio = C.ratio(per_s["metronome"], per_s["regex_floor"])
    paired = []
    for round_no in range(args.trials):
        by = {t["contender"]: t["lines_per_s"] for t in trials if t["round"] == round_no}
        paired.append(C.rounded(C.ratio(by.get("metronome"), by.get("regex_floor"))))
    passed = per_s["metronome"] is not None and per_s["metronome"] >= GOAL_LINES_PER_S
    families = {
        label: {
            "format": FAMILY_FORMATS[label],
            "lines_per_s": C.rounded(per_s[label], 1),
            "ratio_to_combined": C.rounded(C.ratio(per_s[label], per_s["metronome"])),
            "ratio_to_regex_floor": C.rounded(C.ratio(per_s[label], per_s["regex_floor"])),
        }
        for label in contenders
        if label in FAMILY_FORMATS
    }
    families_passed = all(
        (f["lines_per_s"] or 0) >= FAMILY_GOAL_LINES_PER_S for f in families.values()
    )
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "lines": args.lines,
            "lines_seed": args.lines_seed,
            "trials": args.trials,
            "warmup": "one unrecorded pass of each contender",
            "seed": seed,
            "format": "combined",
            "distinct_user_agents": len(set(line.rsplit('"', 2)[-2] for line in lines)),
            "ipv6_lines": sum(1 for line in lines if ":" in line.split(" ", 1)[0]),
            "url_rules": RULES.strip().splitlines(),
            "trusted_proxies": [str(n) for n in TRUSTED_PROXIES],
            "cpu_pinned": cpu,
            "metronome": "compile_format('combined').parse + build_log_document per line",
            "metronome_import": "LineConverter.convert per line (+ visitor id, client"
            " address policy drop, referrer blocklist, counts)",
            "regex_floor": "one precompiled regex, pattern.match(line) only",
            "families": {
                label: f"the same requests as {spec} lines: detected, then line -> document"
                for label, spec in FAMILY_FORMATS.items()
            }
            if args.families == "all"
            else {},
            "unit": "lines per CPU second of the benchmark process, pinned to one CPU"
            " (median of trials); per wall second too (other work on the machine"
            " lowers those)",
        },
        "environment": C.environment(loadavg_at_start=load_at_start),
        "warmup": warmups,
        "trials": trials,
        "summary": {
            "metronome_lines_per_s": C.rounded(per_s["metronome"], 1),
            "metronome_import_lines_per_s": C.rounded(per_s["metronome_import"], 1),
            "regex_floor_lines_per_s": C.rounded(per_s["regex_floor"], 1),
            "metronome_lines_per_wall_s": C.rounded(per_wall_s["metronome"], 1),
            "regex_floor_lines_per_wall_s": C.rounded(per_wall_s["regex_floor"], 1),
            "ratio": C.rounded(result_ratio),
            "paired_ratios": paired,
            "families": families,
            "goal": {
                "lines_per_s": GOAL_LINES_PER_S,
                "family_lines_per_s": FAMILY_GOAL_LINES_PER_S,
            },
            "passed": {"lines_per_s": passed, "families": families_passed},
        },
    }
    out = C.write_results(NAME, results, args.output)
    verdict = "ok" if passed else "BELOW GOAL"
    for label, family in families.items():
        print(
            f"  {label:16} {family['lines_per_s'] or 0:12,.0f} lines/s"
            f" ({family['ratio_to_combined']} of combined; goal >="
            f" {FAMILY_GOAL_LINES_PER_S:,})",
            file=sys.stderr,
        )
    print(
        f"{NAME}: {per_s['metronome']:,.0f} lines/s line->document vs regex floor"
        f" {per_s['regex_floor']:,.0f} lines/s, ratio {result_ratio:.3f} (goal >="
        f" {GOAL_LINES_PER_S:,} lines/s): {verdict}; the import step with visitor ids"
        f" {per_s['metronome_import']:,.0f} lines/s -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
