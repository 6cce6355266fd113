"""Report latency on a year of data: ``/tock`` and a ``/query`` against the raw aggregation.

Elasticsearch: ``--docs`` ticks (default 10,000,000) over ``--days`` days (365) across
``--items`` items (100,000; a skewed popularity, as real catalogues have) are generated
reproducibly (``--seed``) and bulk-loaded straight into the daily indices, after
``metronome templates install``. Then ``metronome serve`` (2 workers) answers, in
shuffled alternation with the baseline, ``--requests`` of each:

* ``tock``: ``GET /tock/{item}`` over the whole year, daily buckets, for random items;
  baseline: the very searches Metronome compiles for it (the item report is three
  ``/query`` requests: ``metronome.store.es_query.compile_groups`` for views per day,
  ``compile_top`` for downloads and referrers) sent in one ``_msearch`` with the
  official client.
* ``top_items_month``: ``POST /query`` for the 10 items with most events in one month
  (``dimensions: [item]``, ordered by events); baseline: the same ``terms`` aggregation
  (``metronome.store.es_query.compile_top``) sent with the client.

Latency is wall time per request (sequential, keep-alive client); the goal is p50 and
p95 of Metronome at most 1.2 x the raw aggregation's. The embedded store is measured the
same way with ``--sqlite-docs`` (1,000,000) ticks written through the store, p50 and p95
(no baseline: the embedded store has no other client).

    python -m benchmarks.reports [--docs 10000000] [--sqlite-docs 1000000] [--requests 40]
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from benchmarks import _common as C

NAME = "reports"
GOAL_RATIO = 1.2
_EVENTS = ["view"] * 8 + ["download"] * 2
_FORMATS = ["csv", "kml", "shp", "geojson", "xlsx"]
_REFERRERS = [
    None,
    "https://www.google.com/search",
    "https://www.arcgis.com/home",
    "https://news.example.com/a/1",
    "https://data.gov/list",
]
# what a tick's enrichment adds, with a realistic skew: the site's hosts, browsers, systems,
# devices and 40 countries (reports by day and one of them read the embedded store's
# rollup_fields)
_HOSTS = ["data.example.org"] * 14 + ["www.example.org"] * 5 + ["maps.example.org"]
_AGENTS = [
    ("Chrome", "Windows", "Other"),
    ("Chrome", "Android", "Generic Smartphone"),
    ("Firefox", "Linux", "Other"),
    ("Safari", "iOS", "iPhone"),
    ("Safari", "Mac OS X", "Mac"),
    ("Edge", "Windows", "Other"),
]
_COUNTRIES = [f"{a}{b}" for a in "ABCDEFGH" for b in "ABCDE"]


def generate(
    count: int,
    items: int,
    days: int,
    seed: int,
    end: datetime,
    first: int = 0,
    stop: int | None = None,
) -> Any:
    """Documents (metronome.events.document.Document) in time order, evenly over the days,
    deterministic for a seed. ``first``/``stop``: only the documents numbered so, from a
    random sequence of their own (so parts are made in parallel, each the same each
    time); ``first=0`` gives the whole run's own sequence."""
    from metronome.events.document import Document, format_timestamp

    rng = random.Random(seed if first == 0 else f"{seed}:{first}")
    start_ms = int((end - timedelta(days=days)).timestamp() * 1000)
    per_day = count / days  # in time order, as they would arrive: bulks hit one index
    for n in range(first, count if stop is None else stop):
        ts = start_ms + int((n + rng.random()) / per_day * 86_400_000)
        item = int(items * rng.random() ** 3)  # a few popular items, a long tail
        action = rng.choice(_EVENTS)
        event_id = f"{ts & 0xFFFFFFFFFFFF:012x}{seed & 0xFFFF:04x}{n:016x}"
        source: dict[str, Any] = {
            "@timestamp": format_timestamp(ts),
            "@version": "1",
            "event": {"id": event_id, "action": action, "dataset": "metronome.ticks"},
            "item": {"id": f"dataset-{item}"},
            "bot": False,
            "visitor": {"id": f"{rng.randrange(1 << 40):010x}"},
            "params": {},
        }
        if action == "download":
            source["item"]["format"] = rng.choice(_FORMATS)
        referrer = rng.choice(_REFERRERS)
        name, os_name, device = rng.choice(_AGENTS)
        source["url"] = {"domain": rng.choice(_HOSTS), "path": f"/items/dataset-{item}"}
        source["user_agent"] = {"name": name, "os": {"name": os_name}, "device": {"name": device}}
        country = _COUNTRIES[int(len(_COUNTRIES) * rng.random() ** 2)]
        source["client"] = {"geo": {"country_iso_code": country}}
        if referrer:
            host = referrer.split("/")[2].removeprefix("www.")
            path = "/".join(referrer.split("/")[3:])
            source["referrer"] = {"domain": host, "page": f"{host}/{path}".rstrip("/")}
        yield Document(event_id, ts, "ticks", source)


