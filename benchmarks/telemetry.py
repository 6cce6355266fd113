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

    python -m benchmarks.telemetry [--duration 10] [--trials 3] [--rate 1667]

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
    args = parser.parse_args(argv)
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
    results = {
        "name": NAME,
        "description": __doc__.splitlines()[0],
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
        },
        "environment": C.environment(
            loadavg_at_start=load_at_start,
            wrk=C.wrk_version(),
            started_at=started_at,
            finished_at=time.time(),
        ),
        "warmup": warmups,
        "trials": trials,
        "summary": summary,
    }
    path = C.write_results(NAME, results, args.output)
    print(
        f"telemetry: {paced_rate} of {args.rate:.0f} req/s offered, p99 {paced_p99} ms"
        f" (single tick: {tick_paced_p99} ms); at full speed {max_rate} req/s"
        f" ({summary['telemetry_max_points_per_s']} points/s) vs {tick_max} ticks/s"
        f" -> {C.display(path)}"
    )
    if code != 0:
        raise C.BenchmarkError(f"metronome serve exited with {code}:\n{server.log_tail()}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except C.BenchmarkError as exc:
        print(f"error: {exc}")
        raise SystemExit(1) from None
