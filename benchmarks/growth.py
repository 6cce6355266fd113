"""How each store grows: the growth table of the README's Performance section.

For each of ``--sizes`` (default 100,000, 1,000,000 and 10,000,000) ticks over ``--days``
(365) across ``--items`` (100,000; skewed popularity), generated as
:mod:`benchmarks.reports` does and loaded as each store's write path stores them (the
embedded store by :mod:`benchmarks.fastload`, or with ``--loader write`` through its
``write`` in batches of 10,000; Elasticsearch by ``parallel_bulk`` into daily indices, a
throwaway server or ``METRONOME_TEST_ELASTICSEARCH_URL``), it measures:

* the import rate; on the embedded store the counting of its rollups is timed apart from
  the writes (``rollup_seconds``; ``rollup_share_of_import`` is what it costs ingestion);
* disk bytes per event (the embedded store's file after a checkpoint, with the rollups'
  share from ``dbstat``; Elasticsearch's primary store);
* through ``metronome serve`` (2 workers), p50/p95 of ``/tock`` for a year by day for
  random items, of the top 10 items of the last whole month, and of ``/query`` requests
  with a time and a keyword dimension over that month (``--intervals`` x
  ``--dimensions``, named ``<interval>_<field>``): ``day_referrer`` (a column of the
  embedded store's rollups), ``day_domain`` and ``day_country`` (few values a day:
  ``rollup_fields``), ``day_path`` and ``day_visitor`` (a value per item or per event:
  ``rollup_values``; a month of them has more groups than a report may give, so the
  answer is a 400 and its ``status`` is recorded);
* on the embedded store, the top-items query straight on one connection from the events
  (``top_items_events``, the baseline) and through the rollups (``top_items_rollups``),
  in shuffled alternation, and whether both give the same answer; the same for each
  ``/query`` by time and a field: from the events in one statement
  (``day_path_events``: the code before issue 24), from the rollups in one statement
  (``day_path_rollups``, and the table it read), and as the store reads it now, a time
  bucket at a time where that pays (``day_path_store``), with whether all three agree;
* peak memory: the loader (this process) and the largest of the server's processes.

The results file is written after each size, so a run stopped at a size too large for
the time keeps what it measured. With ``--loader fast`` the import rate is the
loader's (``fast_load_docs_per_s``), not the store's; ``--loader write`` measures the
store's own (``import_docs_per_s``), hours at 10,000,000 here.

    python -m benchmarks.growth [--sizes 100000,1000000] [--skip-elasticsearch]
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import secrets
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _common as C
from benchmarks.fastload import load_sqlite
from benchmarks.reports import generate, load_elasticsearch, summarise, top_items_query

NAME = "growth"
# the keyword dimensions of the "/query by day and ... over a month" measured: a column of
# the rollups, fields with few values a day (rollup_fields), and fields with about a value
# per item or per event
DIMENSIONS = ("referrer", "domain", "country", "path", "visitor")


def _day_query(end: datetime, dimension: str, interval: str = "day") -> dict[str, Any]:
    return {**top_items_query(end), "dimensions": [f"time:{interval}", dimension], "limit": 10_000}


def _dimensions(args: Any) -> list[tuple[str, str, str]]:
    """(name of the report, interval, field) of each /query by time and a field."""
    intervals = [name.strip() for name in args.intervals.split(",") if name.strip()]
    fields = [name.strip() for name in args.dimensions.split(",") if name.strip()]
    return [(f"{i}_{f}", i, f) for i in intervals for f in fields]


def _measure_server(
    http: httpx.Client, args: Any, end: datetime, rng: random.Random
) -> dict[str, Any]:
    """p50/p95 of each report through a running server, in shuffled order."""
    year = {
        "from": (end - timedelta(days=args.days)).strftime("%Y-%m-%d"),
        "to": (end - timedelta(days=1)).strftime("%Y-%m-%d"),
    }
    bodies = {
        "top_items": top_items_query(end),
        **{name: _day_query(end, field, interval) for name, interval, field in _dimensions(args)},
    }

    statuses: dict[str, set[int]] = {name: set() for name in ["tock", *bodies]}

    def run(name: str) -> None:
        if name == "tock":
            item = f"dataset-{int(args.items * rng.random() ** 3)}"
            response = http.get(f"/tock/{item}", params=year)
        else:
            response = http.post("/query", json=bodies[name])
        # by day and a field with a value per event, a month has more groups than a
        # report may give (METRONOME_QUERY_MAX_GROUPS): that answer is a 400, as quick
        # to give as the first groups are to find
        if not (response.status_code == 400 and "more than" in response.text):
            response.raise_for_status()
        statuses[name].add(response.status_code)

    names = ["tock", *bodies]
    for name in names:  # warm caches for everyone alike
        run(name)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _, name in C.trial_order(names, args.requests, args.seed):
        if len(samples[name]) >= 5 and sum(samples[name]) > args.report_budget:
            continue  # slow enough that its p95 is known; the time goes to the others
        started = time.perf_counter()
        run(name)
        samples[name].append(time.perf_counter() - started)
    return {
        name: {**summarise(values), "status": sorted(statuses[name])}
        for name, values in samples.items()
    }


def _server_peak_mb(server: Any) -> float | None:
    """The largest peak resident memory of the server's processes (master, workers)."""
    if server.proc is None:
        return None
    peaks = [
        C.proc_status_kb(pid, "VmHWM") for pid in [server.proc.pid, *C.descendants(server.proc.pid)]
    ]
    known = [p for p in peaks if p]
    return round(max(known) / 1024, 1) if known else None


