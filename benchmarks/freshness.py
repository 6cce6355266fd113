"""Freshness: seconds from acknowledgement to searchable, under a steady 2,000 events/s.

An asyncio + httpx load generator sends ``--batch`` ticks every ``--interval-ms`` (default
20 every 10 ms = 2,000 events/s, scheduled on absolute times so slow answers do not lower
the rate). A prober sends ``--probes-per-s`` extra ticks (default 5/s), each alone and with
a unique free parameter ``probe=<uuid>``; it records when the write was acknowledged, then
searches Elasticsearch for ``params.probe`` (a term query, never forcing a refresh) every
``--poll-ms`` (50) until the document is found.

* metronome: ``metronome serve`` on Elasticsearch (shipper on); load via ``POST /ticks``,
  probes via ``POST /tick``; acknowledged = its 202.
* baseline: the same documents (built with ``build_tick``) written straight into
  Elasticsearch: load via ``_bulk`` (create, no refresh), probes via a plain
  ``PUT <index>/_create/<id>`` (no refresh); acknowledged = Elasticsearch's 201. This is the
  store's own refresh latency (``refresh_interval`` 1s from the templates), so the ratio
  shows what Metronome adds.

Both use fresh index prefixes with templates installed; after a warm-up of each, measured
trials alternate in shuffled rounds. Any non-2xx answer, any bulk item error and any probe
not found within ``--probe-timeout`` fails the run.

    python -m benchmarks.freshness [--duration 15] [--trials 3] [--rate 2000]

Goal: Metronome's p99 < 2 s.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from benchmarks import _common as C
from tests.support.metronome_server import MetronomeServer

NAME = "freshness"
GOAL_P99_S = 2.0


@dataclass
class TrialStats:
    sent_events: int = 0
    acked_events: int = 0
    requests: int = 0
    late_batches: int = 0
    errors: list[str] = field(default_factory=list)
    ack_latency_s: list[float] = field(default_factory=list)  # probes: send -> ack
    freshness_s: list[float] = field(default_factory=list)  # probes: ack -> found
    searches: int = 0
    searches_unavailable: int = 0
    missing: int = 0


class Target:
    """Where ticks go: Metronome's HTTP API or Elasticsearch directly."""

    prefix: str
    acked_total: int = 0  # events and probes acknowledged over the whole run

    async def send_batch(self, client: httpx.AsyncClient, n: int) -> None:
        raise NotImplementedError

    async def send_probe(self, client: httpx.AsyncClient, probe: str) -> None:
        raise NotImplementedError


def _check(resp: httpx.Response, what: str) -> None:
    if not 200 <= resp.status_code < 300:
        raise C.BenchmarkError(f"{what} answered {resp.status_code}: {resp.text[:300]}")


class MetronomeTarget(Target):
    def __init__(self, url: str, prefix: str, batch: int) -> None:
        self.url = url
        self.prefix = prefix
        ticks = C.realistic_ticks(batch * 50, seed=7)
        self._bodies = [orjson.dumps(ticks[i : i + batch]) for i in range(0, len(ticks), batch)]
        self._next = 0
        self._headers = {"Content-Type": "application/json", "User-Agent": C.BROWSER_UA}

    async def send_batch(self, client: httpx.AsyncClient, n: int) -> None:
        body = self._bodies[self._next % len(self._bodies)]
        self._next += 1
        resp = await client.post(self.url + "/ticks", content=body, headers=self._headers)
        _check(resp, "POST /ticks")
        accepted = orjson.loads(resp.content).get("accepted")
        if accepted != n:
            raise C.BenchmarkError(f"POST /ticks accepted {accepted} of {n}: {resp.text[:300]}")

    async def send_probe(self, client: httpx.AsyncClient, probe: str) -> None:
        tick = {**C.TICK, "probe": probe}
        resp = await client.post(
            self.url + "/tick", content=orjson.dumps(tick), headers=self._headers
        )
        _check(resp, "POST /tick")


