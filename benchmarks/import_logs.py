"""Importing access-log history: ``metronome import`` versus GoAccess and the bulk helpers.

One reproducible ``combined`` log (default 1,000,000 lines, ``--lines`` to scale down) is
generated with ``benchmarks/parse.py``'s generator (``--lines-seed``) and written once to
a temporary directory. Every contender then reads that same file as a separate command,
timed as a whole (interpreter start-up included) in wall seconds, with its peak memory
(``VmHWM`` of ``/proc/<pid>/status``, polled every 20 ms) and CPU time (``wait4``):

* metronome-sqlite: ``python -m metronome import FILE`` into the embedded store (a fresh
  ``METRONOME_DATA_DIR``, no ``METRONOME_ELASTICSEARCH_URL``); afterwards
  ``SELECT count(*) FROM events WHERE dataset='logs'`` must equal the ``stored`` of the
  import's summary line, and ``read`` the number of lines;
* metronome-elasticsearch: the same command into a real Elasticsearch (a fresh
  ``METRONOME_INDEX_PREFIX`` whose templates ``metronome templates install`` put in first,
  as a running server would have); afterwards ``_refresh`` + ``_count`` on
  ``<prefix>-logs-*`` must equal ``stored``;
* loader (the baseline): a minimal loader in Python: one precompiled regex per line (the
  regex floor of ``benchmarks/parse.py``) and the matched groups as raw tuples into one
  SQLite table (no key, no index) with ``executemany``, one transaction per 1,000 lines,
  WAL and ``synchronous=FULL`` like the embedded store;
* read_floor: ``for line in open(file): pass``, what reading the file costs at all.

Both Metronome runs use ``METRONOME_LOG_FORMAT=combined`` and URL rules that match the
generated dataset pages, downloads and map views (``RULES``: about 58% of the lines).
The import runs without ``--quiet``, since the summary line (``read N lines, stored M,
...``, on stderr) is what the counts are checked against; on a pipe its progress display
draws nothing. Elasticsearch: METRONOME_TEST_ELASTICSEARCH_URL if set, else a throwaway
server from tests/support/es_server.py. Trials run in shuffled rounds (``--seed``);
one round by default, as a round at 1,000,000 lines takes minutes.

    python -m benchmarks.import_logs [--lines 1000000] [--trials 1] [--contenders ...]

Contenders (issue 24), in the same shuffled rounds:

* goaccess: Debian's ``goaccess FILE --log-format=COMBINED -o report.json`` (installed
  with apt when missing; an error when it cannot be), timed as a whole command; its JSON
  report must count every line as a valid request;
* parallel_bulk, streaming_bulk: ``elasticsearch.helpers`` indexing the very documents
  the import makes (NDJSON made by an untimed import into a scratch embedded store, read
  in a bare interpreter: ``json.loads`` per line, ``create`` actions, chunk_size 500)
  into a fresh prefix with Metronome's templates, on the same server.

Goals: metronome-sqlite >= 1.0x goaccess's lines/s, with the whole import's peak memory
(the highest sum of the PSS of it and its parsing process) <= 300 MiB; and
metronome-elasticsearch >= 0.8x the faster bulk helper. ``summary.passed`` says which.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from benchmarks import _common as C

NAME = "import_logs"
DEFAULT_LINES = 1_000_000
LOADER_BATCH = 1000
RULES = "/datasets/{id}/download.{format} -> download; /datasets/{id} -> view; /maps/{id}/* -> view"
TRUSTED_PROXIES = "10.0.0.0/8"
CONTENDERS = (
    "metronome-sqlite",
    "metronome-elasticsearch",
    "goaccess",
    "parallel_bulk",
    "streaming_bulk",
    "loader",
    "read_floor",
)
GOALS = {"metronome-sqlite/goaccess": 1.0, "metronome-elasticsearch/bulk": 0.8}
BULK_HELPERS = ("parallel_bulk", "streaming_bulk")
MAX_TREE_RSS_MIB = 300
BULK_CHUNK = 500
SUMMARY_LINE = re.compile(
    r"read (\d+) lines, stored (\d+),(?: already stored \d+,)? rejected (\d+)(?: \(([^)]*)\))?,"
    r" bots (\d+)(?:, dead letters (\d+))?"
)


# --------------------------------------------------------------------------- the log file


class _CachedWeightsRandom(random.Random):
    """``random.Random`` whose ``choices(population, weights)`` keeps the cumulative weights
    of each weights list it sees: the same draws (``choices`` computes exactly these
    cumulative sums on every call), without re-summing 5,000 weights per generated line."""

    def __init__(self, seed: Any = None) -> None:
        super().__init__(seed)
        self._cumulative: dict[int, tuple[Any, list[float]]] = {}

    def choices(
        self, population: Any, weights: Any = None, *, cum_weights: Any = None, k: int = 1
    ) -> list[Any]:
        if weights is not None and cum_weights is None:
            cached = self._cumulative.get(id(weights))
            if cached is None or cached[0] is not weights:
                cached = (weights, list(itertools.accumulate(weights)))
                self._cumulative[id(weights)] = cached
            return super().choices(population, cum_weights=cached[1], k=k)
        return super().choices(population, weights, cum_weights=cum_weights, k=k)


@contextmanager
def _fast_generator() -> Iterator[None]:
    """``benchmarks.parse.generate_lines`` with :class:`_CachedWeightsRandom` as its RNG."""
    from benchmarks import parse

    original = parse.random
    shim = type(sys)("random")
    shim.__dict__.update(original.__dict__)
    shim.Random = _CachedWeightsRandom  # type: ignore[attr-defined]
    parse.random = shim  # type: ignore[assignment]
    try:
        yield
    finally:
        parse.random = original


def generate_lines(n: int, seed: int, *, check: int = 2000) -> list[str]:
    """``benchmarks.parse.generate_lines(n, seed)``, faster; its first ``check`` lines are
    compared with the unmodified generator's and any difference fails the run."""
    from benchmarks import parse

    with _fast_generator():
        lines = parse.generate_lines(n, seed)
    reference = parse.generate_lines(min(check, n), seed)
    if lines[: len(reference)] != reference:
        raise C.BenchmarkError(
            "the faster generator's lines differ from benchmarks.parse.generate_lines'"
        )
    return lines


