"""Shipping into Elasticsearch: Metronome's shipper versus ``elasticsearch.helpers.streaming_bulk``.

Both index the same N realistic ticks (default 100,000; ``ts`` spread over the last three
days, so several daily indices) into a fresh index prefix whose templates were installed
with ``metronome templates install``, and both are checked with ``_refresh`` + ``_count``.

* baseline: the documents are built in this process with ``build_tick`` and indexed with
  ``streaming_bulk`` (sync client, chunk_size 500, ``op_type`` create, the event id as
  ``_id``, the daily index from ``metronome.store.elasticsearch.index_name``); timed from
  the first to the last chunk.
* metronome: ``metronome serve --no-shipper`` is filled with the same ticks through
  ``POST /ticks`` (500 per request) and stopped; then ``metronome worker --drain`` is timed
  as a whole command (process start-up included) until it exits with the spool drained.

Elasticsearch: METRONOME_TEST_ELASTICSEARCH_URL if set, else a throwaway server started
with tests/support/es_server.py. After a warm-up round of each (``--warmup-events``), the
measured trials alternate in shuffled rounds.

    python -m benchmarks.ship [--events 100000] [--trials 3]

Goal: the shipper's events/s >= 0.8 x streaming_bulk's.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import subprocess
import sys
import time
from typing import Any

import httpx

from benchmarks import _common as C

NAME = "ship"
GOAL_RATIO = 0.8
DAY_MS = 24 * 3600 * 1000


def preflight() -> str | None:
    """What of the shipper's interface is missing, or None."""
    missing = []
    ok, text = C.cli_has("worker")
    if not ok:
        missing.append(f"`metronome worker` does not exist ({text.splitlines()[-1]})")
    elif not C.cli_option("worker", "--drain"):
        missing.append("`metronome worker` has no --drain option")
    if not C.cli_option("serve", "--no-shipper"):
        missing.append("`metronome serve` has no --no-shipper option")
    if not missing:
        return None
    return (
        "the shipper interface this benchmark drives is missing: "
        + "; ".join(missing)
        + ". It needs `metronome serve --no-shipper` (spool only) and `metronome worker"
        " --drain` (ship the spool in METRONOME_DATA_DIR, exit when drained). Run with"
        " --baseline-only to measure streaming_bulk alone."
    )


