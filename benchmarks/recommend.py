"""Related items, measured: next-item prediction on a replayed clickstream, and latency.

    python -m benchmarks.recommend            # a generated clickstream with planted pairs
    python -m benchmarks.recommend LOG        # also the real navigation in an access log

The clickstream is replayed in time order, one day at a time, into a real embedded store:
for every visit of the evaluated days and every position in it, each contender predicts the
next item from the items seen so far in the visit, knowing only the days before:

* ``related``: ``GET /items/{id}/related``'s ranking (:mod:`metronome.recommend.related`,
  through the store's real basket query) for each item seen, scores summed, the most
  popular items filling the list when the related items are fewer than 10;
* ``popularity``: the most viewed items so far (the baseline);
* ``last_week_next``: the items that followed the last seen item in the previous 7 days,
  most frequent first, then the most popular ("same as last week's next items").

Items already seen in the visit are never predicted. Reported: hit rate at 10 (the next
item is among the 10 predicted) and MRR at 10, and for the generated stream how many of
its planted pairs ``(a, b)`` have ``b`` in ``a``'s top 10 related items. Latency: the
related-items answer for typical (median-popularity) and for the most popular items on a
year of generated traffic in the embedded store. Writes ``benchmarks/results/recommend.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from metronome.config import Settings
from metronome.events.document import Document, format_timestamp
from metronome.recommend.related import parse_related, related_items
from metronome.store.sqlite import SQLiteStore

NAME = "recommend"
DAY_MS = 86_400_000
START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
TOP = 10
CONTENDERS = ("related", "popularity", "last_week_next")


@dataclass
class Visit:
    day: int
    visitor: str
    visit_id: str
    start_ms: int
    items: list[str]


@dataclass
class Stream:
    visits: list[Visit]
    planted: list[tuple[str, str]] = field(default_factory=list)
    dataset: str = "ticks"


# --------------------------------------------------------------------------- generation


def generate(
    seed: int, days: int, visits_per_day: int, items: int, pairs: int, follow: float
) -> Stream:
    """Visits of Zipf-popular items; in ``pairs`` planted pairs ``(a, b)`` (a and b of
    middling popularity), a visit at ``a`` goes on to ``b`` with probability ``follow``."""
    rng = random.Random(seed)
    names = [f"item-{i:04d}" for i in range(items)]
    weights = [1 / (rank + 1) for rank in range(items)]
    middle = names[items // 10 : items // 2]
    tail = names[items // 2 :]
    planted = list(zip(rng.sample(middle, pairs), rng.sample(tail, pairs), strict=True))
    partner = dict(planted)
    visits = []
    for day in range(days):
        day_ms = int((START + timedelta(days=day)).timestamp() * 1000)
        for n in range(visits_per_day):
            length = min(1 + int(rng.expovariate(1 / 3)), 12)
            path = [rng.choices(names, weights)[0]]
            while len(path) < length:
                last = path[-1]
                if last in partner and rng.random() < follow:
                    path.append(partner[last])
                else:
                    path.append(rng.choices(names, weights)[0])
            visitor = f"v{day}-{n // 2}"  # two visits a visitor a day: one basket a day
            start = day_ms + rng.randrange(DAY_MS - 3_600_000)
            visits.append(Visit(day, visitor, f"{visitor}-{n % 2}", start, path))
    return Stream(visits, planted)


def documents(visits: Sequence[Visit], dataset: str) -> list[Document]:
    docs = []
    for visit in visits:
        for position, item in enumerate(visit.items):
            ts = visit.start_ms + position * 30_000
            event_id = f"{visit.visit_id}-{position}"
            source: dict[str, Any] = {
                "@timestamp": format_timestamp(ts),
                "@version": "1",
                "event": {"id": event_id, "action": "view", "dataset": f"metronome.{dataset}"},
                "item": {"id": item},
                "bot": False,
                "site": {"id": "default"},
                "visitor": {"id": visit.visitor},
                "visit": {"id": visit.visit_id},
            }
            docs.append(Document(id=event_id, timestamp_ms=ts, dataset=dataset, source=source))
    return docs


# --------------------------------------------------------------------------- access logs


def from_log(path: Path, data_dir: Path) -> Stream:
    """The page views of an access log (GET, status 2xx, no crawlers, no assets) as visits:
    a visitor's (address and user agent, per day) run of views with gaps under 30 minutes."""
    from metronome.logs.formats.detect import detect
    from metronome.logs.ingest import LineConverter, open_lines

    settings = Settings.from_env({"METRONOME_DATA_DIR": str(data_dir)})
    lines = [text for _, text in open_lines(str(path), 65_536) if text is not None]
    converter = LineConverter(settings)
    converter.use(detect(lines[:200]).parser)
    assets = (".css", ".js", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".woff", ".woff2")
    views: list[tuple[str, int, str]] = []
    for text in lines:
        doc, _ = converter.convert(text, None, None, 0)
        if doc is None:
            continue
        src = doc.source
        status = src.get("http", {}).get("response", {}).get("status_code") or 0
        method = src.get("http", {}).get("request", {}).get("method")
        item = src.get("item", {}).get("id") or src.get("url", {}).get("path")
        visitor = src.get("visitor", {}).get("id")
        if src["bot"] or method != "GET" or not 200 <= status < 300 or not item or not visitor:
            continue
        if item.lower().endswith(assets):
            continue
        views.append((visitor, doc.timestamp_ms, item))
    converter.close()
    views.sort(key=lambda v: (v[1], v[0]))
    if not views:
        raise C.BenchmarkError(f"{path}: no page views found")
    first_day = views[0][1] // DAY_MS
    open_visits: dict[str, Visit] = {}
    last_ms: dict[str, int] = {}
    visits: list[Visit] = []
    for visitor, ts, item in views:
        current = open_visits.get(visitor)
        if current is None or ts - last_ms[visitor] > 30 * 60_000:
            current = Visit(ts // DAY_MS - first_day, visitor, f"{visitor}-{ts}", ts, [])
            open_visits[visitor] = current
            visits.append(current)
        if not current.items or current.items[-1] != item:  # a reload is no navigation
            current.items.append(item)
        last_ms[visitor] = ts
    return Stream(visits, dataset="logs")


# --------------------------------------------------------------------------- evaluation


def _day_text(day: int) -> str:
    return (START + timedelta(days=day)).strftime("%Y-%m-%d")


async def _related(
    store: SQLiteStore, item: str, first: str, last: str, limit: int = TOP
) -> list[tuple[str, float]]:
    request = parse_related(item, {"from": first, "to": last, "limit": str(limit)})
    answer = await related_items(store, request, site_id="default")
    return [(r["item"], r["score"]) for r in answer["results"]]


def _ranked(scores: dict[str, float], seen: set[str], fill: list[str]) -> list[str]:
    out = [i for i, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if i not in seen]
    out = out[:TOP]
    for item in fill:
        if len(out) >= TOP:
            break
        if item not in seen and item not in out:
            out.append(item)
    return out


async def evaluate(
    stream: Stream, data_dir: Path, eval_days: int, start_date: datetime
) -> dict[str, Any]:
    """Replay day by day; each day's visits are predicted from the days before, then
    stored. Returns hit@10 and MRR@10 per contender, and the planted pairs found."""
    global START
    START = start_date
    settings = Settings.from_env({"METRONOME_DATA_DIR": str(data_dir)})
    by_day: dict[int, list[Visit]] = defaultdict(list)
    for visit in stream.visits:
        by_day[visit.day].append(visit)
    days = sorted(by_day)
    first_eval = days[-1] - eval_days + 1
    popularity: Counter[str] = Counter()
    transitions: dict[int, Counter[tuple[str, str]]] = defaultdict(Counter)
    hits = dict.fromkeys(CONTENDERS, 0)
    reciprocal = dict.fromkeys(CONTENDERS, 0.0)
    predictions = 0
    latencies: list[float] = []
    async with SQLiteStore(settings) as store:
        await store.ensure_schema()
        for day in range(days[0], days[-1] + 1):
            visits = by_day.get(day, [])
            if day >= first_eval:
                first, last = _day_text(days[0]), _day_text(day - 1)
                cache: dict[str, list[tuple[str, float]]] = {}
                popular = [i for i, _ in popularity.most_common(TOP * 3)]
                week: Counter[tuple[str, str]] = Counter()
                for d in range(day - 7, day):
                    week.update(transitions.get(d, {}))
                following: dict[str, Counter[str]] = defaultdict(Counter)
                for (a, b), n in week.items():
                    following[a][b] += n
                for visit in visits:
                    for k in range(1, len(visit.items)):
                        seen = set(visit.items[:k])
                        target = visit.items[k]
                        if target in seen:
                            continue
                        scores: dict[str, float] = defaultdict(float)
                        for item in seen:
                            if item not in cache:
                                started = time.perf_counter()
                                cache[item] = await _related(store, item, first, last)
                                latencies.append(time.perf_counter() - started)
                            for other, value in cache[item]:
                                scores[other] += value
                        lists = {
                            "related": _ranked(scores, seen, popular),
                            "popularity": _ranked({}, seen, popular),
                            "last_week_next": _ranked(
                                {i: float(n) for i, n in following[visit.items[k - 1]].items()},
                                seen,
                                popular,
                            ),
                        }
                        predictions += 1
                        for name, ranked in lists.items():
                            if target in ranked:
                                hits[name] += 1
                                reciprocal[name] += 1 / (ranked.index(target) + 1)
                print(f"  day {day}: {predictions} predictions", file=sys.stderr, flush=True)
            if visits:
                await store.write(documents(visits, stream.dataset))
                await store.refresh_rollups()  # the day counted, as a server does after it
            for visit in visits:
                popularity.update(visit.items)
                transitions[day].update(zip(visit.items, visit.items[1:], strict=False))
        planted_found = 0
        everything = (_day_text(days[0]), _day_text(days[-1]))
        for a, b in stream.planted:
            if b in [i for i, _ in await _related(store, a, *everything)]:
                planted_found += 1
    results: dict[str, Any] = {
        "evaluated_days": eval_days,
        "visits": len(stream.visits),
        "events": sum(len(v.items) for v in stream.visits),
        "predictions": predictions,
    }
    for name in CONTENDERS:
        results[name] = {
            "hit_rate_at_10": C.rounded(hits[name] / predictions if predictions else None, 4),
            "mrr_at_10": C.rounded(reciprocal[name] / predictions if predictions else None, 4),
        }
    for name in ("popularity", "last_week_next"):
        results[f"hit_rate_ratio_to_{name}"] = C.rounded(
            C.ratio(results["related"]["hit_rate_at_10"], results[name]["hit_rate_at_10"])
        )
        results[f"mrr_ratio_to_{name}"] = C.rounded(
            C.ratio(results["related"]["mrr_at_10"], results[name]["mrr_at_10"])
        )
    if stream.planted:
        results["planted_pairs"] = len(stream.planted)
        results["planted_pairs_in_top_10"] = planted_found
    results["related_ms_during_replay"] = {
        "p50": C.rounded(1000 * statistics.median(latencies), 2) if latencies else None,
        "p95": C.rounded(1000 * C.percentile(latencies, 95), 2) if latencies else None,
    }
    return results


async def latency(data_dir: Path, visits_per_day: int, seed: int, repeats: int) -> dict[str, Any]:
    """The related-items answer's latency on a year of generated traffic (embedded store)."""
    stream = generate(seed, 365, visits_per_day, 2000, 50, 0.5)
    settings = Settings.from_env({"METRONOME_DATA_DIR": str(data_dir)})
    docs = documents(stream.visits, "ticks")
    async with SQLiteStore(settings) as store:
        await store.ensure_schema()
        started = time.perf_counter()
        for index in range(0, len(docs), 5000):
            await store.write(docs[index : index + 5000])
        await store.refresh_rollups()  # every day counted, as a server does after it
        load_s = time.perf_counter() - started
        print(f"  latency: {len(docs)} events loaded in {load_s:.0f}s", file=sys.stderr)
        counts = Counter(i for v in stream.visits for i in v.items)
        ranked = [i for i, _ in counts.most_common()]
        groups = {
            "typical": ranked[len(ranked) // 2 - 5 : len(ranked) // 2 + 5],
            "most_popular": ranked[:3],
        }
        year = (_day_text(0), _day_text(364))
        out: dict[str, Any] = {
            "events": len(docs),
            "items": len(ranked),
            "load_s": round(load_s, 1),
        }
        for name, items in groups.items():
            times, cpu = [], []
            for _ in range(repeats):
                for item in items:
                    began, began_cpu = time.perf_counter(), time.process_time()
                    await _related(store, item, *year)
                    times.append(time.perf_counter() - began)
                    cpu.append(time.process_time() - began_cpu)
            out[name] = {
                "events_of_item": [counts[i] for i in items],
                "p50_ms": C.rounded(1000 * statistics.median(times), 2),
                "p95_ms": C.rounded(1000 * (C.percentile(times, 95) or math.nan), 2),
                # CPU time of this process (the store's thread included): what the answer
                # costs whatever else the machine runs
                "cpu_p50_ms": C.rounded(1000 * statistics.median(cpu), 2),
            }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", nargs="?", type=Path, help="an access log to replay as well")
    parser.add_argument("--days", type=int, default=35, help="generated days [default: 35]")
    parser.add_argument("--eval-days", type=int, default=7, help="days predicted [default: 7]")
    parser.add_argument("--visits", type=int, default=300, help="visits a day [default: 300]")
    parser.add_argument("--items", type=int, default=200, help="items [default: 200]")
    parser.add_argument("--pairs", type=int, default=20, help="planted pairs [default: 20]")
    parser.add_argument(
        "--year-visits", type=int, default=400, help="visits a day of the latency year [400]"
    )
    parser.add_argument("--seed", type=int, default=None, help="generator seed (recorded)")
    parser.add_argument("--output", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    load_at_start = C.loadavg()
    began = time.process_time()
    data: dict[str, Any] = {
        "benchmark": NAME,
        "parameters": {
            "days": args.days,
            "eval_days": args.eval_days,
            "visits_per_day": args.visits,
            "items": args.items,
            "planted_pairs": args.pairs,
            "follow_probability": 0.5,
            "year_visits_per_day": args.year_visits,
            "seed": seed,
            "log": args.log.name if args.log else None,
        },
    }
    with tempfile.TemporaryDirectory(prefix="mt-recommend-") as tmp:
        stream = generate(seed, args.days, args.visits, args.items, args.pairs, 0.5)
        data["generated"] = asyncio.run(evaluate(stream, Path(tmp) / "gen", args.eval_days, START))
        if args.log:
            log_stream = from_log(args.log, Path(tmp) / "log-parse")
            first_ms = min(v.start_ms for v in log_stream.visits)
            start = datetime.fromtimestamp(first_ms // DAY_MS * 86_400, tz=UTC)
            data["log"] = asyncio.run(
                evaluate(log_stream, Path(tmp) / "log", args.eval_days, start)
            )
        data["latency_year_embedded"] = asyncio.run(
            latency(Path(tmp) / "year", args.year_visits, seed, 5)
        )
    data["environment"] = C.environment(
        cpu_s=round(time.process_time() - began, 2), loadavg_at_start=load_at_start
    )
    out = C.write_results(NAME, data, args.output)
    gen = data["generated"]
    print(
        f"recommend: hit@10 related {gen['related']['hit_rate_at_10']} vs popularity"
        f" {gen['popularity']['hit_rate_at_10']} vs last week"
        f" {gen['last_week_next']['hit_rate_at_10']}; planted"
        f" {gen['planted_pairs_in_top_10']}/{gen['planted_pairs']}; typical item"
        f" {data['latency_year_embedded']['typical']['p50_ms']} ms -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