def write_log(lines: list[str], path: Path) -> dict[str, Any]:
    """Write the lines (``\\n`` after each); size, SHA-256 and how many lines the rules match."""
    from metronome.logs.rules import UrlRules

    rules = UrlRules.parse(RULES)
    matched: dict[str, int] = {}
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for start in range(0, len(lines), 10_000):
            chunk = ("\n".join(lines[start : start + 10_000]) + "\n").encode()
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    for line in lines:
        target = line.split('"', 2)[1].split(" ")[1]
        found = rules.match(target.split("?", 1)[0])
        if found is not None:
            matched[found.event] = matched.get(found.event, 0) + 1
    return {
        "bytes": size,
        "sha256": digest.hexdigest(),
        "rule_matches": matched,
        "rule_matched_share": round(sum(matched.values()) / max(len(lines), 1), 4),
    }


# --------------------------------------------------------------------------- baselines
# Each runs alone in a bare interpreter (``python -c`` with the function's source).


def minimal_loader(path: str, db: str, pattern: str, batch: str = "1000") -> None:
    """Match each line with one regex, insert the raw groups into SQLite, print counts."""
    import json
    import re
    import sqlite3

    size = int(batch)
    match = re.compile(pattern).match
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE lines (remote_addr TEXT, ident TEXT, remote_user TEXT,"
        " time_local TEXT, request TEXT, status TEXT, body_bytes TEXT,"
        " referrer TEXT, user_agent TEXT)"
    )
    insert = "INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    rows: list[tuple[str, ...]] = []
    read = stored = 0

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            read += 1
            found = match(line)
            if found is None:
                continue
            rows.append(found.groups())
            if len(rows) >= size:
                flush()
                stored += len(rows)
                rows = []
    if rows:
        flush()
        stored += len(rows)
    conn.close()
    print(json.dumps({"read": read, "stored": stored}))


def bulk_helper(path: str, url: str, prefix: str, helper: str, chunk: str = "500") -> None:
    """Index NDJSON ``{"_index", "_id", "_source"}`` lines with ``elasticsearch.helpers``
    (``parallel_bulk`` with its 4 threads, or ``streaming_bulk``), ``create`` actions."""
    import json

    from elasticsearch import Elasticsearch
    from elasticsearch.helpers import parallel_bulk, streaming_bulk

    client = Elasticsearch(url, request_timeout=120)

    def actions():  # type: ignore[no-untyped-def]
        with open(path, "rb") as f:
            for line in f:
                doc = json.loads(line)
                yield {
                    "_op_type": "create",
                    "_index": f"{prefix}-{doc['_index']}",
                    "_id": doc["_id"],
                    "_source": doc["_source"],
                }

    run = parallel_bulk if helper == "parallel_bulk" else streaming_bulk
    ok = failed = 0
    for done, _item in run(client, actions(), chunk_size=int(chunk), raise_on_error=False):
        ok += done
        failed += not done
    print(json.dumps({"indexed": ok, "failed": failed}))