def _table_of(compiled: tuple[str, list[Any]] | None) -> str | None:
    """The rollup table a compiled query reads (None: the events alone)."""
    if compiled is None:
        return None
    return next((w for w in compiled[0].split() if w.startswith("rollup_")), None)


def _loader_peak_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _catch_up(data: Path) -> float:
    """Bring a kept store up to this code's schema and count what its rollups lack (a
    rollup table newer than the data: every day), so the reports measure this code; the
    seconds it took."""
    from metronome.config import Settings
    from metronome.store.sqlite import SQLiteStore

    async def catch_up() -> float:
        async with SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(data)})) as store:
            await store.ensure_schema()
            started = time.perf_counter()
            await store.refresh_rollups()
            return time.perf_counter() - started

    return round(asyncio.run(catch_up()), 1)


def _load_sqlite(args: Any, size: int, end: datetime, data: Path) -> dict[str, Any]:
    """Load ``size`` generated events into the embedded store in ``data``: through the
    store's ``write`` in batches of 10,000 (``--loader write``; the rollups counted once at
    the end, timed apart), or with :mod:`benchmarks.fastload` (``--loader fast``). A
    directory already loaded with the same parameters (``--keep-data``) is used again, its
    rollups brought up to date first (``catch_up_seconds``)."""
    from metronome.config import Settings
    from metronome.store.sqlite import SQLiteStore

    wanted = {
        "events": size,
        "items": args.items,
        "days": args.days,
        "seed": args.seed,
        "end": end.isoformat(),
        "loader": args.loader,
        "generator": 2,  # documents with hosts, agents and countries (not reusing older data)
    }
    marker = data / "loaded.json"
    if marker.exists():
        loaded = json.loads(marker.read_text())
        if all(loaded.get(k) == v for k, v in wanted.items()):
            return {**loaded, "reused": True, "catch_up_seconds": _catch_up(data)}
    shutil.rmtree(data, ignore_errors=True)
    if args.loader == "fast":
        step = 50_000  # events per part, made and encoded by two worker processes
        parts = [
            functools.partial(
                generate,
                size,
                args.items,
                args.days,
                args.seed,
                end,
                first,
                min(first + step, size),
            )
            for first in range(0, size, step)
        ]
        figures = load_sqlite(data, parts=parts, shards=2)
        figures["loader_peak_mb"] = _loader_peak_mb()
        marker.write_text(json.dumps({**wanted, **figures}))
        return figures
    store = SQLiteStore(Settings.from_env({"METRONOME_DATA_DIR": str(data)}))

    async def load() -> tuple[float, float]:
        await store.open()
        await store.ensure_schema()
        store._rolled_at = float("inf")  # counted once at the end, to time it apart
        started = time.perf_counter()
        batch = []
        for doc in generate(size, args.items, args.days, args.seed, end):
            batch.append(doc)
            if len(batch) == 10_000:
                await store.write(batch)
                batch = []
        if batch:
            await store.write(batch)
        written = time.perf_counter()
        await store.refresh_rollups()
        rolled = time.perf_counter()
        await store.close()
        return written - started, rolled - written

    write_s, rollup_s = asyncio.run(load())
    figures = {
        "events": size,
        "write_seconds": round(write_s, 1),
        "rollup_seconds": round(rollup_s, 1),
        "loader_peak_mb": _loader_peak_mb(),
    }
    marker.write_text(json.dumps({**wanted, **figures}))
    return figures