class DirectTarget(Target):
    """Documents built as Metronome builds them, indexed by hand: _bulk and plain _create."""

    def __init__(self, es_url: str, prefix: str, batch: int) -> None:
        from metronome.events.tick import Limits, RequestInfo, build_tick

        self.es_url = es_url
        self.prefix = prefix
        self._info = RequestInfo
        self._build = build_tick
        self._limits = Limits()
        docs = [
            build_tick(t, self._request(), self._limits)
            for t in C.realistic_ticks(batch * 50, seed=7)
        ]
        self._sources = [orjson.dumps(d.source) for d in docs]
        self._batch = batch
        self._next = 0

    def _request(self) -> Any:
        return self._info(
            received_ms=int(time.time() * 1000), client_ip="127.0.0.1", user_agent=C.BROWSER_UA
        )

    def _index(self) -> str:
        from metronome.store.elasticsearch import index_name

        return index_name(self.prefix, "ticks", int(time.time() * 1000))

    async def send_batch(self, client: httpx.AsyncClient, n: int) -> None:
        from metronome.events.document import new_event_id

        index = self._index()
        lines = []
        for _ in range(n):
            source = self._sources[self._next % len(self._sources)]
            self._next += 1
            lines.append(orjson.dumps({"create": {"_index": index, "_id": new_event_id()}}))
            lines.append(source)
        body = b"\n".join(lines) + b"\n"
        resp = await client.post(
            self.es_url + "/_bulk", content=body, headers={"Content-Type": "application/x-ndjson"}
        )
        _check(resp, "Elasticsearch _bulk")
        got = orjson.loads(resp.content)
        if got.get("errors"):
            bad = next(i for i in got["items"] if i["create"].get("error"))
            raise C.BenchmarkError(f"Elasticsearch _bulk item error: {bad}")

    async def send_probe(self, client: httpx.AsyncClient, probe: str) -> None:
        doc = self._build({**C.TICK, "probe": probe}, self._request(), self._limits)
        from metronome.store.elasticsearch import index_name

        index = index_name(self.prefix, doc.dataset, doc.timestamp_ms)
        resp = await client.put(
            f"{self.es_url}/{index}/_create/{doc.id}",
            content=orjson.dumps(doc.source),
            headers={"Content-Type": "application/json"},
        )
        _check(resp, "Elasticsearch _create")


async def _run_trial(
    target: Target,
    es_url: str,
    *,
    duration: float,
    rate: float,
    batch: int,
    probes_per_s: float,
    poll_s: float,
    probe_timeout: float,
    max_in_flight: int,
) -> TrialStats:
    stats = TrialStats()
    interval = batch / rate
    limits = httpx.Limits(max_connections=max_in_flight + 8, max_keepalive_connections=64)
    in_flight = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    search_url = f"{es_url}/{target.prefix}-ticks-*/_search"

    async def one_batch(client: httpx.AsyncClient) -> None:
        try:
            await target.send_batch(client, batch)
            stats.acked_events += batch
            target.acked_total += batch
        except (C.BenchmarkError, httpx.HTTPError) as exc:
            stats.errors.append(f"batch: {exc!r}"[:400])
        finally:
            in_flight.release()

    async def one_probe(client: httpx.AsyncClient, search: httpx.AsyncClient) -> None:
        probe = uuid.uuid4().hex
        sent = time.monotonic()
        try:
            await target.send_probe(client, probe)
        except (C.BenchmarkError, httpx.HTTPError) as exc:
            stats.errors.append(f"probe: {exc!r}"[:400])
            return
        acked = time.monotonic()
        target.acked_total += 1
        stats.ack_latency_s.append(acked - sent)
        query = {
            "query": {"term": {"params.probe": probe}},
            "size": 0,
            "track_total_hits": True,
            "terminate_after": 1,
        }
        while True:
            try:
                resp = await search.post(
                    search_url,
                    json=query,
                    params={"ignore_unavailable": "true", "allow_no_indices": "true"},
                )
                stats.searches += 1
                if resp.status_code == 503 and b"no_shard_available" in resp.content:
                    stats.searches_unavailable += 1  # a new daily index not allocated yet
                elif (
                    _check(resp, "Elasticsearch _search") is None
                    and resp.json()["hits"]["total"]["value"] > 0
                ):
                    stats.freshness_s.append(time.monotonic() - acked)
                    return
            except (C.BenchmarkError, httpx.HTTPError) as exc:
                stats.errors.append(f"search: {exc!r}"[:400])
                return
            if time.monotonic() - acked > probe_timeout:
                stats.missing += 1
                return
            await asyncio.sleep(poll_s)

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async with (
        httpx.AsyncClient(timeout=30, limits=limits) as client,
        httpx.AsyncClient(timeout=30) as search,
    ):
        start = time.monotonic()
        next_batch = start
        next_probe = start + 1 / probes_per_s / 2
        end = start + duration
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if now >= next_probe:
                spawn(one_probe(client, search))
                next_probe += 1 / probes_per_s
            if now >= next_batch:
                if now - next_batch > interval:
                    stats.late_batches += 1
                await in_flight.acquire()
                stats.sent_events += batch
                stats.requests += 1
                spawn(one_batch(client))
                next_batch += interval
            await asyncio.sleep(max(0.0, min(next_batch, next_probe) - time.monotonic()))
        if tasks:
            await asyncio.gather(*list(tasks))
    return stats