def read_floor(path: str) -> None:
    """``for line in open(path): pass``, and the number of lines."""
    n = 0
    for _line in open(path):  # noqa: SIM115 - the floor is exactly this loop
        n += 1
    print(f'{{"read": {n}}}')


def _python_call(function: Any, *args: str) -> list[str]:
    """``python -c`` running only ``function``'s own source: no Metronome, no benchmark
    modules imported, so start-up and memory are a bare interpreter's plus the function's."""
    code = (
        textwrap.dedent(inspect.getsource(function))
        + f"\nimport sys\n{function.__name__}(*sys.argv[1:])\n"
    )
    return [sys.executable, "-c", code, *args]


# --------------------------------------------------------------------------- measuring


def run_measured(
    cmd: list[str],
    env: dict[str, str],
    out_dir: Path,
    name: str,
    timeout_s: float,
    poll_s: float = 0.02,
    tree_poll_s: float = 0.5,
) -> dict[str, Any]:
    """Run ``cmd`` to the end: wall seconds, exit code, peak RSS and CPU time.

    Peak RSS is the highest ``VmHWM`` of ``/proc/<pid>/status`` read every ``poll_s``
    while it runs: ``ru_maxrss`` from ``wait4`` (or ``RUSAGE_CHILDREN``) is useless here,
    as Linux carries the parent's high-water mark across the (v)fork + exec into the
    child's, so a child of this process (which held the generated lines) would show ours.
    The PSS of the process tree is summed every ``tree_poll_s`` only: reading
    ``smaps_rollup`` walks each process's page tables, about 12 ms of CPU per sample
    with an import's three processes, which at every ``poll_s`` took a third of a core
    from a command that uses both (GoAccess, on one core, left the other to it); the
    peak it looks for lasts seconds (the visit book fills, then holds). CPU time (user,
    system) comes from ``wait4``.
    """
    out_path, err_path = out_dir / f"{name}.stdout", out_dir / f"{name}.stderr"
    reaped: dict[str, Any] = {}
    peak_kb = tree_peak_kb = 0
    samples = 0
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=C.REPO, env=env, stdout=out, stderr=err, start_new_session=True
        )

        def reap() -> None:
            reaped["wait4"] = os.wait4(proc.pid, 0)
            reaped["ended"] = time.perf_counter()

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        deadline = started + timeout_s
        tree_at = started
        while reaper.is_alive() and time.perf_counter() < deadline:
            hwm = C.proc_status_kb(proc.pid, "VmHWM")
            if hwm is not None:
                peak_kb = max(peak_kb, hwm)
                samples += 1
                if time.perf_counter() >= tree_at:
                    tree_peak_kb = max(tree_peak_kb, _tree_pss_kb(proc.pid))
                    tree_at = time.perf_counter() + tree_poll_s
            reaper.join(poll_s)
        if reaper.is_alive():
            os.killpg(proc.pid, signal.SIGKILL)
            reaper.join()
            proc.returncode = -signal.SIGKILL
            raise C.BenchmarkError(f"{name}: still running after {timeout_s:.0f}s, killed")
    _, status, usage = reaped["wait4"]
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": reaped["ended"] - started,
        "returncode": proc.returncode,
        "max_rss_mib": peak_kb / 1024 if samples else None,
        "max_tree_pss_mib": tree_peak_kb / 1024 if samples else None,
        "rss_samples": samples,
        "cpu_user_s": usage.ru_utime,
        "cpu_system_s": usage.ru_stime,
        "stdout": out_path.read_text(errors="replace"),
        "stderr": err_path.read_text(errors="replace"),
    }


