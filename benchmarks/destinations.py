"""Ingestion with destinations: ``POST /ticks`` events/s with three webhook destinations
forwarding every event, against the same Metronome with none, in the same run.

Both contenders are ``python -m metronome serve`` (2 workers, the embedded store, the
worker it starts shipping), receiving the same 500 realistic ticks per request from wrk
(8 keep-alive connections), in shuffled alternating trials after a warm-up. The second one
has three ``[[destinations]]`` of type webhook (batches of 500) posting to a local HTTP
receiver in this process, which checks nothing and answers 200. The receiver's count of
forwarded events is recorded too (events/s delivered while ingestion ran), for scale.

Both servers stay up for the whole run (forwarding lags ingestion on a small machine, so
the second one has a backlog to forward, as it would in steady use), but only the one
being measured runs: the other's processes are paused (SIGSTOP to its process group,
SIGCONT after), so the baseline is never measured while the other server forwards.

    python -m benchmarks.destinations [--duration 10] [--trials 3] [--connections 8]

Goal: with destinations, ingestion keeps >= 0.9 of the events/s without them (forwarding
reads the spool in the worker and never holds a request up). On a 2-core machine the
forwarding worker and the receiver share the CPUs with the servers and wrk: the ratio
includes that.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from benchmarks import _common as C

NAME = "destinations"
BATCH = 500
GOAL_RATIO = 0.9
DESTINATIONS = 3
SPOOL_BYTES = 8 << 30


class Receiver:
    """A webhook receiver answering 200 to everything; counts the events it gets."""

    def __init__(self) -> None:
        self.events = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                count = body.count(b'"id":')
                with receiver.lock:
                    receiver.events += count
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _config(directory: Path, url: str) -> Path:
    secret = directory / "secret"
    secret.write_text("benchmark-secret\n")
    secret.chmod(0o600)
    tables = "".join(
        f'[[destinations]]\nname = "hook-{n}"\nsite = "default"\ntype = "webhook"\n'
        f'url = "{url}/hook-{n}"\nsecret_file = "{secret}"\nbatch_size = 500\n\n'
        for n in range(DESTINATIONS)
    )
    path = directory / "metronome.toml"
    path.write_text(tables)
    return path


@contextlib.contextmanager
def _alone(servers: dict[str, Any], label: str) -> Iterator[None]:
    """Only ``label``'s server runs meanwhile: every other one is paused (its process
    group: gunicorn, its workers and the worker that ships and forwards)."""
    paused = [s.proc.pid for name, s in servers.items() if name != label and C.alive(s)]
    for pid in paused:
        os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in paused:
            os.killpg(pid, signal.SIGCONT)


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__, duration=10, trials=3, warmup=3)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections [default: 8]")
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    C.pin_git()
    try:
        C.require_wrk()
    except C.BenchmarkError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    tmp = C.temp_dir(f"metronome-bench-{NAME}-")
    receiver = Receiver()
    env = {"METRONOME_SPOOL_MAX_BYTES": str(SPOOL_BYTES)}
    (tmp / "plain").mkdir()
    (tmp / "forwarding").mkdir()
    config = _config(tmp, receiver.url)
    servers = {
        "without": C.metronome_server(tmp / "plain", env=env),
        "with_destinations": C.metronome_server(
            tmp / "forwarding", env={**env, "METRONOME_CONFIG": str(config)}
        ),
    }
    body = orjson.dumps(C.realistic_ticks(BATCH))
    expect = f'"accepted":{BATCH},'
    trials: list[dict[str, Any]] = []
    warmups: dict[str, float] = {}
    exit_codes: dict[str, int | None] = {}
    started = time.time()
    load_at_start = C.loadavg()

    def one_run(label: str, seconds: float) -> dict[str, Any]:
        with _alone(servers, label):
            before = receiver.events
            stats = C.run_wrk(
                servers[label].url,
                "/ticks",
                body,
                duration=seconds,
                connections=args.connections,
                threads=1,
                expect=expect,
            )
            stats["forwarded"] = receiver.events - before
        return stats

    try:
        for server in servers.values():
            C.start(server)
        for _, label in C.trial_order(list(servers), 1, seed + 1):
            warmups[label] = round(one_run(label, args.warmup)["requests_per_s"] * BATCH, 1)
        for round_no, label in C.trial_order(list(servers), args.trials, seed):
            stats = one_run(label, args.duration)
            events_per_s = stats["requests_per_s"] * BATCH
            trials.append(
                {
                    "round": round_no,
                    "contender": label,
                    "requests": stats["requests"],
                    "seconds": round(stats["seconds"], 3),
                    "events_per_s": round(events_per_s, 1),
                    "forwarded_per_s": round(stats["forwarded"] / stats["seconds"], 1),
                    "latency_ms": {k: round(v / 1000, 3) for k, v in stats["latency_us"].items()},
                }
            )
            print(
                f"  round {round_no} {label:17} {events_per_s:10.1f} events/s"
                f"  forwarded {stats['forwarded'] / stats['seconds']:10.1f} events/s",
                file=sys.stderr,
            )
        for label, server in servers.items():
            if not C.alive(server):
                raise C.BenchmarkError(f"{label} died during the run:\n{server.log_tail()}")
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        for label, server in servers.items():
            exit_codes[label] = server.stop()
        receiver.close()
        shutil.rmtree(tmp, ignore_errors=True)

    per_s = {
        label: C.median(t["events_per_s"] for t in trials if t["contender"] == label)
        for label in servers
    }
    paired = []
    for round_no in range(args.trials):
        by = {t["contender"]: t["events_per_s"] for t in trials if t["round"] == round_no}
        paired.append(C.rounded(C.ratio(by["with_destinations"], by["without"])))
    result_ratio = C.ratio(per_s["with_destinations"], per_s["without"])
    forwarded = C.median(
        t["forwarded_per_s"] for t in trials if t["contender"] == "with_destinations"
    )
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "parameters": {
            "path": "/ticks",
            "events_per_request": BATCH,
            "body_bytes": len(body),
            "duration_s": args.duration,
            "trials": args.trials,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "destinations": f"{DESTINATIONS} webhooks (batch_size 500) to a local receiver",
            "metronome": "python -m metronome serve (2 workers, with its worker), embedded"
            f" store, METRONOME_SPOOL_MAX_BYTES={SPOOL_BYTES}",
            "baseline": "the same without destinations",
            "isolation": "both servers up for the whole run; the one not measured is paused"
            " (SIGSTOP to its process group) during each warm-up and trial",
            "unit": "events accepted per second (median of trials)",
        },
        "environment": C.environment(wrk=C.wrk_version(), loadavg_at_start=load_at_start),
        "warmup_events_per_s": warmups,
        "trials": trials,
        "summary": {
            "with_destinations_events_per_s": C.rounded(per_s["with_destinations"], 1),
            "without_events_per_s": C.rounded(per_s["without"], 1),
            "ratio": C.rounded(result_ratio),
            "paired_ratios": paired,
            "forwarded_events_per_s_each_destination": C.rounded(
                None if forwarded is None else forwarded / DESTINATIONS, 1
            ),
            "goal": {"ratio": GOAL_RATIO},
            "passed": {"ratio": result_ratio is not None and result_ratio >= GOAL_RATIO},
            "server_exit_codes": exit_codes,
        },
    }
    out = C.write_results(NAME, results, args.output)
    verdict = "ok" if results["summary"]["passed"]["ratio"] else "BELOW GOAL"
    print(
        f"{NAME}: with {DESTINATIONS} destinations {per_s['with_destinations']:,.0f} events/s"
        f" vs without {per_s['without']:,.0f} events/s, ratio {result_ratio:.2f}"
        f" (goal >= {GOAL_RATIO}): {verdict}; forwarded {forwarded or 0:,.0f} events/s"
        f" in all -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
