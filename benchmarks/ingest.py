"""Single-tick ``POST /tick`` throughput: Metronome versus a bare Falcon app, both under wrk.

Metronome runs as ``python -m metronome serve`` (METRONOME_WORKERS=2, the embedded store in a
temporary METRONOME_DATA_DIR); the baseline is ``benchmarks/bare_app.py`` served by gunicorn
with the same options (2 ``uvicorn_worker.UvicornWorker`` workers). wrk POSTs one realistic
tick over keep-alive connections; every answer must be 2xx. All servers run for the whole
benchmark; after a warm-up of each, measured trials alternate in shuffled rounds.

Each trial also records where the CPU went, in microseconds per request: the server's
HTTP workers, its shipper (``metronome worker``), its arbiter, and wrk itself
(``cpu_us_per_request``; the summary holds each contender's medians), so the gap to the
bare app can be read as Metronome's own work, durability, and shipping.

A third contender, for scale and not for the goal, is ``benchmarks/undurable.py``: the same
Metronome with the spool's fsync and the shipper switched off. Its ratio to the bare app is
what accepting a tick costs by itself; Metronome's ratio to it is what durability and
shipping cost on top.

    python -m benchmarks.ingest [--duration 10] [--trials 3] [--connections 32]
        [--stage-requests 10000]

After the wrk trials, ``summary.stages`` says where a tick's microseconds go, from a run of
``benchmarks.accept`` in the same session (``--stage-requests`` per trial, 0 to skip): CPU
µs per stage of ``POST /tick`` inside a worker (no HTTP), the spool's ``fdatasync`` calls
per request and their duration, and beside them the bare app's own µs and the HTTP work
both servers pay (the bare app's workers' µs per request under wrk minus its µs without
HTTP). Then, when ``perf`` is installed, ``summary.fdatasync_under_wrk`` says how the spool
syncs under wrk: one more wrk run on Metronome (``--duration`` seconds, after the trials and
not counted in them) with ``perf trace -s -e fdatasync`` attached to its HTTP workers, which
counts and times every ``fdatasync`` they make: syncs per request, their mean and longest
duration, and how many were in flight per worker on average (their summed time over the
run's).

Goal (issue 24): Metronome's requests/s >= 0.5 x the bare app's, the durable spool
unchanged (the earlier 0.7 was withdrawn: ``benchmarks.accept`` showed it needs less of
Metronome's own work per tick than durability alone costs).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any

import orjson

from benchmarks import _common as C

NAME = "ingest"
GOAL_RATIO = 0.5
SPOOL_BYTES = 8 << 30


def stored_rows(data_dir: Any) -> int | None:
    """Rows in the embedded store (informational: with a spool they may lag the acks)."""
    path = data_dir / "metronome.sqlite3"
    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return None


def _process_roles(server: Any) -> dict[int, str]:
    """The server's processes by role: ``arbiter`` (gunicorn's, or ``metronome serve``'s
    parent), ``shipper`` (``metronome worker``) and ``http_workers``."""
    root = server.proc.pid
    roles = {root: "arbiter"}
    for pid in C.descendants(root):
        argv = C.cmdline(pid)
        roles[pid] = "shipper" if "worker" in argv[2:4] else "http_workers"
    return roles


def _cpu_by_role(roles: dict[int, str]) -> dict[str, float]:
    used: dict[str, float] = {}
    for pid, role in roles.items():
        used[role] = used.get(role, 0.0) + (C.cpu_seconds(pid) or 0.0)
    return used


def _children_cpu_s() -> float:
    times = os.times()
    return times.children_user + times.children_system


def accept_stages(tmp: Any, requests: int, seed: int) -> dict[str, Any]:
    """``benchmarks.accept`` in a child process (its own settings and event loop): the
    summary of where a tick's CPU goes inside a worker."""
    out = tmp / "accept.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.accept",
            "--requests",
            str(requests),
            "--trials",
            "3",
            "--stage-calls",
            str(requests),
            "--seed",
            str(seed),
            "--output",
            str(out),
        ],
        env=C.child_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise C.BenchmarkError(f"benchmarks.accept failed:\n{done.stderr[-2000:]}")
    summary: dict[str, Any] = orjson.loads(out.read_bytes())["summary"]
    return summary