def _tree_pss_kb(pid: int) -> int:
    """The memory of ``pid`` and every process below it (``metronome import`` parses in a
    forked child) at one moment: the sum of their PSS (``/proc/<pid>/smaps_rollup``),
    which counts a page shared by two processes (copy-on-write after the fork) half in
    each rather than twice, as summing their RSS would."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for p in tree:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def parse_summary(stderr: str) -> dict[str, Any]:
    found = None
    for line in stderr.splitlines():
        found = SUMMARY_LINE.search(line) or found
    if found is None:
        raise C.BenchmarkError(
            "no summary line (`read N lines, stored M, ...`) on stderr:\n" + stderr[-2000:]
        )
    reasons = {}
    for part in (found.group(4) or "").split(", "):
        if part:
            reason, _, count = part.rpartition(" ")
            reasons[reason] = int(count)
    return {
        "read": int(found.group(1)),
        "stored": int(found.group(2)),
        "rejected": int(found.group(3)),
        "rejected_reasons": reasons,
        "bots": int(found.group(5)),
        "dead_letters": int(found.group(6) or 0),
        "summary_line": found.group(0),
    }


def metronome_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = C.child_env(
        METRONOME_DATA_DIR=str(data_dir),
        METRONOME_LOG_FORMAT="combined",
        METRONOME_URL_RULES=RULES,
        METRONOME_TRUSTED_PROXIES=TRUSTED_PROXIES,
        METRONOME_LOG_LEVEL="warning",
    )
    env.pop("METRONOME_ELASTICSEARCH_URL", None)
    env.update(extra)
    return env


def _rate(result: dict[str, Any], lines: int) -> dict[str, Any]:
    seconds = result["seconds"]
    cpu = result["cpu_user_s"] + result["cpu_system_s"]
    return {
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "cpu_s": cpu,
        "lines_per_cpu_s": lines / cpu if cpu else None,
        "max_rss_mib": result["max_rss_mib"],
        "max_tree_pss_mib": result["max_tree_pss_mib"],
        "rss_samples": result["rss_samples"],
        "cpu_user_s": result["cpu_user_s"],
        "cpu_system_s": result["cpu_system_s"],
    }


def _check_import(label: str, result: dict[str, Any], lines: int) -> dict[str, Any]:
    if result["returncode"] != 0:
        raise C.BenchmarkError(
            f"{label}: metronome import exited {result['returncode']}:\n" + result["stderr"][-2000:]
        )
    summary = parse_summary(result["stderr"])
    if summary["read"] != lines:
        raise C.BenchmarkError(f"{label}: the import read {summary['read']} of {lines} lines")
    other = [
        ln
        for ln in result["stderr"].splitlines()
        if ln.strip() and summary["summary_line"] not in ln
    ]
    summary["stderr_other_lines"] = len(other)
    summary["stderr_first_other"] = other[:5]
    return summary


def run_sqlite(
    path: Path, lines: int, work: Path, name: str, timeout_s: float, keep: bool
) -> dict[str, Any]:
    data_dir = work / f"{name}-data"
    data_dir.mkdir(mode=0o700)  # private, as Metronome wants its data directory
    try:
        result = run_measured(
            [sys.executable, "-m", "metronome", "import", str(path)],
            metronome_env(data_dir),
            work,
            name,
            timeout_s,
        )
        summary = _check_import(name, result, lines)
        conn = sqlite3.connect(data_dir / "metronome.sqlite3")
        try:
            count = conn.execute("SELECT count(*) FROM events WHERE dataset = 'logs'").fetchone()[0]
            actions = dict(
                conn.execute(
                    "SELECT coalesce(action, '(none)'), count(*) FROM events"
                    " WHERE dataset = 'logs' GROUP BY 1 ORDER BY 2 DESC"
                ).fetchall()
            )
        finally:
            conn.close()
        db_bytes = sum(p.stat().st_size for p in data_dir.glob("metronome.sqlite3*"))
        if count != summary["stored"]:
            raise C.BenchmarkError(
                f"{name}: the import reported {summary['stored']} stored,"
                f" the embedded store holds {count}"
            )
        return {
            **_rate(result, lines),
            **summary,
            "count_verified": count,
            "stored_actions": actions,
            "store_bytes": db_bytes,
        }
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def run_elasticsearch(
    es: C.Elasticsearch, path: Path, lines: int, work: Path, name: str, timeout_s: float, keep: bool
) -> dict[str, Any]:
    import httpx

    prefix = f"bench-import-{secrets.token_hex(3)}"
    data_dir = work / f"{name}-data"
    data_dir.mkdir(mode=0o700)  # private, as Metronome wants its data directory
    try:
        C.install_templates(es.url, prefix)
        env = metronome_env(
            data_dir, METRONOME_ELASTICSEARCH_URL=es.url, METRONOME_INDEX_PREFIX=prefix
        )
        result = run_measured(
            [sys.executable, "-m", "metronome", "import", str(path)], env, work, name, timeout_s
        )
        summary = _check_import(name, result, lines)
        pattern = f"{prefix}-logs-*"
        count = es.refresh_and_count(pattern)
        with_action = httpx.post(
            f"{es.url}/{pattern}/_count",
            json={"query": {"exists": {"field": "event.action"}}},
            timeout=120,
        ).json()["count"]
        indices = httpx.get(
            f"{es.url}/_cat/indices/{pattern}",
            params={
                "format": "json",
                "h": "index,docs.count,store.size",
                "bytes": "b",
                "s": "index",
            },
            timeout=60,
        ).json()
        if count != summary["stored"]:
            raise C.BenchmarkError(
                f"{name}: the import reported {summary['stored']} stored,"
                f" Elasticsearch counts {count} in {pattern}"
            )
        return {
            **_rate(result, lines),
            **summary,
            "count_verified": count,
            "stored_with_action": with_action,
            "prefix": prefix,
            "indices": {i["index"]: int(i["docs.count"]) for i in indices},
            "store_bytes": sum(int(i["store.size"]) for i in indices),
        }
    finally:
        if not keep:
            es.delete(f"{prefix}-*")
            shutil.rmtree(data_dir, ignore_errors=True)


def run_loader(
    path: Path, lines: int, work: Path, name: str, timeout_s: float, keep: bool
) -> dict[str, Any]:
    from benchmarks.parse import FLOOR

    db = work / f"{name}.sqlite3"
    try:
        result = run_measured(
            _python_call(minimal_loader, str(path), str(db), FLOOR.pattern, str(LOADER_BATCH)),
            C.child_env(),
            work,
            name,
            timeout_s,
        )
        if result["returncode"] != 0:
            raise C.BenchmarkError(
                f"{name} exited {result['returncode']}:\n" + result["stderr"][-2000:]
            )
        said = json.loads(result["stdout"].strip().splitlines()[-1])
        conn = sqlite3.connect(db)
        try:
            count = conn.execute("SELECT count(*) FROM lines").fetchone()[0]
        finally:
            conn.close()
        if said["read"] != lines or said["stored"] != lines or count != lines:
            raise C.BenchmarkError(
                f"{name}: read {said['read']}, stored {said['stored']},"
                f" {count} rows; expected {lines}"
            )
        db_bytes = sum(p.stat().st_size for p in work.glob(f"{name}.sqlite3*"))
        return {
            **_rate(result, lines),
            "read": said["read"],
            "stored": said["stored"],
            "count_verified": count,
            "store_bytes": db_bytes,
        }
    finally:
        if not keep:
            for p in work.glob(f"{name}.sqlite3*"):
                p.unlink()


def ensure_goaccess() -> str:
    """Debian's ``goaccess``: installed with apt when missing; an error when it cannot be."""
    found = shutil.which("goaccess")
    if found is None:
        print(f"{NAME}: installing goaccess with apt-get...", file=sys.stderr)
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "goaccess"]):
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as exc:
                raise C.BenchmarkError(f"goaccess is missing and {cmd[:2]} failed: {exc}") from exc
        found = shutil.which("goaccess")
        if found is None:
            raise C.BenchmarkError("goaccess is missing and apt-get did not install it")
    return found