def load_elasticsearch(url: str, prefix: str, docs: Any) -> tuple[int, float]:
    from elasticsearch import Elasticsearch
    from elasticsearch.helpers import parallel_bulk

    from metronome.store.elasticsearch import index_name

    client = Elasticsearch(url, request_timeout=300)
    actions = (
        {
            "_op_type": "create",
            "_index": index_name(prefix, "ticks", d.timestamp_ms),
            "_id": d.id,
            "_source": d.source,
        }
        for d in docs
    )
    started = time.perf_counter()
    count = 0
    for ok, item in parallel_bulk(
        client, actions, chunk_size=5000, thread_count=2, queue_size=4, raise_on_error=False
    ):
        if not ok and item.get("create", {}).get("status") != 409:
            raise C.BenchmarkError(f"bulk load failed: {item}")
        count += 1
    client.indices.refresh(index=f"{prefix}-ticks-*")
    client.options(request_timeout=3600).indices.forcemerge(
        index=f"{prefix}-ticks-*", max_num_segments=1, wait_for_completion=True
    )
    client.close()
    return count, time.perf_counter() - started


def month_range(end: datetime) -> dict[str, str]:
    first = (end.replace(day=1) - timedelta(days=1)).replace(day=1)  # last whole month
    last = end.replace(day=1) - timedelta(days=1)
    return {"from": first.strftime("%Y-%m-%d"), "to": last.strftime("%Y-%m-%d")}


def top_items_query(end: datetime) -> dict[str, Any]:
    return {
        "source": "ticks",
        "range": month_range(end),
        "metrics": ["events"],
        "dimensions": ["item"],
        "limit": 10,
    }


def summarise(samples: list[float]) -> dict[str, Any]:
    return {
        "requests": len(samples),
        "p50_ms": C.rounded(C.percentile(samples, 50) * 1000),
        "p95_ms": C.rounded(C.percentile(samples, 95) * 1000),
    }


def bench_elasticsearch(args: Any, end: datetime, tmp: Any) -> dict[str, Any]:
    from elasticsearch import Elasticsearch

    from metronome.events.fields import DEFAULT_SITE
    from metronome.reports.engine import DEFAULT_MAX_GROUPS
    from metronome.reports.query import for_site, parse_query
    from metronome.reports.tock import parse_tock_query, tock_queries
    from metronome.store.es_query import compile_groups, compile_top, read_top

    prefix = "bench-" + secrets.token_hex(4)
    with C.Elasticsearch(heap=args.heap) as es:
        C.install_templates(es.url, prefix)
        loaded, seconds = load_elasticsearch(
            es.url, prefix, generate(args.docs, args.items, args.days, args.seed, end)
        )
        stored = es.refresh_and_count(f"{prefix}-ticks-*")
        if stored != args.docs:
            raise C.BenchmarkError(f"stored {stored} of {args.docs} documents")
        client = Elasticsearch(es.url, request_timeout=300)
        index = f"{prefix}-ticks-*"
        rng = random.Random(args.seed + 1)
        year = {
            "from": (end - timedelta(days=args.days)).strftime("%Y-%m-%d"),
            "to": end.strftime("%Y-%m-%d"),
        }
        query_body = top_items_query(end)
        samples: dict[str, list[float]] = {
            k: [] for k in ("tock_metronome", "tock_raw", "query_metronome", "query_raw")
        }
        env = {"METRONOME_ELASTICSEARCH_URL": es.url, "METRONOME_INDEX_PREFIX": prefix}
        with (
            C.running(C.metronome_server(tmp / "data", args=["--no-shipper"], env=env)) as srv,
            httpx.Client(base_url=srv.url, timeout=600) as http,
        ):

            def tock_metronome(item: str) -> None:
                resp = http.get(f"/tock/{item}", params=year)
                resp.raise_for_status()

            def tock_raw(item: str) -> None:
                searches: list[dict[str, Any]] = []
                for part, body in tock_queries(parse_tock_query(item, year)).items():
                    group = for_site(parse_query(body), DEFAULT_SITE).group
                    searches.append({"index": index, "ignore_unavailable": True})
                    if part == "views":
                        searches.append(compile_groups(group, None, DEFAULT_MAX_GROUPS + 1))
                    else:
                        searches.append(compile_top(group, 0, True, body["limit"]))
                client.msearch(searches=searches)

            def query_metronome(_: str) -> None:
                resp = http.post("/query", json=query_body)
                resp.raise_for_status()
                assert len(resp.json()["results"]) == 10

            def query_raw(_: str) -> None:
                # what /query runs: the request, restricted to the caller's (default) site,
                # ranked in one terms aggregation (10 rows and one to know there are more)
                group = for_site(parse_query(query_body), DEFAULT_SITE).group
                resp = client.search(
                    index=index,
                    body=compile_top(group, 0, True, 11),
                    ignore_unavailable=True,
                    allow_no_indices=True,
                )
                assert len(read_top(group, resp["aggregations"])) == 11

            contenders = {
                "tock_metronome": tock_metronome,
                "tock_raw": tock_raw,
                "query_metronome": query_metronome,
                "query_raw": query_raw,
            }
            for run in contenders.values():  # warm caches for everyone alike
                for _ in range(3):
                    run(f"dataset-{rng.randrange(50)}")
            for _, name in C.trial_order(list(contenders), args.requests, args.seed):
                item = f"dataset-{int(args.items * rng.random() ** 3)}"
                started = time.perf_counter()
                contenders[name](item)
                samples[name].append(time.perf_counter() - started)
        client.close()
        es.delete(f"{prefix}-*")
        info = es.info()
    result: dict[str, Any] = {
        "elasticsearch": info,
        "loaded_docs": loaded,
        "load_seconds": round(seconds, 1),
        "load_docs_per_s": round(loaded / seconds),
    }
    for name, values in samples.items():
        result[name] = summarise(values)
    for report in ("tock", "query"):
        for stat in ("p50_ms", "p95_ms"):
            result[f"{report}_{stat[:3]}_ratio"] = C.rounded(
                C.ratio(result[f"{report}_metronome"][stat], result[f"{report}_raw"][stat])
            )
    result["goal_met"] = all(
        result[f"{r}_{s}_ratio"] <= GOAL_RATIO for r in ("tock", "query") for s in ("p50", "p95")
    )
    return result