def wait_for_count(es: C.Elasticsearch, target: Target, timeout_s: float) -> int:
    """Documents under the target's prefix once every acknowledged one is there (or the
    count at the timeout): the shipper may still be catching up."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = es.refresh_and_count(f"{target.prefix}-ticks-*")
        if count >= target.acked_total or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=15, trials=3, warmup=5)
    parser.add_argument("--rate", type=float, default=2000, help="events/s [default: 2000]")
    parser.add_argument("--batch", type=int, default=20, help="ticks per request [default: 20]")
    parser.add_argument("--probes-per-s", type=float, default=5, help="[default: 5]")
    parser.add_argument("--poll-ms", type=float, default=50, help="[default: 50]")
    parser.add_argument(
        "--probe-timeout",
        type=float,
        default=30,
        help="seconds before a probe counts as lost [default: 30]",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=64, help="most load requests in flight [default: 64]"
    )
    parser.add_argument("--workers", type=int, default=2, help="server workers [default: 2]")
    parser.add_argument("--es-heap", default="1g", help="heap of the throwaway Elasticsearch")
    parser.add_argument("--keep-indices", action="store_true")
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    C.pin_git()
    load_at_start = C.loadavg()
    started_at = time.time()
    tmp = C.temp_dir("metronome-bench-freshness-")
    data_dir = tmp / "data"
    data_dir.mkdir()
    run_id = secrets.token_hex(3)
    trials: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}
    server: MetronomeServer | None = None
    code: int | None = None

    def run(target: Target, seconds: float) -> TrialStats:
        stats = asyncio.run(
            _run_trial(
                target,
                es.url,
                duration=seconds,
                rate=args.rate,
                batch=args.batch,
                probes_per_s=args.probes_per_s,
                poll_s=args.poll_ms / 1000,
                probe_timeout=args.probe_timeout,
                max_in_flight=args.max_in_flight,
            )
        )
        if stats.errors or stats.missing:
            raise C.BenchmarkError(
                f"{len(stats.errors)} errors, {stats.missing} probes never"
                f" found; first errors: {stats.errors[:3]}"
            )
        return stats

    try:
        with C.Elasticsearch(args.es_heap) as es:
            es_info = es.info()
            m_prefix, b_prefix = f"bench-fresh-m-{run_id}", f"bench-fresh-b-{run_id}"
            C.install_templates(es.url, b_prefix)
            server = C.metronome_server(
                data_dir,
                workers=args.workers,
                env={"METRONOME_ELASTICSEARCH_URL": es.url, "METRONOME_INDEX_PREFIX": m_prefix},
            )
            C.start(server)
            targets: dict[str, Target] = {
                "metronome": MetronomeTarget(server.url, m_prefix, args.batch),
                "baseline": DirectTarget(es.url, b_prefix, args.batch),
            }
            for _, label in C.trial_order(list(targets), 1, seed + 1):
                s = run(targets[label], args.warmup)
                warmups[label] = {
                    "p50_s": C.rounded(C.percentile(s.freshness_s, 50)),
                    "probes": len(s.freshness_s),
                }
            for round_no, label in C.trial_order(list(targets), args.trials, seed):
                s = run(targets[label], args.duration)
                if not C.alive(server):
                    raise C.BenchmarkError("metronome serve died:\n" + server.log_tail())
                row = {
                    "round": round_no,
                    "contender": label,
                    "events_sent": s.sent_events,
                    "events_acked": s.acked_events,
                    "events_per_s": round(s.acked_events / args.duration, 1),
                    "rate_achieved": round(s.acked_events / (args.rate * args.duration), 3),
                    "late_batches": s.late_batches,
                    "probes": len(s.freshness_s),
                    "searches": s.searches,
                    "searches_503_no_shard": s.searches_unavailable,
                    "freshness_p50_s": C.rounded(C.percentile(s.freshness_s, 50)),
                    "freshness_p99_s": C.rounded(C.percentile(s.freshness_s, 99)),
                    "freshness_max_s": C.rounded(max(s.freshness_s, default=None)),
                    "ack_p50_s": C.rounded(C.percentile(s.ack_latency_s, 50), 4),
                    "ack_p99_s": C.rounded(C.percentile(s.ack_latency_s, 99), 4),
                    "freshness_s": [round(x, 3) for x in s.freshness_s],
                }
                trials.append(row)
                print(
                    f"  round {round_no} {label:9} p50 {row['freshness_p50_s']:.3f} s"
                    f"  p99 {row['freshness_p99_s']:.3f} s  ({row['probes']} probes,"
                    f" {row['events_per_s']:,.0f} events/s acked,"
                    f" {s.late_batches} late batches)",
                    file=sys.stderr,
                )
            counts = {
                label: wait_for_count(es, t, args.probe_timeout) for label, t in targets.items()
            }
            code = server.stop()
            acked = {label: t.acked_total for label, t in targets.items()}
            if counts != acked:
                raise C.BenchmarkError(
                    f"acknowledged {acked} events, but Elasticsearch holds"
                    f" {counts} after {args.probe_timeout:g} s"
                )
            if not args.keep_indices:
                for t in targets.values():
                    es.delete(f"{t.prefix}-*")
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        if server is not None:
            server.stop()
            print(f"--- metronome log: {server.log_path}\n{server.log_tail(15)}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    pooled = {
        label: [x for t in trials if t["contender"] == label for x in t["freshness_s"]]
        for label in ("metronome", "baseline")
    }
    p50 = {k: C.percentile(v, 50) for k, v in pooled.items()}
    p99 = {k: C.percentile(v, 99) for k, v in pooled.items()}
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "rate_events_per_s": args.rate,
            "batch": args.batch,
            "interval_ms": 1000 * args.batch / args.rate,
            "probes_per_s": args.probes_per_s,
            "poll_ms": args.poll_ms,
            "duration_s": args.duration,
            "trials": args.trials,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "seed": seed,
            "metronome": "metronome serve on Elasticsearch (shipper on): POST /ticks load,"
            " POST /tick probes",
            "baseline": "direct to Elasticsearch: _bulk load, plain PUT _create probes, no refresh",
            "unit": "seconds from the write's acknowledgement to the first search that finds"
            " it (pooled over trials)",
        },
        "environment": C.environment(elasticsearch_server=es_info, loadavg_at_start=load_at_start),
        "warmup": warmups,
        "trials": trials,
        "summary": {
            "metronome_p50_s": C.rounded(p50["metronome"]),
            "metronome_p99_s": C.rounded(p99["metronome"]),
            "baseline_p50_s": C.rounded(p50["baseline"]),
            "baseline_p99_s": C.rounded(p99["baseline"]),
            "ratio_p50": C.rounded(C.ratio(p50["metronome"], p50["baseline"])),
            "ratio_p99": C.rounded(C.ratio(p99["metronome"], p99["baseline"])),
            "probes": {k: len(v) for k, v in pooled.items()},
            "rate_held": {
                k: all(t["rate_achieved"] >= 0.95 for t in trials if t["contender"] == k)
                for k in pooled
            },
            "documents_acknowledged": acked,
            "documents_in_elasticsearch": counts,
            "server_exit_code": code,
            "goal": {"metronome_p99_s_below": GOAL_P99_S},
            "passed": {
                "metronome_p99": p99["metronome"] is not None and p99["metronome"] < GOAL_P99_S
            },
        },
    }
    out = C.write_results(NAME, results, args.output)
    verdict = "ok" if results["summary"]["passed"]["metronome_p99"] else "ABOVE GOAL"
    short = [k for k, held in results["summary"]["rate_held"].items() if not held]
    if short:
        verdict += f"; WARNING: {' and '.join(short)} fell below 95% of {args.rate:g} events/s"
    print(
        f"{NAME}: metronome p50 {p50['metronome']:.3f} s p99 {p99['metronome']:.3f} s vs"
        f" direct p50 {p50['baseline']:.3f} s p99 {p99['baseline']:.3f} s, ratio p99"
        f" {results['summary']['ratio_p99']:.2f} (goal p99 < {GOAL_P99_S:g} s): {verdict}"
        f" -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
