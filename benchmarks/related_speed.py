"""``GET /items/{id}/related`` at a year of data, through real HTTP, on both stores.

    python -m benchmarks.related_speed                 # 100 visits a day (~125,000 events)
    python -m benchmarks.related_speed --visits 400    # ~500,000 events

A year of generated traffic (:func:`benchmarks.recommend.generate`: 2,000 Zipf-popular
items, visits of 1 to 12 views, planted pairs) is loaded into the embedded store, whose
rollups (the related items' basket counts among them) are counted once, timed apart. Two
servers then answer from the same database file: the current one, and the old path as the
baseline (``METRONOME_RELATED_ROLLUPS=off``: every candidate's baskets counted from its
events). Requests for the year's typical items (the 10 of median popularity) alternate
between them in a shuffled order, and both answers must be identical. The same documents
are bulk-loaded into Elasticsearch (``METRONOME_TEST_ELASTICSEARCH_URL`` or a throwaway
node), with their slim copies in ``<prefix>-related`` (what the shipper writes beside each
bulk, :mod:`metronome.store.es_related`), and asked the same way of two servers: the
current one and the old path (``METRONOME_RELATED_ROLLUPS=off``: three searches over the
365 daily indices) as the baseline, answers compared. The year's most popular items (5)
are asked too, on both stores, old path beside new. Writes
``benchmarks/results/related_speed.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _common as C
from benchmarks.recommend import _day_text, documents, generate
from benchmarks.reports import load_elasticsearch
from metronome.config import Settings
from metronome.store.sqlite import DB_NAME, SQLiteStore

NAME = "related_speed"
GOAL_MS = 100.0


def _summary(times: list[float]) -> dict[str, Any]:
    if not times:
        return {"requests": 0}
    return {
        "requests": len(times),
        "p50_ms": C.rounded(1000 * statistics.median(times), 2),
        "p95_ms": C.rounded(1000 * (C.percentile(times, 95) or 0.0), 2),
    }


def _load_sqlite(data: Path, docs: list[Any]) -> dict[str, Any]:
    async def load() -> tuple[float, float]:
        store = SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(data)}))
        await store.open()
        await store.ensure_schema()
        store._rolled_at = float("inf")  # counted once at the end, to time it apart
        started = time.perf_counter()
        for index in range(0, len(docs), 10_000):
            await store.write(docs[index : index + 10_000])
        written = time.perf_counter()
        await store.refresh_rollups()
        rolled = time.perf_counter()
        await store.close()
        return written - started, rolled - written

    write_s, rollup_s = asyncio.run(load())
    # the related items' share of counting the rollups: the same days counted again
    from metronome.store.sqlite_related import recount_related, related_datasets

    conn = sqlite3.connect(data / DB_NAME, isolation_level=None)
    days = [
        row
        for row in conn.execute(
            "SELECT DISTINCT site_id, dataset, ts FROM rollup_items WHERE level = 1"
        )
    ]
    conn.execute("BEGIN")
    started = time.perf_counter()
    for site, dataset, day in days:
        recount_related(conn, site, dataset, day, related_datasets(conn, site))
    related_s = time.perf_counter() - started
    conn.execute("ROLLBACK")
    sizes = {
        name: int(size)
        for name, size in conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
        ).fetchall()
    }
    conn.close()
    related_bytes = sum(v for k, v in sizes.items() if k.startswith("related_"))
    return {
        "write_seconds": round(write_s, 1),
        "rollup_seconds": round(rollup_s, 1),
        "related_counts_seconds": round(related_s, 1),
        "related_counts_bytes_per_event": round(related_bytes / len(docs), 1),
        "disk_bytes_per_event": round(sum(sizes.values()) / len(docs), 1),
    }


def _load_copies(url: str, prefix: str, docs: Any) -> float:
    """The events' copies for related items, as the store writes them after each bulk."""
    from elasticsearch import Elasticsearch
    from elasticsearch.helpers import parallel_bulk

    from metronome.store.es_related import copy_of

    client = Elasticsearch(url, request_timeout=300)
    index = f"{prefix}-related"
    actions = (
        {"_op_type": "create", "_index": index, "_id": d.id, "_source": copy}
        for d in docs
        if (copy := copy_of("ticks", d.source)) is not None
    )
    started = time.perf_counter()
    for ok, item in parallel_bulk(
        client, actions, chunk_size=5000, thread_count=2, queue_size=4, raise_on_error=False
    ):
        if not ok and item.get("create", {}).get("status") != 409:
            raise C.BenchmarkError(f"bulk load of the copies failed: {item}")
    client.indices.refresh(index=index)
    client.options(request_timeout=3600).indices.forcemerge(
        index=index, max_num_segments=1, wait_for_completion=True
    )
    client.close()
    return time.perf_counter() - started