def grow_sqlite(args: Any, size: int, end: datetime, tmp: Any) -> dict[str, Any]:
    import sqlite3

    from metronome.events.fields import DEFAULT_SITE
    from metronome.reports.query import for_site, parse_query
    from metronome.store.sqlite import DB_NAME
    from metronome.store.sqlite_query import install_functions, query_groups, query_top
    from metronome.store.sqlite_rollups import rollup_sql

    data = (Path(args.keep_data) if args.keep_data else tmp) / f"sqlite-{size}"
    loaded = _load_sqlite(args, size, end, data)
    path = data / DB_NAME
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    disk = sum(f.stat().st_size for f in data.glob(DB_NAME + "*"))
    try:
        tables = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
        rollup_bytes = sum(v for k, v in tables.items() if str(k).startswith("rollup_"))
    except sqlite3.OperationalError:  # SQLite built without the dbstat table
        rollup_bytes = None
    install_functions(conn)
    query = for_site(parse_query(top_items_query(end)), DEFAULT_SITE).group
    compiled = rollup_sql(conn, query)
    events_s: list[float] = []
    rolled_s: list[float] = []
    for _, name in C.trial_order(["events", "rollups"], args.baseline_requests, args.seed):
        started = time.perf_counter()
        rows = query_top(conn, query, 0, True, 11, compiled if name == "rollups" else None)
        (rolled_s if name == "rollups" else events_s).append(time.perf_counter() - started)
    same = (
        rows == query_top(conn, query, 0, True, 11) == query_top(conn, query, 0, True, 11, compiled)
    )
    # the same for each /query by time and a field over the month: its first 10,001 groups
    by_day: dict[str, Any] = {}
    try:  # what the store runs: one time bucket at a time where that pays (issue 24)
        from metronome.store.sqlite_rollups import group_rows
    except ImportError:  # code from before it
        group_rows = None
    for report, interval, field in _dimensions(args):
        body = _day_query(end, field, interval)
        day_query = for_site(parse_query(body), DEFAULT_SITE).group
        day_compiled = rollup_sql(conn, day_query)
        day_s: dict[str, list[float]] = {"events": [], "rollups": []}
        if group_rows is not None:
            day_s["store"] = []
        for _, name in C.trial_order(list(day_s), args.baseline_requests, args.seed):
            started = time.perf_counter()
            if name == "store":
                group_rows(conn, day_query, None, 10_001)
            else:
                compiled_or_none = day_compiled if name == "rollups" else None
                query_groups(conn, day_query, None, 10_001, compiled_or_none)
            day_s[name].append(time.perf_counter() - started)
        answer = query_groups(conn, day_query, None, 10_001)
        by_day |= {
            f"{report}_events": summarise(day_s["events"]),
            f"{report}_rollups": summarise(day_s["rollups"]),
            f"{report}_store": summarise(day_s["store"]) if "store" in day_s else None,
            f"{report}_rollup_table": _table_of(day_compiled),
            f"{report}_same_answer": answer
            == query_groups(conn, day_query, None, 10_001, day_compiled)
            and (group_rows is None or answer == group_rows(conn, day_query, None, 10_001)),
        }
    conn.close()
    rng = random.Random(args.seed + 1)
    with (
        C.running(C.metronome_server(data, args=["--no-shipper"])) as srv,
        httpx.Client(base_url=srv.url, timeout=600) as http,
    ):
        reports = _measure_server(http, args, end, rng)
        server_peak = _server_peak_mb(srv)
    if not args.keep_data:
        shutil.rmtree(data, ignore_errors=True)
    total = sum(loaded.get(k) or 0 for k in ("write_seconds", "index_seconds", "rollup_seconds"))
    load = {
        "loader": loaded.get("loader", args.loader),
        "reused_data": bool(loaded.get("reused")),
        "catch_up_seconds": loaded.get("catch_up_seconds"),
        # the store's import rate with --loader write; the benchmark loader's with fast
        "import_docs_per_s" if args.loader == "write" else "fast_load_docs_per_s": round(
            size / total
        ),
        **{
            k: loaded.get(k)
            for k in ("write_seconds", "index_seconds", "rollup_seconds", "cpu_seconds")
        },
        "rollup_share_of_import": C.rounded(loaded["rollup_seconds"] / total),
    }
    return {
        "events": size,
        **load,
        "disk_bytes_per_event": round(disk / size, 1),
        "rollup_bytes_per_event": None if rollup_bytes is None else round(rollup_bytes / size, 1),
        **reports,
        "top_items_events": summarise(events_s),
        "top_items_rollups": summarise(rolled_s),
        "top_items_rollups_used": compiled is not None,
        "top_items_same_answer": same,
        **by_day,
        "loader_peak_mb": loaded.get("loader_peak_mb"),
        "server_peak_mb": server_peak,
    }