def goaccess_version(goaccess: str) -> str:
    proc = subprocess.run([goaccess, "--version"], capture_output=True, text=True, timeout=30)
    return (proc.stdout.strip().splitlines() or ["?"])[0]


def run_goaccess(
    goaccess: str, path: Path, lines: int, work: Path, name: str, timeout_s: float, keep: bool
) -> dict[str, Any]:
    """``goaccess FILE --log-format=COMBINED -o report.json``: its JSON report must count
    every line as a valid request (the HTML report, or ``-o /dev/null``, which is HTML,
    takes longer and says nothing checkable)."""
    report = work / f"{name}.json"
    result = run_measured(
        [goaccess, str(path), "--log-format=COMBINED", "--no-global-config", "-o", str(report)],
        C.child_env(),
        work,
        name,
        timeout_s,
    )
    try:
        if result["returncode"] != 0:
            raise C.BenchmarkError(
                f"{name} exited {result['returncode']}:\n" + result["stderr"][-2000:]
            )
        general = json.loads(report.read_text())["general"]
        if general["total_requests"] != lines or general["valid_requests"] != lines:
            raise C.BenchmarkError(
                f"{name}: goaccess read {general['total_requests']} requests,"
                f" {general['valid_requests']} valid, of {lines} lines"
            )
        return {
            **_rate(result, lines),
            "read": general["total_requests"],
            "valid": general["valid_requests"],
            "unique_visitors": general["unique_visitors"],
        }
    finally:
        if not keep:
            report.unlink(missing_ok=True)


