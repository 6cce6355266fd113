"""Memory (RSS) while a backlog grows: 1,000,000 events via ``POST /ticks``, 500 per request.

Every ``--checkpoint`` events (100,000) the load pauses and the VmRSS (and VmHWM, the peak)
of each process is read from ``/proc/<pid>/status``: the gunicorn master, each worker and,
when there is one, the shipper (``metronome worker``, a child of ``metronome serve``).
Contenders, each a fresh server started in a fresh temporary data directory:

* ``metronome``: ``metronome serve --no-shipper``, METRONOME_ELASTICSEARCH_URL unset: the
  spool only grows (nothing ships it).
* ``metronome-es-down``: ``metronome serve`` with the shipper on but
  METRONOME_ELASTICSEARCH_URL pointing at a closed port: the shipper runs and retries, the
  spool grows.
* ``bare`` (baseline): ``benchmarks/bare_app.py`` under the same gunicorn settings.

METRONOME_SPOOL_MAX_BYTES is raised (``--spool-max-bytes``) so the backlog is never refused.
With ``--drain``, after the run of ``metronome`` the spool is shipped to the embedded store
by ``metronome worker --drain`` while its RSS is sampled every 0.5 s.

Order of the contenders is shuffled; the first checkpoint (100,000 events) is the warm-up
reference: growth is measured from it to the last one.

    python -m benchmarks.memory [--events 1000000] [--checkpoint 100000] [--drain]

Goal: no RSS growth with the backlog: each Metronome process grows <= 10 MiB from the first
checkpoint to the last.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import orjson

from benchmarks import _common as C
from metronome.sites.cache import CACHE_FILE
from metronome.sites.model import Snapshot
from tests.support.es_server import free_port

NAME = "memory"
GOAL_GROWTH_MB = 10.0
CONTENDERS = ("metronome", "metronome-es-down", "bare")


def classify(master: int) -> dict[str, int]:
    """label -> pid for the server's processes: master, worker1.., shipper, other1.."""
    master_cmd = C.cmdline(master)
    labels = {"master": master}
    workers = others = 0
    for pid in C.descendants(master):
        cmd = C.cmdline(pid)
        if cmd == master_cmd:
            workers += 1
            labels[f"worker{workers}"] = pid
        elif "worker" in cmd[1:] and "metronome" in " ".join(cmd):
            labels["shipper" if "shipper" not in labels else f"shipper-{pid}"] = pid
        elif cmd:
            others += 1
            labels[f"other{others}"] = pid
    return labels


def sample(master: int) -> dict[str, Any]:
    procs = classify(master)
    rss = {label: C.proc_status_kb(pid, "VmRSS") for label, pid in procs.items()}
    hwm = {label: C.proc_status_kb(pid, "VmHWM") for label, pid in procs.items()}
    cpu = {label: C.cpu_seconds(pid) for label, pid in procs.items()}
    return {
        "pids": procs,
        "rss_kb": rss,
        "hwm_kb": hwm,
        "cpu_s": cpu,
        "total_rss_kb": sum(v for v in rss.values() if v),
    }


async def _send(
    url: str,
    bodies: list[bytes],
    requests: int,
    concurrency: int,
    expect: bytes | None,
    per_connection: int,
) -> None:
    """POST ``requests`` bodies; every answer must be 202 (and contain ``expect``).

    Each sender opens a new keep-alive connection every ``per_connection`` requests: the
    gunicorn workers race to accept connections, and a few long-lived ones can all land on
    one worker, leaving the other cold until a later checkpoint.
    """
    headers = {"Content-Type": "application/json", "User-Agent": C.BROWSER_UA}
    next_index = 0

    async def sender() -> None:
        nonlocal next_index
        while next_index < requests:
            async with httpx.AsyncClient(timeout=120) as client:
                for _ in range(per_connection):
                    if next_index >= requests:
                        break
                    i = next_index
                    next_index += 1
                    resp = await client.post(
                        url + "/ticks", content=bodies[i % len(bodies)], headers=headers
                    )
                    if resp.status_code != 202 or (expect and expect not in resp.content):
                        raise C.BenchmarkError(
                            f"POST /ticks answered {resp.status_code}: {resp.text[:300]}"
                        )

    await asyncio.gather(*(sender() for _ in range(concurrency)))


