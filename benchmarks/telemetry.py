"""Telemetry intake: a fleet's binoculars reports against single ticks, on the same server.

The fleet is 100 apps x 1,000 instances, each reporting 5 metrics (``POST
/apps/<app>/v1/metrics``, one instance per request, apps and instances in turn) every
minute: about 1,667 requests/s (8,333 points/s) offered. One ``metronome serve`` (2
workers, the embedded store, the shipper on, the 100 apps declared in its configuration
file, the per-address telemetry limit off because one load generator stands for 100,000
addresses; the per-instance limit stays on) takes both kinds of request; wrk sends them
over 32 keep-alive connections, in shuffled rounds:

- ``telemetry_paced``, ``tick_paced``: the fleet's rate (each connection pauses between
  requests, calibrated in the warm-up so that the rate achieved is the one offered);
  latency percentiles at that load, and the rate achieved.
- ``telemetry_max``, ``tick_max``: as fast as the server answers (no pause): the
  sustained accept rate.

The baseline is single-tick ``POST /tick`` (one realistic tick per request) in the same
run. Every answer must be 200 ``{"requestIntervalInMinutes":1}`` (no metric refused) or,
for ticks, 202 with an id; anything else fails the run.

Then the rollup catch-up (``--part catchup``): 30 days of 10,000 instances reporting
``storage_capacity`` hourly (7,200,000 points, written straight into the embedded store
with the server's own point documents), an app rolling it up every day (``sum,max`` per
instance), and the fleet question "instances, points and the largest capacity per day over
the 30 days" asked through ``POST /query``: first from the raw points (the aggregation the
rollup replaces), then ``metronome apps roll`` catches up on all 30 days at once (timed as a
whole command), then the same question again, now answered from the rollup; both answers
must be equal.

    python -m benchmarks.telemetry [--duration 10] [--trials 3] [--rate 1667]
    python -m benchmarks.telemetry --part catchup [--instances 10000] [--days 30]

Goals: at the fleet's rate, the reports are all accepted (>= 95% of the offered rate
achieved) with p99 <= 2x the single tick's p99 at the same rate; at full speed, report
requests/s >= 0.5x single ticks/s (a report carries 5 points).
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C

NAME = "telemetry"
APPS = 100
INSTANCES = 1000
METRICS_PER_REPORT = 5
FLEET_RATE = APPS * INSTANCES / 60.0
TELEMETRY_ANSWER = '{"requestIntervalInMinutes":1}'
SCRIPT = C.REPO / "benchmarks" / "telemetry.lua"
GOALS = {"paced_rate_achieved": 0.95, "paced_p99_ratio": 2.0, "max_ratio": 0.5}


def config_file(directory: Path) -> Path:
    """The 100 apps, declared in the TOML configuration file (interval 1 minute)."""
    path = directory / "metronome.toml"
    path.write_text(
        "".join(f'[[apps]]\nid = "app-{n:03d}"\ninterval_min = 1\n\n' for n in range(APPS))
    )
    return path


def stored_points(data_dir: Path) -> int | None:
    """Telemetry points in the embedded store (informational: the shipper may lag)."""
    path = data_dir / "metronome.sqlite3"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return int(
                db.execute("SELECT count(*) FROM events WHERE dataset = 'metrics'").fetchone()[0]
            )
    except sqlite3.Error:
        return None


ROLLUP = "storage_capacity every 1d sum,max"
CATCHUP_APP = "fleet"


def _day(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))


def catchup_query(start_ms: int, end_ms: int) -> dict[str, Any]:
    return {
        "source": "metrics",
        "range": {"from": _day(start_ms), "to": _day(end_ms - 1)},  # whole days, UTC
        "metrics": ["events", "instances", {"max": "fields.value"}],
        "dimensions": ["time:day"],
        "filters": [["is", "app", [CATCHUP_APP]], ["is", "metric.name", ["storage_capacity"]]],
        "limit": 1000,
    }


def load_points(data_dir: Path, instances: int, days: int, end_ms: int) -> dict[str, Any]:
    """Hourly ``storage_capacity`` points of ``instances`` over ``days`` days before
    ``end_ms``, written into the embedded store the way the shipper writes them."""
    import asyncio
    import os

    from metronome.config import Settings
    from metronome.events.point import Point, point_document
    from metronome.store import open_store

    settings = Settings.from_env(
        dict(os.environ) | {"METRONOME_DATA_DIR": str(data_dir), "METRONOME_ELASTICSEARCH_URL": ""}
    )
    hours = days * 24
    start_ms = end_ms - hours * 3_600_000

    async def write() -> int:
        written = 0
        async with open_store(settings) as store:
            await store.ensure_schema()
            batch = []
            for hour in range(hours):
                at = start_ms + hour * 3_600_000
                for n in range(instances):
                    point = Point(
                        app=CATCHUP_APP,
                        name="storage_capacity",
                        timestamp_ms=at + (n * 997) % 3_600_000,
                        tags={"instance_uuid": f"instance-{n:06d}", "app_version": "v1.5.0"},
                        fields={"value": float(10**12 + n * 1000 + hour)},
                    )
                    batch.append(point_document(point))
                    if len(batch) == 10_000:
                        outcomes = await store.write(batch)
                        written += len(outcomes)
                        batch = []
            if batch:
                written += len(await store.write(batch))
        return written

    started = time.perf_counter()
    written = asyncio.run(write())
    return {"points": written, "seconds": round(time.perf_counter() - started, 1)}


def run_catchup(args: Any, seed: int) -> dict[str, Any]:
    """The rollup catch-up part (see the module docstring)."""
    import httpx

    work = C.temp_dir("metronome-bench-rollup-")
    data_dir = work / "data"
    data_dir.mkdir()
    env = C.child_env(
        METRONOME_DATA_DIR=str(data_dir),
        METRONOME_ELASTICSEARCH_URL="",
        METRONOME_LOG_LEVEL="warning",
        METRONOME_SITES_CACHE_S="1",
    )
    hour_ms = 3_600_000
    end_ms = (int(time.time() * 1000) // (24 * hour_ms)) * 24 * hour_ms  # 00:00 UTC today
    start_ms = end_ms - args.days * 24 * hour_ms
    created = C.metronome_cli("apps", "create", CATCHUP_APP, "--rollup", ROLLUP, env=env)
    if created.returncode != 0:
        raise C.BenchmarkError(f"metronome apps create failed: {created.stderr}")
    loaded = load_points(data_dir, args.instances, args.days, end_ms)
    expected = args.instances * args.days * 24
    if loaded["points"] != expected:
        raise C.BenchmarkError(f"wrote {loaded['points']} points, expected {expected}")
    print(f"  loaded {expected:,} points in {loaded['seconds']} s")
    server = C.metronome_server(
        data_dir,
        workers=1,
        args=("--no-shipper",),
        env={"METRONOME_SITES_CACHE_S": "1", "METRONOME_LOG_LEVEL": "warning"},
    )
    query = catchup_query(start_ms, end_ms)

    def ask(label: str) -> tuple[list[float], Any]:
        seconds, answer = [], None
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for _ in range(args.queries):
                started = time.perf_counter()
                resp = client.post("/query", json=query)
                seconds.append(time.perf_counter() - started)
                if resp.status_code != 200:
                    raise C.BenchmarkError(
                        f"{label} /query answered {resp.status_code}: {resp.text}"
                    )
                body = resp.json()
                rows = body["results"]
                used = body["meta"].get("rollup")
                if (label == "rollup") != bool(used):
                    raise C.BenchmarkError(f"{label} query answered from rollup {used!r}")
                if answer is not None and rows != answer:
                    raise C.BenchmarkError(f"{label}: two answers to the same query differ")
                answer = rows
        return seconds, answer

    try:
        C.start(server)
        raw_s, raw_answer = ask("raw")
        started = time.perf_counter()
        rolled = C.metronome_cli(
            "apps", "roll", "--app", CATCHUP_APP, "--json", env=env, timeout=7200
        )
        catchup_s = time.perf_counter() - started
        if rolled.returncode != 0:
            raise C.BenchmarkError(f"metronome apps roll failed: {rolled.stderr}")
        roll_summary = json.loads(rolled.stdout)
        time.sleep(2.5)  # the server's apps cache (1 s) learns the rollup's watermark
        rollup_s, rollup_answer = ask("rollup")
    finally:
        code = server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if rollup_answer != raw_answer:
        raise C.BenchmarkError("the rollup's answer differs from the raw points' answer")
    days_answered = sum(1 for row in raw_answer if row["metrics"][0])
    if days_answered != args.days or raw_answer[0]["metrics"][1] != args.instances:
        raise C.BenchmarkError(f"unexpected answer: {raw_answer[:2]}")
    raw_p50, rollup_p50 = C.median(raw_s), C.median(rollup_s)
    return {
        "parameters": {
            "instances": args.instances,
            "days": args.days,
            "points": expected,
            "rollup": ROLLUP,
            "query": query,
            "queries_each": args.queries,
            "store": "embedded (SQLite)",
        },
        "load": loaded,
        "roll": {"seconds": round(catchup_s, 2), **roll_summary},
        "raw_query_s": [round(x, 4) for x in raw_s],
        "rollup_query_s": [round(x, 4) for x in rollup_s],
        "summary": {
            "catchup_s": round(catchup_s, 2),
            "catchup_points_per_s": round(expected / catchup_s, 1),
            "raw_query_p50_s": C.rounded(raw_p50, 4),
            "rollup_query_p50_s": C.rounded(rollup_p50, 4),
            "rollup_to_raw_query": C.rounded(C.ratio(rollup_p50, raw_p50)),
            "catchup_in_raw_queries": C.rounded(C.ratio(catchup_s, raw_p50), 1),
            "answers_equal": True,
            "server_exit_code": code,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=10.0, trials=3, warmup=3.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=FLEET_RATE,
        help=f"requests/s offered by the paced contenders [default: {FLEET_RATE:.0f}]",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections [32]")
    parser.add_argument("--workers", type=int, default=2, help="server workers [2]")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument(
        "--part",
        choices=("all", "intake", "catchup"),
        default="all",
        help="which part to run; the other part's results are kept from the results file",
    )
    parser.add_argument("--instances", type=int, default=10_000, help="catch-up instances")
    parser.add_argument("--days", type=int, default=30, help="catch-up days of points")
    parser.add_argument("--queries", type=int, default=5, help="catch-up queries of each kind")
    args = parser.parse_args(argv)
    if args.part == "catchup":
        C.pin_git()
        return finish(args, None, run_catchup(args, C.new_seed(args.seed)))
    seed = C.new_seed(args.seed)
    C.pin_git()
    C.require_wrk()
    load_at_start = C.loadavg()
    started_at = time.time()
    rng = random.Random(seed)

    work = C.temp_dir("metronome-bench-telemetry-")
    data_dir = work / "data"
    server = C.metronome_server(
        data_dir,
        workers=args.workers,
        env={
            "METRONOME_CONFIG": str(config_file(work)),
            "METRONOME_TELEMETRY_RATE_PER_IP": "0",
            "METRONOME_SPOOL_MAX_BYTES": str(8 << 30),
            "METRONOME_LOG_LEVEL": "warning",
        },
    )
    tick_body = json.dumps(C.TICK).encode()
    post_lua = str(C.LUA_SCRIPT)
    delays: dict[str, float] = {}

    def run(label: str, duration: float) -> dict[str, Any]:
        kind, pace = label.split("_")
        delay_ms = delays.get(kind, 0.0) if pace == "paced" else 0.0
        stats = C.run_wrk(
            server.url,
            "/tick" if kind == "tick" else "/apps/app-000/v1/metrics",
            tick_body,
            duration=duration,
            connections=args.connections,
            threads=1,
            expect='"id":' if kind == "tick" else TELEMETRY_ANSWER,
            script=SCRIPT,
            script_env={
                "WRK_POST_LUA": post_lua,
                "WRK_MODE": kind,
                "WRK_APPS": str(APPS),
                "WRK_INSTANCES": str(INSTANCES),
                "WRK_OFFSET": str(rng.randrange(APPS * INSTANCES)),
                "WRK_DELAY_MS": f"{delay_ms:.3f}",
            },
        )
        latency = stats["latency_us"]
        return {
            "label": label,
            "delay_ms": round(delay_ms, 3),
            "requests": stats["requests"],
            "seconds": round(stats["seconds"], 3),
            "requests_per_s": round(stats["requests_per_s"], 1),
            "points_per_s": round(
                stats["requests_per_s"] * (METRICS_PER_REPORT if kind == "telemetry" else 1), 1
            ),
            "latency_ms": {k: round(latency[k] / 1000, 3) for k in ("p50", "p90", "p99", "max")},
        }

    labels = ["telemetry_paced", "tick_paced", "telemetry_max", "tick_max"]
    trials: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}
    try:
        C.start(server)
        for kind in ("telemetry", "tick"):
            # calibrate the pause: C connections at the rate R leave C/R per request, of
            # which the answer itself takes part
            delays[kind] = args.connections * 1000 / args.rate
            first = run(f"{kind}_paced", args.warmup)
            answer_ms = args.connections * 1000 / first["requests_per_s"] - delays[kind]
            delays[kind] = max(0.0, delays[kind] - answer_ms)
            warmups[kind] = {"calibration": first, "delay_ms": round(delays[kind], 3)}
            warmups[f"{kind}_max"] = run(f"{kind}_max", args.warmup)
        for round_no, label in C.trial_order(labels, args.trials, seed):
            trial = run(label, args.duration)
            trial["round"] = round_no
            trials.append(trial)
            print(
                f"  round {round_no} {label}: {trial['requests_per_s']:.0f} req/s,"
                f" p99 {trial['latency_ms']['p99']:.1f} ms"
            )
        stored = stored_points(data_dir)
    finally:
        code = server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def med(label: str, *path: str) -> float | None:
        values = []
        for trial in trials:
            if trial["label"] == label:
                value: Any = trial
                for key in path:
                    value = value[key]
                values.append(value)
        return C.median(values)

    paced_rate = med("telemetry_paced", "requests_per_s")
    paced_p99 = med("telemetry_paced", "latency_ms", "p99")
    tick_paced_p99 = med("tick_paced", "latency_ms", "p99")
    max_rate = med("telemetry_max", "requests_per_s")
    tick_max = med("tick_max", "requests_per_s")
    achieved = C.ratio(paced_rate, args.rate)
    p99_ratio = C.ratio(paced_p99, tick_paced_p99)
    max_ratio = C.ratio(max_rate, tick_max)
    summary = {
        "offered_requests_per_s": round(args.rate, 1),
        "telemetry_paced_requests_per_s": paced_rate,
        "telemetry_paced_points_per_s": med("telemetry_paced", "points_per_s"),
        "telemetry_paced_p50_ms": med("telemetry_paced", "latency_ms", "p50"),
        "telemetry_paced_p99_ms": paced_p99,
        "tick_paced_requests_per_s": med("tick_paced", "requests_per_s"),
        "tick_paced_p99_ms": tick_paced_p99,
        "telemetry_max_requests_per_s": max_rate,
        "telemetry_max_points_per_s": med("telemetry_max", "points_per_s"),
        "telemetry_max_p99_ms": med("telemetry_max", "latency_ms", "p99"),
        "tick_max_requests_per_s": tick_max,
        "tick_max_p99_ms": med("tick_max", "latency_ms", "p99"),
        "paced_rate_achieved": C.rounded(achieved),
        "paced_p99_ratio": C.rounded(p99_ratio),
        "max_ratio": C.rounded(max_ratio),
        "goal": GOALS,
        "passed": {
            "paced_rate_achieved": achieved is not None
            and achieved >= GOALS["paced_rate_achieved"],
            "paced_p99_ratio": p99_ratio is not None and p99_ratio <= GOALS["paced_p99_ratio"],
            "max_ratio": max_ratio is not None and max_ratio >= GOALS["max_ratio"],
        },
        "stored_points_embedded": stored,
        "server_exit_code": code,
    }
    intake = {
        "parameters": {
            "apps": APPS,
            "instances_per_app": INSTANCES,
            "metrics_per_report": METRICS_PER_REPORT,
            "offered_requests_per_s": round(args.rate, 1),
            "duration_s": args.duration,
            "trials": args.trials,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "workers": args.workers,
            "seed": seed,
            "metronome": "python -m metronome serve, embedded store (SQLite), shipper on, 100"
            " apps in METRONOME_CONFIG, METRONOME_TELEMETRY_RATE_PER_IP=0",
            "baseline": "single-tick POST /tick on the same server, same pacing",
            "unit": "requests per second and milliseconds (median of trials)",
            "loadavg_at_start": load_at_start,
            "started_at": started_at,
        },
        "warmup": warmups,
        "trials": trials,
        "summary": summary,
    }
    print(
        f"intake: {paced_rate} of {args.rate:.0f} req/s offered, p99 {paced_p99} ms"
        f" (single tick: {tick_paced_p99} ms); at full speed {max_rate} req/s"
        f" ({summary['telemetry_max_points_per_s']} points/s) vs {tick_max} ticks/s"
    )
    if code != 0:
        raise C.BenchmarkError(f"metronome serve exited with {code}:\n{server.log_tail()}")
    catchup = run_catchup(args, seed) if args.part == "all" else None
    return finish(args, intake, catchup)


def finish(args: Any, intake: dict[str, Any] | None, catchup: dict[str, Any] | None) -> int:
    """Write the results: the parts this run measured, and the other part as the
    previous results file had it (with the commit it measured)."""
    previous: dict[str, Any] = {}
    path = args.output or C.RESULTS_DIR / f"{NAME}.json"
    if (intake is None or catchup is None) and path.exists():
        previous = json.loads(path.read_text())
    environment = C.environment(wrk=C.wrk_version(), finished_at=time.time())
    parts: dict[str, Any] = {}
    for name, measured in (("intake", intake), ("catchup", catchup)):
        if measured is not None:
            parts[name] = {**measured, "git_sha": environment["git_sha"]}
        elif name in previous:
            parts[name] = previous[name]
    summary = dict(parts.get("intake", {}).get("summary", {}))
    if "catchup" in parts:
        summary |= {f"catchup_{k}": v for k, v in parts["catchup"]["summary"].items()}
    results = {
        "name": NAME,
        "description": __doc__.splitlines()[0],
        "environment": environment,
        **parts,
        "summary": summary,
    }
    written = C.write_results(NAME, results, args.output)
    if catchup is not None:
        c = catchup["summary"]
        print(
            f"catch-up: {catchup['parameters']['points']:,} points rolled in {c['catchup_s']} s;"
            f" /query p50 {c['raw_query_p50_s']} s from raw points,"
            f" {c['rollup_query_p50_s']} s from the rollup (same answer)"
        )
    print(f"-> {C.display(written)}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except C.BenchmarkError as exc:
        print(f"error: {exc}")
        raise SystemExit(1) from None