def prepare_documents(path: Path, lines: int, work: Path, timeout_s: float) -> Path:
    """The documents ``metronome import`` makes of the log, as NDJSON ``{"_index",
    "_id", "_source"}`` (``_index`` without its prefix), for the bulk helpers: made by an
    untimed import into a scratch embedded store, read back from it."""
    from metronome.store.elasticsearch import index_name

    data_dir = work / "documents-data"
    data_dir.mkdir()
    result = run_measured(
        [sys.executable, "-m", "metronome", "import", "--quiet", str(path)],
        metronome_env(data_dir),
        work,
        "documents",
        timeout_s,
    )
    if result["returncode"] != 0:
        raise C.BenchmarkError("making the documents failed:\n" + result["stderr"][-2000:])
    out = work / "documents.ndjson"
    conn = sqlite3.connect(data_dir / "metronome.sqlite3")
    written = 0
    try:
        with open(out, "wb") as f:
            for doc_id, ts, doc in conn.execute(
                "SELECT id, ts, doc FROM events WHERE dataset = 'logs'"
            ):
                index = index_name("", "logs", ts)[1:]
                f.write(
                    b'{"_index":"%s","_id":"%s","_source":%s}\n'
                    % (index.encode(), doc_id.encode(), doc.encode())
                )
                written += 1
    finally:
        conn.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    if written != lines:
        raise C.BenchmarkError(f"making the documents: {written} documents of {lines} lines")
    return out


def run_bulk(
    es: C.Elasticsearch,
    helper: str,
    documents: Path,
    lines: int,
    work: Path,
    name: str,
    timeout_s: float,
    keep: bool,
) -> dict[str, Any]:
    """``elasticsearch.helpers.<helper>`` indexing the finished documents into a fresh
    prefix with Metronome's templates, like the import; ``_count`` must be every one."""
    prefix = f"bench-bulk-{secrets.token_hex(3)}"
    try:
        C.install_templates(es.url, prefix)
        result = run_measured(
            _python_call(bulk_helper, str(documents), es.url, prefix, helper, str(BULK_CHUNK)),
            C.child_env(),
            work,
            name,
            timeout_s,
        )
        if result["returncode"] != 0:
            raise C.BenchmarkError(
                f"{name} exited {result['returncode']}:\n" + result["stderr"][-2000:]
            )
        said = json.loads(result["stdout"].strip().splitlines()[-1])
        count = es.refresh_and_count(f"{prefix}-logs-*")
        if said["indexed"] != lines or count != lines:
            raise C.BenchmarkError(
                f"{name}: indexed {said['indexed']}, failed {said['failed']},"
                f" {count} counted; expected {lines}"
            )
        return {**_rate(result, lines), "indexed": said["indexed"], "count_verified": count}
    finally:
        if not keep:
            es.delete(f"{prefix}-*")


def run_read_floor(
    path: Path, lines: int, work: Path, name: str, timeout_s: float
) -> dict[str, Any]:
    result = run_measured(_python_call(read_floor, str(path)), C.child_env(), work, name, timeout_s)
    if result["returncode"] != 0:
        raise C.BenchmarkError(
            f"{name} exited {result['returncode']}:\n" + result["stderr"][-2000:]
        )
    said = json.loads(result["stdout"].strip().splitlines()[-1])
    if said["read"] != lines:
        raise C.BenchmarkError(f"{name}: read {said['read']} of {lines} lines")
    return {**_rate(result, lines), "read": said["read"]}


def es_server_info(es: C.Elasticsearch) -> dict[str, Any]:
    """``es.info()``, with the version from ``_nodes`` when ``GET /`` has none (the
    integ-test distribution the test suite runs answers ``GET /`` with 405)."""
    import httpx

    info = es.info()
    if info.get("version") is None:
        try:
            nodes = httpx.get(
                f"{es.url}/_nodes/_local", params={"filter_path": "nodes.*.version"}, timeout=10
            ).json()
            info["version"] = next(iter(nodes["nodes"].values()))["version"]
        except (httpx.HTTPError, KeyError, StopIteration, ValueError):
            pass
    return info


