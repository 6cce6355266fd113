"""A real combined-format access log for ``python -m benchmarks.recommend LOG``: pages
really served by Debian's nginx to simulated visitors, one simulated day after another.

    python -m benchmarks.nginx_log OUT.log [--days 21] [--visits 150] [--items 200]

A static site of ``--items`` pages (each with a stylesheet and an image, requested like a
browser does, and links) is served by nginx writing the standard ``combined`` log. The
visitors' paths are those of :func:`benchmarks.recommend.generate` (Zipf-popular pages,
planted pairs a visit follows half the time), each visitor with its own address (through
``X-Forwarded-For`` and nginx's real-IP module, as behind a proxy) and user agent; a few
crawlers and 404s are mixed in. nginx runs with Debian's libfaketime preloaded (installed
with apt when missing), started at 08:00 UTC of each simulated day, so the log
spans ``--days`` days while it is written in minutes: the only thing not real about it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import httpx

from benchmarks.recommend import START, Visit, generate
from tests.support.browser import apt_install
from tests.support.es_server import free_port
from tests.support.secure_proxy import ensure_nginx

BOTS = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"]
BROWSERS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.2 Safari/605.1.15",
]


def _site(root: Path, items: int) -> None:
    (root / "static").mkdir(parents=True)
    (root / "static" / "site.css").write_text("body { font-family: sans-serif }\n")
    (root / "static" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (root / "datasets").mkdir()
    for n in range(items):
        links = "".join(f'<a href="/datasets/item-{(n + k) % items:04d}">next</a>' for k in (1, 7))
        (root / "datasets" / f"item-{n:04d}").write_text(
            f'<html><head><link rel="stylesheet" href="/static/site.css"></head><body>'
            f'<img src="/static/logo.png"><h1>item {n}</h1>{links}</body></html>\n'
        )


def _config(directory: Path, root: Path, port: int, log: Path) -> str:
    d = directory
    return f"""
worker_processes 1;
env FAKETIME;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log {log} combined;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Forwarded-For;
    default_type text/html;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def _start(command: list[str], url: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode})")
        try:
            httpx.get(url + "/static/site.css", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not answer in 30 s")


def write_log(out: Path, days: int, visits: int, items: int, seed: int) -> int:
    """Serve the simulated days; returns the requests made."""
    nginx = ensure_nginx()
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        apt_install("faketime")
        found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if not found:
        raise RuntimeError("apt installed faketime but libfaketime.so.1 is missing")
    library = found[0]
    stream = generate(seed, days, visits, items, max(1, items // 10), 0.5)
    rng = random.Random(seed)
    requests = 0
    with tempfile.TemporaryDirectory(prefix="mt-nginx-log-") as tmp:
        directory = Path(tmp)
        root = directory / "www"
        _site(root, items)
        out = out.resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        if os.geteuid() == 0:  # nginx's workers drop to nobody
            directory.chmod(0o755)
            for path in (directory, *directory.rglob("*")):
                path.chmod(0o755 if path.is_dir() else 0o644)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        conf = directory / "nginx.conf"
        conf.write_text(_config(directory, root, port, out))
        by_day: dict[int, list[Visit]] = {}
        for visit in stream.visits:
            by_day.setdefault(visit.day, []).append(visit)
        for day in range(days):
            # libfaketime preloaded with an offset from the real clock; ``env FAKETIME``
            # keeps it for the worker (nginx clears its workers' environment, and
            # libfaketime reads the variable again every few seconds)
            moment = START + timedelta(days=day, hours=8)
            offset = int(moment.timestamp() - time.time())
            proc = _start(
                [str(nginx), "-p", str(directory), "-c", str(conf)],
                url,
                {**os.environ, "LD_PRELOAD": str(library), "FAKETIME": f"{offset:+d}"},
            )
            try:
                with httpx.Client(base_url=url, timeout=10) as client:
                    for visit in by_day.get(day, []):
                        number = zlib.crc32(f"{seed}:{visit.visitor}".encode()) % 65_000
                        address = f"10.{day % 250}.{number // 250}.{number % 250 + 1}"
                        agent = BROWSERS[number % len(BROWSERS)]
                        headers = {"X-Forwarded-For": address, "User-Agent": agent}
                        for page in visit.items:
                            client.get(f"/datasets/{page}", headers=headers)
                            client.get("/static/site.css", headers=headers)
                            client.get("/static/logo.png", headers=headers)
                            requests += 3
                        if rng.random() < 0.05:
                            client.get("/datasets/missing", headers=headers)
                            requests += 1
                    for _ in range(visits // 20):  # a crawler through the site
                        page = f"item-{rng.randrange(items):04d}"
                        client.get(f"/datasets/{page}", headers={"User-Agent": BOTS[0]})
                        requests += 1
            finally:  # the master and its worker
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
                deadline = time.monotonic() + 10
                while (directory / "nginx.pid").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            print(f"  day {day}: {requests} requests", file=sys.stderr, flush=True)
    return requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the access log to write")
    parser.add_argument("--days", type=int, default=21, help="simulated days [21]")
    parser.add_argument("--visits", type=int, default=150, help="visits a day [150]")
    parser.add_argument("--items", type=int, default=200, help="pages [200]")
    parser.add_argument("--seed", type=int, default=25)
    args = parser.parse_args(argv)
    count = write_log(args.out, args.days, args.visits, args.items, args.seed)
    print(f"nginx_log: {count} requests served -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