_PERF_ROW = re.compile(
    r"^\s*fdatasync\s+(?P<calls>\d+)\s+(?P<errors>\d+)\s+(?P<total>[\d.]+)"
    r"\s+(?P<min>[\d.]+)\s+(?P<avg>[\d.]+)\s+(?P<max>[\d.]+)",
    re.M,
)


def sync_profile(server: Any, run: Any, seconds: float, workers: int) -> dict[str, Any]:
    """One wrk run (``run(seconds)``, its stats) on Metronome with ``perf trace -s``
    counting and timing its HTTP workers' ``fdatasync`` calls (per thread: the spool's
    sync threads); not counted in the trials."""
    perf = shutil.which("perf")
    if perf is None:
        return {"skipped": "perf is not installed"}
    pids = [pid for pid, role in _process_roles(server).items() if role == "http_workers"]
    tracer = subprocess.Popen(
        [perf, "trace", "-s", "-e", "fdatasync", "-p", ",".join(map(str, pids))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)  # perf attaches to every thread
        stats = run(seconds)
    finally:
        tracer.send_signal(signal.SIGINT)
        output, _ = tracer.communicate(timeout=60)
    rows = [m.groupdict() for m in _PERF_ROW.finditer(output)]
    if not rows:
        return {"skipped": f"perf trace reported nothing: {output[-300:]}"}
    calls = sum(int(r["calls"]) for r in rows)
    busy_ms = sum(float(r["total"]) for r in rows)
    requests = max(stats["requests"], 1)
    return {
        "requests": stats["requests"],
        "requests_per_s": round(stats["requests_per_s"], 1),
        "latency_ms": {k: round(v / 1000, 3) for k, v in stats["latency_us"].items()},
        "fdatasyncs": calls,
        "fdatasync_errors": sum(int(r["errors"]) for r in rows),
        "fdatasyncs_per_request": round(calls / requests, 3),
        "requests_per_fdatasync": round(requests / max(calls, 1), 1),
        "fdatasync_ms_mean": round(busy_ms / max(calls, 1), 3),
        "fdatasync_ms_max": max(float(r["max"]) for r in rows),
        "in_flight_per_worker": round(busy_ms / (stats["seconds"] * 1000 * workers), 2),
        "threads": len(rows),
    }


def run_throughput(
    *,
    name: str,
    description: str,
    path: str,
    body: bytes,
    events_per_request: int,
    expect: str | None,
    unit: str,
    goal: dict[str, Any],
    default_connections: int,
    undurable: bool = False,
    stages: bool = False,
    argv: list[str] | None = None,
) -> int:
    """Metronome against the bare app under wrk; with ``undurable``, also Metronome with
    the spool's fsync and the shipper off (:mod:`benchmarks.undurable`), for scale."""
    parser = C.base_parser(description, duration=10, trials=3, warmup=3)
    parser.add_argument(
        "--connections",
        type=int,
        default=default_connections,
        help=f"wrk connections [default: {default_connections}]",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads [default: 1]")
    parser.add_argument(
        "--workers", type=int, default=2, help="server worker processes, both servers [default: 2]"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary data directory and server logs"
    )
    if stages:
        parser.add_argument(
            "--stage-requests",
            type=int,
            default=10_000,
            help="requests per trial of the per-stage breakdown (benchmarks.accept), 0 to"
            " skip [default: 10000]",
        )
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    C.pin_git()
    try:
        C.require_wrk()
    except C.BenchmarkError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2

    tmp = C.temp_dir(f"metronome-bench-{name}-")
    data_dir = tmp / "data"
    data_dir.mkdir()
    # a burst bigger than the default 1 GiB spool: the shipper drains it at its own pace
    # (lower CPU priority), and this measures what is accepted meanwhile
    servers = {
        "metronome": C.metronome_server(
            data_dir, workers=args.workers, env={"METRONOME_SPOOL_MAX_BYTES": str(SPOOL_BYTES)}
        ),
        "bare": C.bare_server(tmp, workers=args.workers),
    }
    expects = {"metronome": expect, "bare": None}  # the bare app answers {} to everything
    if undurable:
        undurable_dir = tmp / "undurable-data"
        undurable_dir.mkdir()
        servers["undurable"] = C.metronome_server(
            undurable_dir,
            workers=args.workers,
            module="benchmarks.undurable",
            env={"METRONOME_SPOOL_MAX_BYTES": str(SPOOL_BYTES)},
        )
        expects["undurable"] = expect
    acked = dict.fromkeys(servers, 0)
    trials: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}
    exit_codes: dict[str, int | None] = {}
    accept: dict[str, Any] | None = None
    syncs: dict[str, Any] | None = None
    started = time.time()
    load_at_start = C.loadavg()

    def one_run(label: str, seconds: float) -> dict[str, Any]:
        spread: list[list[int] | None] = []
        sampler = threading.Timer(  # midway through: how wrk's connections are spread
            seconds / 2, lambda: spread.append(C.connections_per_process(servers[label].port))
        )
        sampler.start()
        roles = _process_roles(servers[label])
        cpu_before, wrk_before = _cpu_by_role(roles), _children_cpu_s()
        try:
            stats = C.run_wrk(
                servers[label].url,
                path,
                body,
                duration=seconds,
                connections=args.connections,
                threads=args.threads,
                expect=expects[label],
            )
        finally:
            sampler.cancel()
            sampler.join()
        cpu_after = _cpu_by_role(roles)
        requests = max(stats["requests"], 1)
        cpu_us = {
            role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1e6 / requests, 1)
            for role in sorted(cpu_after)
        }
        cpu_us["wrk"] = round((_children_cpu_s() - wrk_before) * 1e6 / requests, 1)
        stats["cpu_us_per_request"] = cpu_us
        acked[label] += stats["ok"]
        stats["connections_per_worker"] = spread[0] if spread else None
        return stats

    try:
        for server in servers.values():
            C.start(server)
        for _, label in C.trial_order(list(servers), 1, seed + 1):
            stats = one_run(label, args.warmup)
            warmups[label] = {"requests_per_s": round(stats["requests_per_s"], 1)}
        for round_no, label in C.trial_order(list(servers), args.trials, seed):
            stats = one_run(label, args.duration)
            trials.append(
                {
                    "round": round_no,
                    "contender": label,
                    "requests": stats["requests"],
                    "seconds": round(stats["seconds"], 3),
                    "requests_per_s": round(stats["requests_per_s"], 1),
                    "events_per_s": round(stats["requests_per_s"] * events_per_request, 1),
                    "latency_ms": {k: round(v / 1000, 3) for k, v in stats["latency_us"].items()},
                    "connections_per_worker": stats["connections_per_worker"],
                    "cpu_us_per_request": stats["cpu_us_per_request"],
                }
            )
            print(
                f"  round {round_no} {label:9} {stats['requests_per_s']:10.1f} req/s"
                f"  {stats['requests_per_s'] * events_per_request:10.1f} events/s"
                f"  p99 {stats['latency_us']['p99'] / 1000:.1f} ms"
                f"  connections per worker {stats['connections_per_worker']}",
                file=sys.stderr,
            )
        if stages:
            syncs = sync_profile(
                servers["metronome"],
                lambda seconds: one_run("metronome", seconds),
                args.duration,
                args.workers,
            )
            print(f"  metronome's fdatasync under wrk: {syncs}", file=sys.stderr)
        for label, server in servers.items():
            if not C.alive(server):
                raise C.BenchmarkError(f"{label} died during the run:\n{server.log_tail()}")
        for label, server in servers.items():  # the breakdown runs alone
            exit_codes[label] = server.stop()
        accept = (
            accept_stages(tmp, args.stage_requests, seed)
            if stages and args.stage_requests
            else None
        )
    except C.BenchmarkError as exc:
        print(f"{name}: FAILED: {exc}", file=sys.stderr)
        for label, server in servers.items():
            state = (
                "running"
                if C.alive(server)
                else (f"exited {server.proc.returncode}" if server.proc else "not started")
            )
            print(
                f"--- {label} ({state}) log: {server.log_path}\n{server.log_tail(15)}",
                file=sys.stderr,
            )
        return 1
    finally:
        for label, server in servers.items():
            if label not in exit_codes:
                exit_codes[label] = server.stop()

    rows = stored_rows(data_dir)
    if args.keep:
        print(f"{name}: kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)

    per_s = {
        label: C.median(t[f"{unit}_per_s"] for t in trials if t["contender"] == label)
        for label in servers
    }
    paired = []
    for round_no in range(args.trials):
        by = {t["contender"]: t[f"{unit}_per_s"] for t in trials if t["round"] == round_no}
        paired.append(C.rounded(C.ratio(by["metronome"], by["bare"])))
    result_ratio = C.ratio(per_s["metronome"], per_s["bare"])
    extra: dict[str, Any] = {}
    if undurable:
        extra = {
            f"undurable_{unit}_per_s": C.rounded(per_s["undurable"], 1),
            "undurable_ratio": C.rounded(C.ratio(per_s["undurable"], per_s["bare"])),
            "metronome_to_undurable": C.rounded(C.ratio(per_s["metronome"], per_s["undurable"])),
        }
    cpu_us_per_request = {
        label: {
            role: C.median(
                t["cpu_us_per_request"].get(role, 0.0) for t in trials if t["contender"] == label
            )
            for role in ("http_workers", "shipper", "arbiter", "wrk")
        }
        for label in servers
    }
    passed = {}
    if "ratio" in goal:
        passed["ratio"] = result_ratio is not None and result_ratio >= goal["ratio"]
    if "metronome_events_per_s" in goal:
        passed["metronome_events_per_s"] = (
            per_s["metronome"] is not None and per_s["metronome"] >= goal["metronome_events_per_s"]
        )
    if accept is not None:
        bare_http = cpu_us_per_request["bare"]["http_workers"]
        bare_app = accept["bare_cpu_us_per_request"]
        extra["stages"] = {
            "unit": "CPU µs per POST /tick inside one worker (benchmarks.accept, same"
            " session, medians of 3 trials)",
            "metronome_us": accept["metronome_cpu_us_per_request"],
            "undurable_us": accept["undurable_cpu_us_per_request"],
            "bare_app_us": bare_app,
            "http_us_both_pay": C.rounded(
                None if bare_http is None or bare_app is None else bare_http - bare_app, 1
            ),
            "stages_us": accept["stages_us"],
            "fdatasyncs_per_request": accept.get("metronome_fdatasyncs_per_request"),
            "fdatasync_ms": accept.get("metronome_fdatasync_ms"),
        }
    if syncs is not None:
        extra["fdatasync_under_wrk"] = syncs
    results = {
        "benchmark": name,
        "description": description.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "parameters": {
            "path": path,
            "events_per_request": events_per_request,
            "body_bytes": len(body),
            "duration_s": args.duration,
            "trials": args.trials,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "workers": args.workers,
            "seed": seed,
            "metronome": "python -m metronome serve, embedded store (SQLite) in a temp dir,"
            f" METRONOME_SPOOL_MAX_BYTES={SPOOL_BYTES}",
            "baseline": "benchmarks/bare_app.py under gunicorn + uvicorn_worker.UvicornWorker",
            **(
                {
                    "undurable": "python -m benchmarks.undurable: Metronome with the spool's"
                    " fdatasync and the shipper off, for scale (not a goal)"
                }
                if undurable
                else {}
            ),
            "unit": f"{unit} per second (median of trials)",
        },
        "environment": C.environment(wrk=C.wrk_version(), loadavg_at_start=load_at_start),
        "warmup": warmups,
        "trials": trials,
        "summary": {
            f"metronome_{unit}_per_s": C.rounded(per_s["metronome"], 1),
            f"bare_{unit}_per_s": C.rounded(per_s["bare"], 1),
            "ratio": C.rounded(result_ratio),
            "paired_ratios": paired,
            **extra,
            "cpu_us_per_request": cpu_us_per_request,
            "goal": goal,
            "passed": passed,
            "acknowledged": acked,
            "stored_rows_embedded": rows,
            "server_exit_codes": exit_codes,
        },
    }
    out = C.write_results(name, results, args.output)
    verdict = "ok" if all(passed.values()) else "BELOW GOAL"
    goals = [f"ratio >= {goal['ratio']}"] if "ratio" in goal else []
    if "metronome_events_per_s" in goal:
        goals.append(f"metronome >= {goal['metronome_events_per_s']:,} events/s")
    scale = (
        f"; undurable {per_s['undurable']:,.0f} {unit}/s, ratio {extra['undurable_ratio']:.2f}"
        if undurable
        else ""
    )
    print(
        f"{name}: metronome {per_s['metronome']:,.0f} {unit}/s vs bare {per_s['bare']:,.0f}"
        f" {unit}/s, ratio {result_ratio:.2f} (goal: {', '.join(goals)}): {verdict}{scale}"
        f" -> {C.display(out)}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_throughput(
        name=NAME,
        description=__doc__,
        path="/tick",
        body=orjson.dumps(C.TICK),
        events_per_request=1,
        expect='"id"',
        unit="requests",
        goal={"ratio": GOAL_RATIO},
        default_connections=32,
        undurable=True,
        stages=True,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