def cli_startup_s() -> float:
    """Median wall time of ``python -m metronome --version``: start-up inside every import."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        C.metronome_cli("--version")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --------------------------------------------------------------------------- main


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def log_arguments(parser: Any, default_lines: int) -> None:
    """``--lines`` and ``--lines-seed``: the generated log this benchmark and
    ``benchmarks.import_stages`` read."""
    from benchmarks import parse as P

    parser.add_argument(
        "--lines",
        type=int,
        default=default_lines,
        help=f"lines in the generated log [default: {default_lines}]",
    )
    parser.add_argument(
        "--lines-seed",
        type=int,
        default=P.DEFAULT_LINES_SEED,
        help=f"seed of the generated lines [default: {P.DEFAULT_LINES_SEED}]",
    )


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=1, warmup=None)
    log_arguments(parser, DEFAULT_LINES)
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)} [default: all]",
    )
    parser.add_argument("--es-heap", default="1g", help="heap of the throwaway Elasticsearch")
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds before one contender's run is killed [default: 1800]",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (log file, data, output) and the Elasticsearch indices",
    )
    args = parser.parse_args(argv)
    if args.duration is not None or args.warmup is not None:
        print(
            f"{NAME}: --duration/--warmup do not apply (a trial is one import of --lines;"
            " there is no warm-up: the file is in the page cache for every contender)",
            file=sys.stderr,
        )
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(contenders) - set(CONTENDERS))
    if unknown or not contenders:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    seed = C.new_seed(args.seed)
    load_at_start = C.loadavg()
    started_at = time.time()
    work = C.temp_dir("metronome-bench-import-")
    log_path = work / "access.log"

    print(f"{NAME}: generating {args.lines:,} combined lines into {log_path}...", file=sys.stderr)
    gen_started = time.perf_counter()
    try:
        lines = generate_lines(args.lines, args.lines_seed)
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        return 1
    generation_s = time.perf_counter() - gen_started
    log_info = write_log(lines, log_path)
    distinct_agents = len({line.rsplit('"', 2)[-2] for line in lines})
    del lines
    n = args.lines

    trials: list[dict[str, Any]] = []
    es_info: dict[str, Any] | None = None
    es_context = (
        C.Elasticsearch(args.es_heap)
        if {"metronome-elasticsearch", *BULK_HELPERS} & set(contenders)
        else nullcontext(None)
    )
    goaccess = goaccess_info = None
    try:
        if "goaccess" in contenders:
            goaccess = ensure_goaccess()
            goaccess_info = goaccess_version(goaccess)
        documents = None
        if set(BULK_HELPERS) & set(contenders):
            print(f"{NAME}: making the documents for the bulk helpers...", file=sys.stderr)
            documents = prepare_documents(log_path, n, work, args.timeout)
        with es_context as es:
            if es is not None:
                es_info = es_server_info(es)
            startup = cli_startup_s()
            for round_no, label in C.trial_order(contenders, args.trials, seed):
                name = f"{label}-{round_no}"
                if label == "metronome-sqlite":
                    r = run_sqlite(log_path, n, work, name, args.timeout, args.keep)
                elif label == "metronome-elasticsearch":
                    assert es is not None
                    r = run_elasticsearch(es, log_path, n, work, name, args.timeout, args.keep)
                elif label == "goaccess":
                    assert goaccess is not None
                    r = run_goaccess(goaccess, log_path, n, work, name, args.timeout, args.keep)
                elif label in BULK_HELPERS:
                    assert es is not None and documents is not None
                    r = run_bulk(es, label, documents, n, work, name, args.timeout, args.keep)
                elif label == "loader":
                    r = run_loader(log_path, n, work, name, args.timeout, args.keep)
                else:
                    r = run_read_floor(log_path, n, work, name, args.timeout)
                trials.append({"round": round_no, "contender": label, **_rounded(r)})
                print(
                    f"  round {round_no} {label:24} {r['lines_per_s']:10,.0f} lines/s in"
                    f" {r['seconds']:7.2f} s, peak PSS {r['max_tree_pss_mib']:6.1f} MiB",
                    file=sys.stderr,
                )
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        print(f"{NAME}: files kept in {work}", file=sys.stderr)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    def med(label: str, key: str) -> float | None:
        return C.median(t[key] for t in trials if t["contender"] == label and t[key] is not None)

    per_contender = {
        label: {
            "lines_per_s": C.rounded(med(label, "lines_per_s"), 1),
            "seconds": C.rounded(med(label, "seconds")),
            "max_rss_mib": C.rounded(med(label, "max_rss_mib"), 1),
            "max_tree_pss_mib": C.rounded(med(label, "max_tree_pss_mib"), 1),
            "cpu_s": C.rounded(med(label, "cpu_s")),
            "lines_per_cpu_s": C.rounded(med(label, "lines_per_cpu_s"), 1),
        }
        for label in contenders
    }

    def ratio_to(label: str, base: str) -> float | None:
        if label not in per_contender or base not in per_contender:
            return None
        return C.rounded(
            C.ratio(per_contender[label]["lines_per_s"], per_contender[base]["lines_per_s"])
        )

    ratios = {
        f"{label}/{base}": ratio_to(label, base)
        for label in ("metronome-sqlite", "metronome-elasticsearch")
        for base in ("goaccess", "loader", "read_floor")
    }
    helpers = [h for h in BULK_HELPERS if h in per_contender]
    fastest_bulk = max(helpers, key=lambda h: per_contender[h]["lines_per_s"] or 0, default=None)
    ratios["metronome-elasticsearch/bulk"] = (
        ratio_to("metronome-elasticsearch", fastest_bulk) if fastest_bulk else None
    )
    for helper in helpers:
        ratios[f"metronome-elasticsearch/{helper}"] = ratio_to("metronome-elasticsearch", helper)
    passed: dict[str, bool | None] = {
        key: None if ratios.get(key) is None else ratios[key] >= goal  # type: ignore[operator]
        for key, goal in GOALS.items()
    }
    tree_peak = per_contender.get("metronome-sqlite", {}).get("max_tree_pss_mib")
    passed["metronome-sqlite/peak_memory"] = (
        None if tree_peak is None else tree_peak <= MAX_TREE_RSS_MIB
    )
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "lines": n,
            "lines_seed": args.lines_seed,
            "trials": args.trials,
            "seed": seed,
            "contenders": contenders,
            "format": "combined",
            "url_rules": RULES,
            "trusted_proxies": TRUSTED_PROXIES,
            "es_heap": args.es_heap,
            "log_file_bytes": log_info["bytes"],
            "log_file_sha256": log_info["sha256"],
            "distinct_user_agents": distinct_agents,
            "rule_matches_expected": log_info["rule_matches"],
            "rule_matched_share": log_info["rule_matched_share"],
            "generation_s": round(generation_s, 2),
            "metronome": "python -m metronome import FILE (no --quiet: the summary line on"
            " stderr is checked), timed as a whole command",
            "loader": "python -c: one precompiled regex (benchmarks.parse.FLOOR) per line,"
            " raw groups into one SQLite table (no key, no index), executemany,"
            f" one transaction per {LOADER_BATCH} lines, WAL, synchronous=FULL",
            "read_floor": "python -c: for line in open(file): pass",
            "goaccess": "goaccess FILE --log-format=COMBINED --no-global-config -o"
            " report.json (its JSON must count every line valid)",
            "bulk_helpers": "python -c: elasticsearch.helpers.parallel_bulk (4 threads) or"
            f" streaming_bulk, chunk_size {BULK_CHUNK}, create actions, reading NDJSON of the"
            " documents metronome import made (an untimed import into a scratch embedded"
            " store), into a fresh prefix with Metronome's templates",
            "unit": "lines per wall second of the whole command (median of trials);"
            " max_rss_mib is the command's VmHWM (/proc/<pid>/status, polled"
            " every 20 ms; ru_maxrss would carry this process's over the fork);"
            " max_tree_pss_mib the highest sum of PSS (smaps_rollup) over it and its child"
            " processes at one poll (the import parses in a forked child)",
        },
        "environment": C.environment(
            elasticsearch_server=es_info, loadavg_at_start=load_at_start, goaccess=goaccess_info
        ),
        "cli_startup_s": round(startup, 3),
        "trials": trials,
        "summary": {
            **{label.replace("-", "_"): values for label, values in per_contender.items()},
            "ratios": ratios,
            "fastest_bulk_helper": fastest_bulk,
            "goal": {**GOALS, "metronome-sqlite/peak_memory_mib": MAX_TREE_RSS_MIB},
            "passed": passed,
        },
    }
    out = C.write_results(NAME, results, args.output)
    parts = []
    for label in CONTENDERS:
        if label in per_contender:
            v = per_contender[label]
            parts.append(
                f"{label} {v['lines_per_s']:,.0f} lines/s ({v['seconds']:.1f} s,"
                f" {v['max_tree_pss_mib']:.0f} MiB)"
            )
    ratio_text = ", ".join(f"{k} {ratios[k]:.3f}" for k in GOALS if ratios.get(k) is not None)
    print(
        f"{NAME}: {n:,} lines: "
        + "; ".join(parts)
        + (f"; ratios: {ratio_text}" if ratio_text else "")
        + f" -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