def _ask(
    clients: dict[str, httpx.Client],
    items: list[str],
    year: dict[str, str],
    repeats: int,
    seed: int,
    errors: dict[str, list[str]] | None = None,
) -> tuple[dict[str, list[float]], bool]:
    """Each item ``repeats`` times on each server, in a shuffled order; the answers of
    the servers compared. With ``errors``, a refused request is recorded there per
    server (and not timed) instead of ending the run."""
    times: dict[str, list[float]] = {name: [] for name in clients}
    answers: dict[tuple[str, str], Any] = {}

    def get(name: str, item: str) -> httpx.Response | None:
        resp = clients[name].get(f"/items/{item}/related", params=year)
        if resp.status_code == 200 or errors is None:
            resp.raise_for_status()
            return resp
        errors.setdefault(name, []).append(f"{item}: {resp.status_code} {resp.text[:300]}")
        return None

    for item in items:  # warm up: each server's first read of the file
        for name in clients:
            resp = get(name, item)
            answers[(name, item)] = resp.json() if resp is not None else None
    labels = [f"{n}\t{i}" for n in clients for i in items]
    for _, label in C.trial_order(labels, repeats, seed):
        name, item = label.split("\t")
        started = time.perf_counter()
        resp = get(name, item)
        if resp is not None:
            times[name].append(time.perf_counter() - started)
    names = list(clients)
    same = all(answers[(names[0], i)] == answers[(n, i)] for n in names for i in items)
    return times, same


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=100, help="visits a day [100]")
    parser.add_argument("--repeats", type=int, default=10, help="requests per item [10]")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (recorded)")
    parser.add_argument(
        "--es-repeats", type=int, default=3, help="requests per item on Elasticsearch [3]"
    )
    parser.add_argument(
        "--popular-repeats", type=int, default=3, help="requests per popular item [3]"
    )
    parser.add_argument("--skip-elasticsearch", action="store_true")
    parser.add_argument(
        "--es-only",
        action="store_true",
        help="Elasticsearch only; the embedded figures are kept from the results file",
    )
    parser.add_argument("--output", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    load_at_start = C.loadavg()
    stream = generate(seed, 365, args.visits, 2000, 50, 0.5)
    docs = documents(stream.visits, "ticks")
    counts = Counter(item for visit in stream.visits for item in visit.items)
    ranked = [item for item, _ in counts.most_common()]
    typical = ranked[len(ranked) // 2 - 5 : len(ranked) // 2 + 5]
    popular = ranked[:5]
    year = {"from": _day_text(0), "to": _day_text(364)}
    data: dict[str, Any] = {
        "benchmark": NAME,
        "goal": f"a typical item's related items in under {GOAL_MS:g} ms on a year of data",
        "parameters": {
            "days": 365,
            "visits_per_day": args.visits,
            "items": 2000,
            "repeats": args.repeats,
            "seed": seed,
        },
        "events": len(docs),
        "typical_items_events": [counts[i] for i in typical],
        "popular_items_events": [counts[i] for i in popular],
    }
    with tempfile.TemporaryDirectory(prefix="mt-related-speed-") as tmp:
        db = Path(tmp) / "sqlite"
        print(f"related_speed: loading {len(docs)} events", file=sys.stderr, flush=True)
        off = {"METRONOME_RELATED_ROLLUPS": "off"}
        if args.es_only:
            previous = json.loads((args.output or C.RESULTS_DIR / f"{NAME}.json").read_text())
            embedded: dict[str, Any] = {
                **previous["embedded"],
                "from_run": previous["environment"]["git_short_sha"],
            }
        else:
            embedded = _load_sqlite(db, docs)
            with (
                C.running(C.metronome_server(db, args=["--no-shipper"])) as fast,
                C.running(C.metronome_server(db, args=["--no-shipper"], env=off)) as old,
                httpx.Client(base_url=fast.url, timeout=600) as fast_http,
                httpx.Client(base_url=old.url, timeout=600) as old_http,
            ):
                both = {"counts": fast_http, "events": old_http}
                times, same = _ask(both, typical, year, args.repeats, seed)
                hot, hot_same = _ask(both, popular, year, args.popular_repeats, seed)
            embedded["popular"] = _summary(hot["counts"])
            embedded["popular_old_path"] = _summary(hot["events"])
            embedded["popular_same_answers"] = hot_same
            embedded["typical"] = _summary(times["counts"])
            embedded["typical_old_path"] = _summary(times["events"])
            embedded["same_answers"] = same
            embedded["p50_ratio_old_to_new"] = C.rounded(
                C.ratio(embedded["typical_old_path"]["p50_ms"], embedded["typical"]["p50_ms"])
            )
        data["embedded"] = embedded
        data["environment"] = C.environment(loadavg_at_start=load_at_start)
        out = C.write_results(NAME, data, args.output)  # kept if Elasticsearch fails
        print(f"related_speed: embedded {embedded}", file=sys.stderr, flush=True)
        if not args.skip_elasticsearch:
            with C.Elasticsearch() as es:
                prefix = "bench-" + secrets.token_hex(4)
                errors: dict[str, list[str]] = {}
                C.install_templates(es.url, prefix)  # creates <prefix>-related, empty
                try:
                    loaded, load_s = load_elasticsearch(es.url, prefix, docs)
                    copies_s = _load_copies(es.url, prefix, docs)
                    env = {
                        "METRONOME_ELASTICSEARCH_URL": es.url,
                        "METRONOME_INDEX_PREFIX": prefix,
                        # the old path's searches over 365 indices outlast the default 10 s
                        "METRONOME_ELASTICSEARCH_TIMEOUT_S": "300",
                    }
                    with (
                        C.running(
                            C.metronome_server(Path(tmp) / "es", args=["--no-shipper"], env=env)
                        ) as srv,
                        C.running(
                            C.metronome_server(
                                Path(tmp) / "es-old", args=["--no-shipper"], env={**env, **off}
                            )
                        ) as srv_old,
                        httpx.Client(base_url=srv.url, timeout=600) as http,
                        httpx.Client(base_url=srv_old.url, timeout=600) as http_old,
                    ):
                        both = {"copies": http, "events": http_old}
                        es_times, es_same = _ask(both, typical, year, args.es_repeats, seed)
                        es_hot, es_hot_same = _ask(both, popular, year, args.popular_repeats, seed)
                finally:
                    es.delete(f"{prefix}-*")
                search: dict[str, Any] = {
                    "load_seconds": round(load_s, 1),
                    "copies_load_seconds": round(copies_s, 1),
                    "documents": loaded,
                    "typical": _summary(es_times["copies"]),
                    "typical_old_path": _summary(es_times["events"]),
                    "same_answers": es_same,
                    "popular": _summary(es_hot["copies"]),
                    "popular_old_path": _summary(es_hot["events"]),
                    "popular_same_answers": es_hot_same,
                    "refused": {name: found[:10] for name, found in errors.items()},
                }
                for part in ("typical", "popular"):
                    if not search[part]["requests"] or not search[f"{part}_old_path"]["requests"]:
                        continue
                    search[f"{part}_p50_ratio_old_to_new"] = C.rounded(
                        C.ratio(search[f"{part}_old_path"]["p50_ms"], search[part]["p50_ms"])
                    )
                data["elasticsearch"] = search
    data["environment"] = C.environment(loadavg_at_start=load_at_start)
    out = C.write_results(NAME, data, args.output)
    print(
        f"related_speed: typical item p50 {embedded['typical']['p50_ms']} ms (old path"
        f" {embedded['typical_old_path']['p50_ms']} ms, {embedded['p50_ratio_old_to_new']}x)"
        + (
            f"; Elasticsearch p50 {data['elasticsearch']['typical']['p50_ms']} ms (old path"
            f" {data['elasticsearch']['typical_old_path']['p50_ms']} ms)"
            if "elasticsearch" in data
            else ""
        )
        + f" -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