def bench_sqlite(args: Any, end: datetime, tmp: Any) -> dict[str, Any]:
    from metronome.config import Settings
    from metronome.store.sqlite import SQLiteStore

    data = tmp / "sqlite-data"
    store = SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(data)}))

    async def load() -> float:
        await store.open()
        await store.ensure_schema()
        started = time.perf_counter()
        batch = []
        for doc in generate(args.sqlite_docs, args.items, args.days, args.seed, end):
            batch.append(doc)
            if len(batch) == 10_000:
                await store.write(batch)
                batch = []
        if batch:
            await store.write(batch)
        await store.close()
        return time.perf_counter() - started

    seconds = asyncio.run(load())
    year = {
        "from": (end - timedelta(days=args.days)).strftime("%Y-%m-%d"),
        "to": end.strftime("%Y-%m-%d"),
    }
    rng = random.Random(args.seed + 1)
    samples: dict[str, list[float]] = {"tock": [], "query": []}
    with (
        C.running(C.metronome_server(data, args=["--no-shipper"])) as srv,
        httpx.Client(base_url=srv.url, timeout=600) as http,
    ):
        for _, name in C.trial_order(list(samples), args.requests, args.seed):
            started = time.perf_counter()
            if name == "tock":
                item = f"dataset-{int(args.items * rng.random() ** 3)}"
                http.get(f"/tock/{item}", params=year).raise_for_status()
            else:
                http.post("/query", json=top_items_query(end)).raise_for_status()
            samples[name].append(time.perf_counter() - started)
    return {
        "docs": args.sqlite_docs,
        "load_seconds": round(seconds, 1),
        "tock": summarise(samples["tock"]),
        "query": summarise(samples["query"]),
    }


def main() -> None:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=1, warmup=None)
    parser.add_argument("--docs", type=int, default=10_000_000)
    parser.add_argument("--sqlite-docs", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--requests", type=int, default=40, help="per contender")
    parser.add_argument("--heap", default="2g", help="Elasticsearch heap")
    parser.add_argument("--skip-elasticsearch", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    args.seed = C.new_seed(args.seed)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tmp = C.temp_dir("metronome-bench-reports-")
    data: dict[str, Any] = {
        "benchmark": NAME,
        "goal": f"p50 and p95 <= {GOAL_RATIO}x raw",
        "parameters": {k: v for k, v in vars(args).items() if k != "output"},
    }
    if not args.skip_elasticsearch:
        data["elasticsearch"] = bench_elasticsearch(args, end, tmp)
    if not args.skip_sqlite:
        data["sqlite"] = bench_sqlite(args, end, tmp)
    data["environment"] = C.environment()
    path = C.write_results(NAME, data, args.output)
    print(f"results: {C.display(path)}")
    for backend in ("elasticsearch", "sqlite"):
        if backend in data:
            print(backend, {k: v for k, v in data[backend].items() if k != "elasticsearch"})


if __name__ == "__main__":
    main()