def drain(data_dir: Any, interval_s: float = 0.5) -> dict[str, Any]:
    """``metronome worker --drain`` on the embedded store, sampling its RSS."""
    env = C.child_env(METRONOME_DATA_DIR=str(data_dir), METRONOME_LOG_LEVEL="warning")
    env.pop("METRONOME_ELASTICSEARCH_URL", None)
    env.pop("METRONOME_SHIPPER_PARENT", None)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "metronome", "worker", "--drain"],
        cwd=C.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    reader.start()
    samples = []
    hwm = None
    while proc.poll() is None:
        rss = C.proc_status_kb(proc.pid, "VmRSS")
        hwm = C.proc_status_kb(proc.pid, "VmHWM") or hwm
        if rss:
            samples.append({"t_s": round(time.perf_counter() - started, 2), "rss_kb": rss})
        time.sleep(interval_s)
    reader.join(timeout=10)
    seconds = time.perf_counter() - started
    text = b"".join(output).decode(errors="replace").strip()
    if proc.returncode != 0:
        raise C.BenchmarkError(f"metronome worker --drain exited {proc.returncode}:\n{text}")
    return {
        "seconds": round(seconds, 2),
        "samples": samples,
        "max_rss_kb": max((s["rss_kb"] for s in samples), default=None),
        "hwm_kb": hwm,
        "worker_said": text.splitlines()[-1] if text else None,
    }


