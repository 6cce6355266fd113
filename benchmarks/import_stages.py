"""Where ``metronome import``'s CPU per line goes, stage by stage, beside GoAccess's.

Issue 24's goal 1 (import at least as fast as GoAccess) is at ~0.28x in
``benchmarks/import_logs.py``. This benchmark shows what bounds it: the CPU each stage of
the import costs per line in CPython, against GoAccess's whole cost per line, and what
two cores can make of that. One reproducible ``combined`` log (default 200,000 lines,
``--lines``; ``import_logs``' generator and file, its ``METRONOME_*`` settings and URL
rules) is read by three contenders in shuffled rounds (``--trials``, ``--seed``):

* stages: the import's own code, one stage after the other per block of ``BATCH_DOCS``
  lines, in a process forked for the pass (after ``_bound_malloc`` and
  ``_load_shared_data``, as the import forks its parsing processes: the country database
  and the user-agent parser loaded and frozen, every cache of the pass cold), pinned to
  one CPU (``--cpu``), with the import's gc thresholds, ``time.process_time`` around
  each stage (every thread of the process counts: SQLite runs on the store's thread):

  1. read: ``open_lines`` (the file's lines, numbered, decoded) in blocks;
  2. parse: ``_BlockParser.documents``: line -> document (regex, time, URL rules, user
     agent, geo, visitor id, event id...);
  3. visits: ``_BlockParser.assign``: the one visit book, every block in order, as with
     one parsing process (the ended visits that are summarised come out of it);
  4. encode: ``_BlockParser.send_assigned``: ``sqlite_rows`` of the documents and of the
     ended visits' summaries (the summary documents are made there); and, at the end,
     ``done()``'s last summaries;
  5. pickle: the batch message pickled as the queue to the writer pickles it
     (``ForkingPickler.dumps``, called inside ``send_assigned``; with encode, what the
     parsing process pays to hand a batch over);
  6. receive: the writer's side of the queue, ``pickle.loads`` of that message (inter-
     process cost that the import pays in its writing process);
  7. write: ``SQLiteStore.write_encoded`` into a fresh embedded store opened as
     ``metronome import`` opens it (``open_store``, ``ensure_schema``, untimed), the
     writer's order and durability: each batch's ended visits first
     (``durable=False``), then the batch before it (one transaction, ``durable`` when
     ``SYNC_EVERY_S`` passed since the last durable one), the last one durable;

  the rows in the store afterwards must be the lines, the visits those the real import
  stored;
* goaccess: ``goaccess FILE --log-format=COMBINED --no-global-config -o report.json``,
  its CPU (user + system, ``wait4``) per line;
* metronome-sqlite: the real ``metronome import FILE`` into the embedded store, its CPU
  per line (the importing process and its parsing processes).

Both commands also run on the log's first ``BATCH_DOCS`` lines (``*-small``), so their
start-up can be taken out: ``marginal`` CPU per line is (CPU(N) - CPU(small)) / (N -
small). The stage sum against the real import's marginal CPU per line is what two
processes cost beyond the stages (queues, lookups, a user-agent cache per process...).

Derived bound: on 2 cores, a line costs at least ``max(sum / 2, serial)`` µs of wall
time, where ``serial`` is the largest share one process must do alone (the writer's
receive + write; the visit book's assignments, which take turns; the reading, which the
first parsing process does alone): the best possible lines/s is ``1e6 / that``,
compared with GoAccess's lines per CPU second (its one core). CPU seconds, not wall:
other work shares this 2-core machine.

    python -m benchmarks.import_stages [--lines 200000] [--trials 3] [--cpu N]
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import pickle
import secrets
import shutil
import sqlite3
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from benchmarks.import_logs import (
    RULES,
    TRUSTED_PROXIES,
    ensure_goaccess,
    generate_lines,
    goaccess_version,
    log_arguments,
    metronome_env,
    run_goaccess,
    run_sqlite,
    write_log,
)

NAME = "import_stages"
DEFAULT_LINES = 200_000
STAGES = ("read", "parse", "visits", "encode", "pickle", "receive", "write")
PROCESS_OF = {
    "read": "first parsing",
    "parse": "parsing (either)",
    "visits": "parsing (in turns)",
    "encode": "parsing (either)",
    "pickle": "parsing (either)",
    "receive": "writer",
    "write": "writer",
}
CONTENDERS = ("stages", "goaccess", "metronome-sqlite", "goaccess-small", "metronome-sqlite-small")
CORES = 2


# --------------------------------------------------------------------------- the stages


class _GcClock:
    """CPU seconds spent in the garbage collector so far (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.total += time.process_time() - self._started


def stage_pass(path: str, data_dir: str, cpu: int | None) -> dict[str, Any]:
    """One pass of the stages over the file (in a forked process; see the docstring)."""
    from metronome.pipeline.import_process import _GC_THRESHOLDS

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    gc.set_threshold(*_GC_THRESHOLDS)
    return asyncio.run(_stages(path, Path(data_dir)))


async def _stages(path: str, data_dir: Path) -> dict[str, Any]:
    from metronome.config import Settings
    from metronome.logs.ingest import open_lines
    from metronome.pipeline.import_process import BATCH_DOCS, SYNC_EVERY_S, _BlockParser
    from metronome.store import open_store

    settings = Settings.from_env(metronome_env(data_dir))
    clock = time.process_time
    spent = dict.fromkeys(STAGES, 0.0)
    in_gc = dict.fromkeys(STAGES, 0.0)
    spent_now, in_gc_now = dict(spent), dict(in_gc)  # the latest lap of each stage
    gc_clock = _GcClock()
    sent: list[bytes] = []
    dumps, loads = ForkingPickler.dumps, pickle.loads  # what multiprocessing's queues use
    counts = {"batches": 0, "durable_commits": 0, "pickled_bytes": 0, "stored": 0, "rejects": 0}

    def put(message: tuple[Any, ...]) -> None:
        """The queue's pickling, inside ``send_assigned``: counted as pickle, not encode."""
        mark = clock(), gc_clock.total
        data = bytes(dumps(message))
        lap("pickle", mark)
        spent["encode"] -= spent_now["pickle"]
        in_gc["encode"] -= in_gc_now["pickle"]
        counts["pickled_bytes"] += len(data)
        sent.append(data)

    async with open_store(settings) as store:
        await store.ensure_schema()
        parser = _BlockParser(settings, put, secrets.token_bytes(32))
        converter = parser.converter
        held: list[Any] | None = None
        synced_at = time.monotonic()

        async def write(rows: list[Any], durable: bool) -> None:
            result = await store.write_encoded(rows, durable=durable)
            counts["stored"] += result.stored
            counts["durable_commits"] += durable

        async def receive_and_write() -> None:
            """The writer: each message unpickled, its summaries written, then the batch
            before it (this one held), as ``_Writer.add`` does."""
            nonlocal held, synced_at
            while sent:
                mark = clock(), gc_clock.total
                message = loads(sent.pop(0))
                lap("receive", mark)
                mark = clock(), gc_clock.total
                if message[0] == "batch":
                    counts["rejects"] += len(message[4])
                    if message[2]:
                        await write(message[2], durable=False)
                    if message[1]:
                        if held is not None:
                            durable = time.monotonic() - synced_at >= SYNC_EVERY_S
                            if durable:
                                synced_at = time.monotonic()
                            await write(held, durable)
                        held = message[1]
                lap("write", mark)

        def lap(stage: str, mark: tuple[float, float]) -> None:
            spent_now[stage] = clock() - mark[0]
            in_gc_now[stage] = gc_clock.total - mark[1]
            spent[stage] += spent_now[stage]
            in_gc[stage] += in_gc_now[stage]

        lines = open_lines(path, settings.max_line_bytes)
        gc.collect()
        gc.callbacks.append(gc_clock)
        started_cpu, started = clock(), time.perf_counter()
        try:
            while True:
                mark = clock(), gc_clock.total
                block = list(itertools.islice(lines, BATCH_DOCS))
                lap("read", mark)
                if not block:
                    break
                counts["batches"] += 1
                mark = clock(), gc_clock.total
                read_before = converter.summary.read
                documents = parser.documents(path, block)
                lap("parse", mark)
                mark = clock(), gc_clock.total
                documents, ended = parser.assign(documents)
                lap("visits", mark)
                mark = clock(), gc_clock.total
                parser.send_assigned(documents, ended, converter.summary.read - read_before)
                lap("encode", mark)
                await receive_and_write()
            mark = clock(), gc_clock.total
            parser.done()  # the summaries of the visits still open
            lap("encode", mark)
            await receive_and_write()
            mark = clock(), gc_clock.total
            if held is not None:
                await write(held, durable=True)  # the writer's finish()
            lap("write", mark)
            cpu_seconds, seconds = clock() - started_cpu, time.perf_counter() - started
        finally:
            gc.callbacks.remove(gc_clock)
        read = converter.summary.read
    stored = _rows_per_dataset(data_dir)
    return {
        "cpu_seconds": cpu_seconds,
        "seconds": seconds,
        "stage_cpu_s": spent,
        "stage_gc_cpu_s": in_gc,
        "read": read,
        "rejected": sum(converter.summary.rejected.values()),
        "bots": converter.summary.bots,
        "stored_rows": stored,
        **counts,
    }


def _rows_per_dataset(data_dir: Path) -> dict[str, int]:
    """The events an embedded store in ``data_dir`` holds, by dataset."""
    conn = sqlite3.connect(data_dir / "metronome.sqlite3")
    try:
        return dict(conn.execute("SELECT dataset, count(*) FROM events GROUP BY dataset"))
    finally:
        conn.close()


def run_stages(path: Path, lines: int, work: Path, name: str, cpu: int | None) -> dict[str, Any]:
    """:func:`stage_pass` in a process forked from this one; its rows checked."""
    data_dir = work / f"{name}-data"
    data_dir.mkdir(mode=0o700)
    try:
        with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
            r = pool.submit(stage_pass, str(path), str(data_dir), cpu).result()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    events = r["stored_rows"].get("logs", 0)
    if r["read"] != lines or events != lines - r["rejected"] or r["rejected"]:
        raise C.BenchmarkError(
            f"{name}: read {r['read']} of {lines} lines, rejected {r['rejected']},"
            f" {events} events stored"
        )
    return r


def run_import(path: Path, lines: int, work: Path, name: str, timeout_s: float) -> dict[str, Any]:
    """``import_logs.run_sqlite`` (the real command, its counts checked); the rows per
    dataset it left, to compare with the stages'."""
    try:
        r = run_sqlite(path, lines, work, name, timeout_s, keep=True)
        r["stored_rows"] = _rows_per_dataset(work / f"{name}-data")
    finally:
        shutil.rmtree(work / f"{name}-data", ignore_errors=True)
    return r


# --------------------------------------------------------------------------- main


def _per_line_us(cpu_s: float | None, lines: int) -> float | None:
    return None if cpu_s is None else cpu_s / lines * 1e6


def main(argv: list[str] | None = None) -> int:
    from metronome.pipeline.import_process import (
        _GC_THRESHOLDS,
        BATCH_DOCS,
        SYNC_EVERY_S,
        _bound_malloc,
        _load_shared_data,
    )

    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=3, warmup=None)
    log_arguments(parser, DEFAULT_LINES)
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="CPU the stage passes are pinned to [default: the lowest allowed]",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds before one command's run is killed [default: 1800]",
    )
    args = parser.parse_args(argv)
    if args.duration is not None or args.warmup is not None:
        print(f"{NAME}: --duration/--warmup do not apply", file=sys.stderr)
    if args.lines <= BATCH_DOCS:
        parser.error(f"--lines must be more than {BATCH_DOCS} (the small file's lines)")
    C.pin_git()
    seed = C.new_seed(args.seed)
    load_at_start = C.loadavg()
    started_at = time.time()
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    work = C.temp_dir("metronome-bench-stages-")
    log_path, small_path = work / "access.log", work / "small.log"
    n, small = args.lines, BATCH_DOCS

    print(f"{NAME}: generating {n:,} combined lines into {log_path}...", file=sys.stderr)
    try:
        lines = generate_lines(n, args.lines_seed)
        goaccess = ensure_goaccess()
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        return 1
    log_info = write_log(lines, log_path)
    write_log(lines[:small], small_path)
    del lines
    # as import_in_two_processes does before it forks its parsing processes
    _bound_malloc()
    _load_shared_data()

    sizes = {label: small if label.endswith("-small") else n for label in CONTENDERS}

    def run(label: str, name: str) -> dict[str, Any]:
        if label == "stages":
            return run_stages(log_path, n, work, name, cpu)
        path = small_path if label.endswith("-small") else log_path
        if label.startswith("goaccess"):
            return run_goaccess(goaccess, path, sizes[label], work, name, args.timeout, False)
        return run_import(path, sizes[label], work, name, args.timeout)

    warmup: dict[str, float] = {}
    trials: list[dict[str, Any]] = []
    try:
        for _, label in C.trial_order(CONTENDERS, 1, seed + 1):
            r = run(label, f"warmup-{label}")
            warmup[label] = round(r["cpu_seconds" if label == "stages" else "cpu_s"], 3)
        for round_no, label in C.trial_order(CONTENDERS, args.trials, seed):
            r = run(label, f"{label}-{round_no}")
            if label == "stages":
                row = {
                    "round": round_no,
                    "contender": label,
                    "cpu_s": round(r["cpu_seconds"], 4),
                    "seconds": round(r["seconds"], 4),
                    "stage_us_per_line": {
                        s: round(_per_line_us(v, n) or 0, 3) for s, v in r["stage_cpu_s"].items()
                    },
                    "stage_gc_us_per_line": {
                        s: round(_per_line_us(v, n) or 0, 3) for s, v in r["stage_gc_cpu_s"].items()
                    },
                    **{
                        k: r[k]
                        for k in (
                            "read",
                            "rejected",
                            "bots",
                            "stored_rows",
                            "batches",
                            "durable_commits",
                            "pickled_bytes",
                        )
                    },
                }
                shown = f"{sum(row['stage_us_per_line'].values()):7.2f} us/line in the stages"
            else:
                row = {
                    "round": round_no,
                    "contender": label,
                    "lines": sizes[label],
                    "cpu_s": round(r["cpu_s"], 4),
                    "cpu_user_s": round(r["cpu_user_s"], 4),
                    "cpu_system_s": round(r["cpu_system_s"], 4),
                    "seconds": round(r["seconds"], 4),
                    "max_tree_pss_mib": C.rounded(r["max_tree_pss_mib"], 1),
                }
                if "stored_rows" in r:
                    row["stored_rows"] = r["stored_rows"]
                shown = f"{r['cpu_s'] / sizes[label] * 1e6:7.2f} us/line of CPU"
            trials.append(row)
            print(f"  round {round_no} {label:24} {shown}", file=sys.stderr)
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        print(f"{NAME}: files kept in {work}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)

    def med(label: str, key: str) -> float | None:
        return C.median(t[key] for t in trials if t["contender"] == label)

    stage_rows = [t for t in trials if t["contender"] == "stages"]
    stage_us = {s: C.median(t["stage_us_per_line"][s] for t in stage_rows) for s in STAGES}
    stage_gc_us = {s: C.median(t["stage_gc_us_per_line"][s] for t in stage_rows) for s in STAGES}
    total_us = sum(v for v in stage_us.values() if v is not None)
    cpu_of = {label: med(label, "cpu_s") for label in CONTENDERS if label != "stages"}
    goaccess_us = _per_line_us(cpu_of["goaccess"], n)
    import_us = _per_line_us(cpu_of["metronome-sqlite"], n)

    def marginal(label: str) -> float | None:
        full, part = cpu_of[label], cpu_of[f"{label}-small"]
        return None if full is None or part is None else (full - part) / (n - small) * 1e6

    goaccess_marginal_us, import_marginal_us = marginal("goaccess"), marginal("metronome-sqlite")
    serial = {
        "writer (receive + write)": stage_us["receive"] + stage_us["write"],  # type: ignore[operator]
        "visit book (visits)": stage_us["visits"],
        "first parsing process (read)": stage_us["read"],
    }
    largest = max(serial, key=lambda k: serial[k] or 0)
    bound_us = max(total_us / CORES, serial[largest] or 0)
    bound_lines_per_s = 1e6 / bound_us
    goaccess_lines_per_cpu_s = 1e6 / goaccess_us if goaccess_us else None
    stage_visits = [t["stored_rows"].get("visits") for t in stage_rows]
    import_visits = [
        t["stored_rows"].get("visits") for t in trials if t["contender"] == "metronome-sqlite"
    ]

    summary = {
        "stages_us_per_line": {s: C.rounded(v) for s, v in stage_us.items()},
        "stages_gc_us_per_line": {s: C.rounded(v) for s, v in stage_gc_us.items()},
        "stages_sum_us_per_line": round(total_us, 3),
        "stage_ratio_to_goaccess": {
            s: C.rounded(C.ratio(v, goaccess_us)) for s, v in stage_us.items()
        },
        "stages_sum_ratio_to_goaccess": C.rounded(C.ratio(total_us, goaccess_us)),
        "goaccess_us_per_line": C.rounded(goaccess_us),
        "goaccess_marginal_us_per_line": C.rounded(goaccess_marginal_us),
        "goaccess_lines_per_cpu_s": C.rounded(goaccess_lines_per_cpu_s, 1),
        "import_us_per_line": C.rounded(import_us),
        "import_marginal_us_per_line": C.rounded(import_marginal_us),
        "import_startup_cpu_s": C.rounded(cpu_of["metronome-sqlite-small"]),
        "import_beyond_stages_us_per_line": C.rounded(
            None if import_marginal_us is None else import_marginal_us - total_us
        ),
        "import_lines_per_cpu_s": C.rounded(1e6 / import_us if import_us else None, 1),
        "import_to_goaccess_cpu": C.rounded(C.ratio(goaccess_us, import_us)),
        "bound": {
            "cores": CORES,
            "sum_over_cores_us_per_line": round(total_us / CORES, 3),
            "serial_shares_us_per_line": {k: C.rounded(v) for k, v in serial.items()},
            "largest_serial_share": largest,
            "wall_us_per_line_at_best": round(bound_us, 3),
            "best_lines_per_s": round(bound_lines_per_s, 1),
            "best_to_goaccess": C.rounded(C.ratio(bound_lines_per_s, goaccess_lines_per_cpu_s)),
        },
        "stages_us_per_line_range": {
            s: [
                min(t["stage_us_per_line"][s] for t in stage_rows),
                max(t["stage_us_per_line"][s] for t in stage_rows),
            ]
            for s in STAGES
        },
        "visit_summaries_per_line": C.rounded(
            C.median(t["stored_rows"].get("visits", 0) for t in stage_rows) / n  # type: ignore[operator]
        ),
        "pickled_bytes_per_line": C.rounded(
            C.median(t["pickled_bytes"] for t in stage_rows) / n,
            1,  # type: ignore[operator]
        ),
        "visits_stored": {"stages": stage_visits, "metronome-sqlite": import_visits},
        "visits_agree": len(set(stage_visits + import_visits)) == 1,
    }
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "lines": n,
            "small_lines": small,
            "lines_seed": args.lines_seed,
            "trials": args.trials,
            "warmup": "one unrecorded run of each contender",
            "seed": seed,
            "cpu_pinned": cpu,
            "format": "combined",
            "url_rules": RULES,
            "trusted_proxies": TRUSTED_PROXIES,
            "log_file_bytes": log_info["bytes"],
            "log_file_sha256": log_info["sha256"],
            "rule_matched_share": log_info["rule_matched_share"],
            "batch_docs": BATCH_DOCS,
            "gc_thresholds": list(_GC_THRESHOLDS),
            "sync_every_s": SYNC_EVERY_S,
            "pickle_protocol": pickle.DEFAULT_PROTOCOL,
            "stages": "in a process forked after _bound_malloc() and _load_shared_data(),"
            " pinned to cpu_pinned, gc thresholds as the import's; per block of batch_docs"
            " lines: read (open_lines), parse (_BlockParser.documents), visits"
            " (_BlockParser.assign), encode (_BlockParser.send_assigned: sqlite_rows of"
            " documents and ended visits' summaries, plus done()'s last summaries), pickle"
            " (ForkingPickler.dumps of each batch message), receive (pickle.loads), write"
            " (SQLiteStore.write_encoded as _Writer calls it); time.process_time",
            "goaccess": "goaccess FILE --log-format=COMBINED --no-global-config -o"
            " report.json; CPU = user + system (wait4)",
            "metronome-sqlite": "python -m metronome import FILE (embedded store); CPU ="
            " user + system (wait4) of it and its parsing processes",
            "marginal": "(CPU of the file - CPU of its first small_lines lines) /"
            " (lines - small_lines): start-up taken out",
            "bound": "best lines/s on `cores` cores = 1e6 / max(stage sum / cores, the"
            " largest serial share), against GoAccess's lines per CPU second",
            "unit": "µs of CPU per line (median of trials)",
        },
        "environment": C.environment(
            loadavg_at_start=load_at_start, goaccess=goaccess_version(goaccess)
        ),
        "warmup_cpu_s": warmup,
        "trials": trials,
        "summary": summary,
    }
    out = C.write_results(NAME, results, args.output)

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    print(f"{NAME}: {n:,} lines, CPU µs per line (median of {args.trials})")
    print(f"  {'stage':10} {'µs/line':>9} {'of it gc':>9} {'x goaccess':>11}  process")
    for s in STAGES:
        print(
            f"  {s:10} {fmt(stage_us[s], '9.2f')} {fmt(stage_gc_us[s], '9.2f')}"
            f" {fmt(C.ratio(stage_us[s], goaccess_us), '11.2f')}  {PROCESS_OF[s]}"
        )
    print(
        f"  {'sum':10} {total_us:9.2f} {sum(v or 0 for v in stage_gc_us.values()):9.2f}"
        f" {fmt(C.ratio(total_us, goaccess_us), '11.2f')}"
    )
    print(
        f"  ({summary['visit_summaries_per_line']} visit summaries and"
        f" {summary['pickled_bytes_per_line']:,.0f} pickled bytes per line)"
    )
    print(
        f"  goaccess   {fmt(goaccess_us, '9.2f')} (marginal {fmt(goaccess_marginal_us, '.2f')})"
        f"  = {fmt(goaccess_lines_per_cpu_s, ',.0f')} lines per CPU second"
    )
    print(
        f"  import     {fmt(import_us, '9.2f')} (marginal {fmt(import_marginal_us, '.2f')},"
        f" {fmt(summary['import_beyond_stages_us_per_line'], '.2f')} beyond the stages;"
        f" start-up {fmt(cpu_of['metronome-sqlite-small'], '.2f')} s)"
    )
    print(
        f"  bound on {CORES} cores: max(sum/{CORES} {total_us / CORES:.2f}, {largest}"
        f" {serial[largest]:.2f}) = {bound_us:.2f} µs/line -> {bound_lines_per_s:,.0f} lines/s"
        f" = {fmt(summary['bound']['best_to_goaccess'], '.2f')}x GoAccess"
        f" -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