def grow_elasticsearch(args: Any, size: int, end: datetime, tmp: Any, es: Any) -> dict[str, Any]:
    prefix = "bench-" + secrets.token_hex(4)
    C.install_templates(es.url, prefix)
    loaded, seconds = load_elasticsearch(
        es.url, prefix, generate(size, args.items, args.days, args.seed, end)
    )
    stored = es.refresh_and_count(f"{prefix}-ticks-*")
    if stored != size:
        raise C.BenchmarkError(f"stored {stored} of {size} documents")
    stats = httpx.get(
        f"{es.url}/{prefix}-ticks-*/_stats/store", params={"filter_path": "_all.primaries"}
    ).json()
    disk = stats["_all"]["primaries"]["store"]["size_in_bytes"]
    env = {"METRONOME_ELASTICSEARCH_URL": es.url, "METRONOME_INDEX_PREFIX": prefix}
    rng = random.Random(args.seed + 1)
    try:
        with (
            C.running(
                C.metronome_server(tmp / f"es-{size}", args=["--no-shipper"], env=env)
            ) as srv,
            httpx.Client(base_url=srv.url, timeout=600) as http,
        ):
            reports = _measure_server(http, args, end, rng)
            server_peak = _server_peak_mb(srv)
    finally:
        es.delete(f"{prefix}-*")
    return {
        "events": size,
        "import_docs_per_s": round(loaded / seconds),
        "disk_bytes_per_event": round(disk / size, 1),
        **reports,
        "loader_peak_mb": _loader_peak_mb(),
        "server_peak_mb": server_peak,
        "elasticsearch_heap": None if es.external else es.heap,
    }


def growth(args: Any, end: datetime, tmp: Any, name: str = NAME) -> Path:
    """Each store at each size; the results file is written after each size, so a run
    stopped at a size too large for the time leaves what it measured."""
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    C.pin_git()
    table: dict[str, Any] = {
        "benchmark": name,
        "goal": "embedded store at 10,000,000 events: /tock year p95 <= 100 ms, top items"
        " of a month p95 <= 300 ms, time x keyword over a month p95 <= 1 s",
        # where the data was kept is this machine's business, not the results'
        "parameters": {
            k: bool(v) if k == "keep_data" else v for k, v in vars(args).items() if k != "output"
        },
    }

    def save() -> Path:
        return C.write_results(name, {**table, "environment": C.environment()}, args.output)

    path = save()
    if not args.skip_sqlite:
        table["sqlite"] = []
        for size in sizes:
            table["sqlite"].append(grow_sqlite(args, size, end, tmp))
            print("sqlite", table["sqlite"][-1], flush=True)
            path = save()
    if not args.skip_elasticsearch:
        table["elasticsearch"] = []
        with C.Elasticsearch(heap=args.heap) as es:
            table["elasticsearch_server"] = es.info()
            for size in sizes:
                table["elasticsearch"].append(grow_elasticsearch(args, size, end, tmp, es))
                print("elasticsearch", table["elasticsearch"][-1], flush=True)
                path = save()
    return path


def main(name: str = NAME, description: str | None = None, **defaults: Any) -> None:
    """Run from the command line; ``name``, ``description`` and ``defaults`` (of the
    options): another benchmark made of this one (:mod:`benchmarks.growth_month`)."""
    parser = C.base_parser(
        description or __doc__.splitlines()[0], duration=None, trials=1, warmup=None
    )
    parser.add_argument(
        "--sizes", default="100000,1000000,10000000", help="events, comma-separated"
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--requests", type=int, default=40, help="per report and size")
    parser.add_argument("--baseline-requests", type=int, default=5, help="top items on the events")
    parser.add_argument(
        "--dimensions",
        default=",".join(DIMENSIONS),
        help="the keyword fields of the /query by day over a month, comma-separated",
    )
    parser.add_argument(
        "--intervals",
        default="day",
        help="the time buckets of those reports, comma-separated (day, week, month)",
    )
    parser.add_argument("--heap", default="2g", help="Elasticsearch heap")
    parser.add_argument("--skip-elasticsearch", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--loader",
        choices=["fast", "write"],
        default="fast",
        help="embedded store: benchmarks.fastload, or the store's own write (slow at 10M)",
    )
    parser.add_argument(
        "--keep-data",
        metavar="DIR",
        help="keep each embedded store in DIR/sqlite-<size>, used again by a later run with"
        " the same parameters (--seed)",
    )
    parser.add_argument(
        "--report-budget",
        type=float,
        default=300.0,
        help="seconds per report and size: a report that took this long stops sampling"
        " (with at least 5 requests); the results give the requests made",
    )
    parser.set_defaults(**defaults)
    args = parser.parse_args()
    args.seed = C.new_seed(args.seed)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    path = growth(args, end, C.temp_dir("metronome-bench-growth-"), name)
    print(f"results: {C.display(path)}")


if __name__ == "__main__":
    main()