def run_contender(label: str, args: Any, bodies: list[bytes], log_dir: Any) -> dict[str, Any]:
    data_dir = log_dir / f"{label}-data"  # its server log beside it: {label}-data-server.log
    data_dir.mkdir()
    if label == "bare":
        server = C.bare_server(log_dir, workers=args.workers, name=label)
    else:
        env = {"METRONOME_SPOOL_MAX_BYTES": str(args.spool_max_bytes)}
        extra: list[str] = []
        if label == "metronome":
            extra = ["--no-shipper"]
        else:  # nothing listens there: Elasticsearch is down
            env["METRONOME_ELASTICSEARCH_URL"] = f"http://127.0.0.1:{free_port()}"
            # as in any deployment that has seen its store once: the sites and keys (none)
            # are known from the copy a worker saves in the data directory; a brand-new
            # data directory with the store down refuses ingest until it can read them
            (data_dir / CACHE_FILE).write_bytes(orjson.dumps(Snapshot.empty().to_dict()))
        server = C.metronome_server(data_dir, workers=args.workers, args=extra, env=env)
    checkpoints = []
    drained = None
    expect = f'"accepted":{args.batch},'.encode()  # the bare app answers {}
    try:
        C.start(server)
        assert server.proc is not None
        time.sleep(1.0)
        checkpoints.append({"events": 0, "elapsed_s": 0.0, **sample(server.proc.pid)})
        started = time.perf_counter()
        sent = 0
        while sent < args.events:
            n = min(args.checkpoint, args.events - sent)
            requests = -(-n // args.batch)
            asyncio.run(
                _send(
                    server.url,
                    bodies,
                    requests,
                    args.concurrency,
                    None if label == "bare" else expect,
                    args.per_connection,
                )
            )
            sent += requests * args.batch
            if not C.alive(server):
                raise C.BenchmarkError(f"{label} died:\n{server.log_tail()}")
            point = {
                "events": sent,
                "elapsed_s": round(time.perf_counter() - started, 2),
                **sample(server.proc.pid),
            }
            checkpoints.append(point)
            print(
                f"  {label:18} {sent:>9,} events  total RSS"
                f" {point['total_rss_kb'] / 1024:7.1f} MiB  "
                + " ".join(f"{k}={v / 1024:.0f}" for k, v in point["rss_kb"].items() if v)
                + "  cpu s "
                + " ".join(f"{k}={v:.1f}" for k, v in point["cpu_s"].items() if v is not None),
                file=sys.stderr,
            )
        seconds = time.perf_counter() - started
        spool_bytes = (
            sum(p.stat().st_size for p in (data_dir / "spool").rglob("*") if p.is_file())
            if (data_dir / "spool").exists()
            else None
        )
        code = server.stop()
        if label == "metronome" and args.drain:
            drained = drain(data_dir)
            print(
                f"  {label:18} drain: {drained['seconds']} s, shipper max RSS"
                f" {(drained['max_rss_kb'] or 0) / 1024:.1f} MiB",
                file=sys.stderr,
            )
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    first, last = checkpoints[1], checkpoints[-1]
    growth = {}
    for key, kb in last["rss_kb"].items():
        before = first["rss_kb"].get(key)
        if kb is not None and before is not None and first["pids"].get(key) == last["pids"][key]:
            growth[key] = round((kb - before) / 1024, 1)
    return {
        "contender": label,
        "events": sent,
        "seconds": round(seconds, 2),
        "events_per_s": round(sent / seconds, 1),
        "spool_bytes_at_end": spool_bytes,
        "server_exit_code": code,
        "checkpoints": checkpoints,
        "growth_mb_first_to_last_checkpoint": growth,
        "total_rss_mb_at_end": round(last["total_rss_kb"] / 1024, 1),
        "drain": drained,
    }


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=1, warmup=None)
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events per contender [default: 1000000]"
    )
    parser.add_argument(
        "--checkpoint",
        type=int,
        default=100_000,
        help="sample RSS every this many events [default: 100000]",
    )
    parser.add_argument("--batch", type=int, default=500, help="ticks per request")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="concurrent requests [default: 4]"
    )
    parser.add_argument(
        "--per-connection",
        type=int,
        default=10,
        help="requests per keep-alive connection [default: 10]",
    )
    parser.add_argument("--workers", type=int, default=2, help="server workers [default: 2]")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--spool-max-bytes",
        type=int,
        default=16 << 30,
        help="METRONOME_SPOOL_MAX_BYTES for the run [default: 16 GiB]",
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="then time `metronome worker --drain` and sample its RSS",
    )
    args = parser.parse_args(argv)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown or "bare" not in contenders:
        parser.error(
            f"--contenders: unknown {sorted(unknown)}"
            if unknown
            else "--contenders must include the baseline, bare"
        )
    if args.checkpoint % args.batch or args.checkpoint > args.events:
        parser.error("--checkpoint must be a multiple of --batch and at most --events")
    if args.drain and "metronome" not in contenders:
        parser.error("--drain needs the metronome contender")
    if any(c.startswith("metronome") for c in contenders) and not C.cli_option(
        "serve", "--no-shipper"
    ):
        print(
            f"{NAME}: FAILED: `metronome serve` has no --no-shipper option: this benchmark"
            " needs the spool",
            file=sys.stderr,
        )
        return 2
    seed = C.new_seed(args.seed)
    C.pin_git()
    load_at_start = C.loadavg()
    started_at = time.time()
    bodies = [orjson.dumps(C.realistic_ticks(args.batch, seed=s)) for s in range(10)]
    log_dir = C.temp_dir("metronome-bench-memory-")
    trials = []
    try:
        for round_no, label in C.trial_order(contenders, args.trials, seed):
            row = run_contender(label, args, bodies, log_dir)
            trials.append({"round": round_no, **row})
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}\n(server logs in {log_dir})", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)

    def med(label: str, key: str) -> float | None:
        return C.median(t[key] for t in trials if t["contender"] == label)

    summary: dict[str, Any] = {
        "goal": {"max_growth_mb_per_metronome_process": GOAL_GROWTH_MB},
        "passed": {},
    }
    for label in contenders:
        summary[label] = {
            "total_rss_mb_at_end": med(label, "total_rss_mb_at_end"),
            "max_growth_mb": max(
                (
                    g
                    for t in trials
                    if t["contender"] == label
                    for g in t["growth_mb_first_to_last_checkpoint"].values()
                ),
                default=None,
            ),
            "events_per_s": med(label, "events_per_s"),
        }
        if label != "bare":
            summary[label]["ratio_total_rss_to_bare"] = C.rounded(
                C.ratio(summary[label]["total_rss_mb_at_end"], med("bare", "total_rss_mb_at_end"))
            )
            growth = summary[label]["max_growth_mb"]
            summary["passed"][label] = growth is not None and growth <= GOAL_GROWTH_MB
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "events": args.events,
            "checkpoint": args.checkpoint,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "requests_per_connection": args.per_connection,
            "workers": args.workers,
            "trials": args.trials,
            "contenders": contenders,
            "spool_max_bytes": args.spool_max_bytes,
            "drain": args.drain,
            "seed": seed,
            "unit": "RSS (VmRSS) per process; growth from the first checkpoint to the last",
        },
        "environment": C.environment(loadavg_at_start=load_at_start),
        "trials": trials,
        "summary": summary,
    }
    out = C.write_results(NAME, results, args.output)
    parts = []
    for label in contenders:
        s = summary[label]
        part = f"{label} {s['total_rss_mb_at_end']:.0f} MiB (growth <= {s['max_growth_mb']} MiB"
        if label != "bare":
            part += f", x{s['ratio_total_rss_to_bare']:.2f} bare"
        parts.append(part + ")")
    verdict = "ok" if all(summary["passed"].values()) else "GROWS"
    print(
        f"{NAME}: after {args.events:,} events: "
        + "; ".join(parts)
        + f" (goal growth <= {GOAL_GROWTH_MB:g} MiB/process): {verdict} -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