def make_ticks(n: int, seed: int) -> list[dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    span = 3 * DAY_MS
    ts = [now_ms - 60_000 - (i * span) // max(n, 1) for i in range(n)]
    return C.realistic_ticks(n, seed, ts_ms=ts)


def build_documents(ticks: list[dict[str, Any]]) -> list[Any]:
    from metronome.events.tick import Limits, RequestInfo, build_tick

    info = RequestInfo(
        received_ms=int(time.time() * 1000), client_ip="127.0.0.1", user_agent=C.BROWSER_UA
    )
    limits = Limits()
    return [build_tick(t, info, limits) for t in ticks]


def run_baseline(es: C.Elasticsearch, docs: list[Any], chunk_size: int) -> dict[str, Any]:
    from elasticsearch import Elasticsearch
    from elasticsearch.helpers import streaming_bulk

    from metronome.store.elasticsearch import index_name

    prefix = f"bench-ship-b-{secrets.token_hex(3)}"
    C.install_templates(es.url, prefix)
    client = Elasticsearch(es.url, request_timeout=120)
    actions = (
        {
            "_op_type": "create",
            "_index": index_name(prefix, d.dataset, d.timestamp_ms),
            "_id": d.id,
            "_source": d.source,
        }
        for d in docs
    )
    indexed = 0
    try:
        started = time.perf_counter()
        for ok, _item in streaming_bulk(
            client, actions, chunk_size=chunk_size, raise_on_error=True, max_retries=3
        ):
            indexed += ok
        seconds = time.perf_counter() - started
    finally:
        client.close()
    count = es.refresh_and_count(f"{prefix}-ticks-*")
    if indexed != len(docs) or count != len(docs):
        raise C.BenchmarkError(
            f"baseline: {indexed} indexed, {count} counted in {prefix}-*; expected {len(docs)}"
        )
    return {
        "prefix": prefix,
        "events": len(docs),
        "seconds": seconds,
        "events_per_s": len(docs) / seconds,
        "count_verified": count,
    }


async def _post_batches(url: str, ticks: list[dict[str, Any]], batch: int, concurrency: int) -> int:
    import orjson

    bodies = [orjson.dumps(ticks[i : i + batch]) for i in range(0, len(ticks), batch)]
    sizes = [len(ticks[i : i + batch]) for i in range(0, len(ticks), batch)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    accepted = 0
    headers = {"Content-Type": "application/json", "User-Agent": C.BROWSER_UA}

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            i = queue.get_nowait()
            resp = await client.post(url + "/ticks", content=bodies[i], headers=headers)
            if resp.status_code != 202:
                raise C.BenchmarkError(
                    f"POST /ticks answered {resp.status_code}: {resp.text[:300]}"
                )
            got = resp.json()
            if got.get("accepted") != sizes[i] or got.get("rejected"):
                raise C.BenchmarkError(
                    f"POST /ticks accepted {got.get('accepted')} of"
                    f" {sizes[i]}: {str(got.get('rejected'))[:300]}"
                )
            accepted += sizes[i]

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
    return accepted


def run_metronome(
    es: C.Elasticsearch,
    ticks: list[dict[str, Any]],
    *,
    batch: int,
    concurrency: int,
    workers: int,
    log_dir: Any,
) -> dict[str, Any]:
    prefix = f"bench-ship-m-{secrets.token_hex(3)}"
    data_dir = log_dir / f"data-{prefix}"  # its server log beside it
    data_dir.mkdir()
    env = {"METRONOME_ELASTICSEARCH_URL": es.url, "METRONOME_INDEX_PREFIX": prefix}
    try:
        C.install_templates(es.url, prefix)
        server = C.metronome_server(data_dir, workers=workers, args=["--no-shipper"], env=env)
        C.start(server)
        try:
            started = time.perf_counter()
            accepted = asyncio.run(_post_batches(server.url, ticks, batch, concurrency))
            fill_seconds = time.perf_counter() - started
        finally:
            code = server.stop()
        if code != 0:
            raise C.BenchmarkError(
                f"metronome serve --no-shipper exited {code}:\n" + server.log_tail()
            )
        early = es.refresh_and_count(f"{prefix}-ticks-*")
        if early:
            raise C.BenchmarkError(
                f"{early} events reached Elasticsearch before the shipper"
                " ran: serve --no-shipper shipped (or wrote directly)"
            )
        worker_env = C.child_env(
            **env, METRONOME_DATA_DIR=str(data_dir), METRONOME_LOG_LEVEL="warning"
        )
        worker_env.pop("METRONOME_SHIPPER_PARENT", None)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "metronome", "worker", "--drain"],
            cwd=C.REPO,
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        seconds = time.perf_counter() - started
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise C.BenchmarkError(
                f"metronome worker --drain exited {proc.returncode}:\n"
                + "\n".join(output.splitlines()[-20:])
            )
        count = es.refresh_and_count(f"{prefix}-ticks-*")
        if accepted != len(ticks) or count != len(ticks):
            raise C.BenchmarkError(
                f"metronome: {accepted} accepted, {count} counted in"
                f" {prefix}-* after the drain; expected {len(ticks)}."
                f" worker said: {output[-500:]}"
            )
        shipped = re.search(r"shipped (\d+) events", output)
        return {
            "prefix": prefix,
            "events": len(ticks),
            "seconds": seconds,
            "events_per_s": len(ticks) / seconds,
            "count_verified": count,
            "fill_seconds": fill_seconds,
            "fill_events_per_s": len(ticks) / fill_seconds,
            "worker_reported_shipped": int(shipped.group(1)) if shipped else None,
            "worker_said": output.splitlines()[-1] if output else None,
        }
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def cli_startup_s() -> float:
    """Median wall time of ``python -m metronome --version``: a floor under the shipper's."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        C.metronome_cli("--version")
        times.append(time.perf_counter() - started)
    return float(C.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=3, warmup=None)
    parser.add_argument(
        "--events", type=int, default=100_000, help="ticks per trial [default: 100000]"
    )
    parser.add_argument(
        "--warmup-events",
        type=int,
        default=20_000,
        help="ticks in the unrecorded warm-up round [default: 20000]",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=500, help="streaming_bulk chunk_size [default: 500]"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=500,
        help="ticks per POST /ticks while filling the spool [default: 500]",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="concurrent POST /ticks while filling [default: 4]",
    )
    parser.add_argument("--workers", type=int, default=2, help="server workers [default: 2]")
    parser.add_argument("--es-heap", default="1g", help="heap of the throwaway Elasticsearch")
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help="measure streaming_bulk only (when the shipper is missing)",
    )
    parser.add_argument(
        "--keep-indices", action="store_true", help="leave the benchmark's indices in Elasticsearch"
    )
    args = parser.parse_args(argv)
    if args.duration is not None or args.warmup is not None:
        print(
            f"{NAME}: --duration/--warmup do not apply (a trial is --events ticks;"
            " the warm-up is --warmup-events)",
            file=sys.stderr,
        )
    seed = C.new_seed(args.seed)
    C.pin_git()

    contenders = ["baseline"] if args.baseline_only else ["metronome", "baseline"]
    if not args.baseline_only:
        problem = preflight()
        if problem:
            print(f"{NAME}: FAILED: {problem}", file=sys.stderr)
            return 2

    load_at_start = C.loadavg()
    started_at = time.time()
    print(f"{NAME}: building {args.events:,} documents...", file=sys.stderr)
    ticks = make_ticks(args.events, seed)
    build_started = time.perf_counter()
    docs = build_documents(ticks)
    build_seconds = time.perf_counter() - build_started
    log_dir = C.temp_dir("metronome-bench-ship-")
    trials: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}

    def one(label: str, n: int) -> dict[str, Any]:
        if label == "baseline":
            result = run_baseline(es, docs[:n], args.chunk_size)
        else:
            result = run_metronome(
                es,
                ticks[:n],
                batch=args.batch,
                concurrency=args.concurrency,
                workers=args.workers,
                log_dir=log_dir,
            )
        if not args.keep_indices:
            es.delete(f"{result['prefix']}-*")
        return result

    try:
        with C.Elasticsearch(args.es_heap) as es:
            es_info = es.info()
            cli_start = cli_startup_s()
            for _, label in C.trial_order(contenders, 1, seed + 1):
                r = one(label, min(args.warmup_events, args.events))
                warmups[label] = {"events_per_s": round(r["events_per_s"], 1)}
            for round_no, label in C.trial_order(contenders, args.trials, seed):
                r = one(label, args.events)
                row = {
                    "round": round_no,
                    "contender": label,
                    **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()},
                }
                trials.append(row)
                extra = (
                    f"  (fill {r['fill_events_per_s']:,.0f} events/s)"
                    if "fill_events_per_s" in r
                    else ""
                )
                print(
                    f"  round {round_no} {label:9} {r['events_per_s']:10,.0f} events/s"
                    f" in {r['seconds']:.2f} s{extra}",
                    file=sys.stderr,
                )
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        print(f"{NAME}: server logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)

    per_s = {
        label: C.median(t["events_per_s"] for t in trials if t["contender"] == label)
        for label in ("metronome", "baseline")
    }
    result_ratio = C.ratio(per_s["metronome"], per_s["baseline"])
    paired = []
    for round_no in range(args.trials):
        by = {t["contender"]: t["events_per_s"] for t in trials if t["round"] == round_no}
        paired.append(C.rounded(C.ratio(by.get("metronome"), by.get("baseline"))))
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "complete": not args.baseline_only,
        "parameters": {
            "events": args.events,
            "warmup_events": args.warmup_events,
            "trials": args.trials,
            "chunk_size": args.chunk_size,
            "post_batch": args.batch,
            "post_concurrency": args.concurrency,
            "workers": args.workers,
            "seed": seed,
            "baseline": "elasticsearch.helpers.streaming_bulk, sync client, op_type create",
            "metronome": "metronome serve --no-shipper filled via POST /ticks, then"
            " `metronome worker --drain` timed as a whole command",
            "unit": "events per second (median of trials)",
        },
        "environment": C.environment(elasticsearch_server=es_info, loadavg_at_start=load_at_start),
        "build_documents_s": round(build_seconds, 3),
        "cli_startup_s": round(cli_start, 3),
        "warmup": warmups,
        "trials": trials,
        "summary": {
            "metronome_events_per_s": C.rounded(per_s["metronome"], 1),
            "baseline_events_per_s": C.rounded(per_s["baseline"], 1),
            "ratio": C.rounded(result_ratio),
            "paired_ratios": paired,
            "goal": {"ratio": GOAL_RATIO},
            "passed": {"ratio": None if result_ratio is None else result_ratio >= GOAL_RATIO},
        },
    }
    out = C.write_results(NAME, results, args.output)
    if result_ratio is None:
        print(
            f"{NAME}: baseline streaming_bulk {per_s['baseline']:,.0f} events/s; shipper not"
            f" measured (--baseline-only) -> {C.display(out)}"
        )
    else:
        verdict = "ok" if result_ratio >= GOAL_RATIO else "BELOW GOAL"
        print(
            f"{NAME}: shipper {per_s['metronome']:,.0f} events/s vs streaming_bulk"
            f" {per_s['baseline']:,.0f} events/s, ratio {result_ratio:.2f} (goal >="
            f" {GOAL_RATIO}): {verdict} -> {C.display(out)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
