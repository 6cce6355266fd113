"""Shared pieces of the benchmarks: servers as subprocesses, wrk, trial order, results files."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.es_server import ElasticsearchServer
from tests.support.metronome_server import MetronomeServer

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
LUA_SCRIPT = REPO / "benchmarks" / "post.lua"

BROWSER_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)
TICK = {
    "id": "dataset-42",
    "event": "view",
    "url": "https://data.example.org/d/42",
    "referrer": "https://www.example.com/a",
    "plan": "pro",
}

PACKAGES = (
    "metronome-analytics",
    "falcon",
    "gunicorn",
    "uvicorn",
    "uvicorn-worker",
    "uvloop",
    "httptools",
    "orjson",
    "elasticsearch",
    "elastic-transport",
    "httpx",
    "ua-parser",
    "ua-parser-rs",
)


class BenchmarkError(RuntimeError):
    """A benchmark cannot produce a valid number (bad answers, missing tool or command)."""


# --------------------------------------------------------------------------- arguments


def base_parser(
    description: str, *, duration: float | None, trials: int, warmup: float | None
) -> argparse.ArgumentParser:
    """--duration, --trials, --warmup, --seed, --output; duration/warmup None: not used."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--duration",
        type=float,
        default=duration,
        help="not used by this benchmark"
        if duration is None
        else f"seconds per measured trial [default: {duration:g}]",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=trials,
        help=f"measured trials per contender [default: {trials}]",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=warmup,
        help="not used by this benchmark"
        if warmup is None
        else f"seconds of unrecorded warm-up per contender [default: {warmup:g}]",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the trial order (default: random, recorded)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="results file [default: benchmarks/results/<name>.json]",
    )
    return parser


def trial_order(labels: Sequence[str], trials: int, seed: int) -> list[tuple[int, str]]:
    """Rounds of every label once, each round in a shuffled order: [(round, label), ...]."""
    rng = random.Random(seed)
    order = []
    for round_no in range(trials):
        labels_now = list(labels)
        rng.shuffle(labels_now)
        order.extend((round_no, label) for label in labels_now)
    return order


def new_seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(1 << 31)


# --------------------------------------------------------------------------- environment


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.cache
def git_short_sha() -> str:
    """HEAD when first asked: call it (or :func:`environment`'s parts) at the start of a
    run, so a commit landing mid-run does not change the commit its results name."""
    return git("rev-parse", "--short", "HEAD")


@functools.cache
def git_state() -> tuple[str, bool]:
    """(full sha, whether metronome/ or its templates differ from it), cached like the sha."""
    status = git("status", "--porcelain", "--", "metronome", "pyproject.toml")
    return git("rev-parse", "HEAD"), bool(status and status != "unknown")


def pin_git() -> None:
    """Record the commit under test now (the results' environment names it)."""
    git_short_sha()
    git_state()


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews every number."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def environment(**extra: Any) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        from metronome import __version__ as metronome_version
    except ImportError:  # pragma: no cover
        metronome_version = None
    sha, dirty = git_state()
    return {
        "git_sha": sha,
        "git_short_sha": git_short_sha(),
        "git_dirty_metronome": dirty,
        "metronome_version": metronome_version,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "loadavg_at_end": loadavg(),
        "packages": versions,
        **extra,
    }


def write_results(name: str, data: dict[str, Any], output: Path | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json``: only the latest run is kept (its commit is
    in ``environment.git_sha``); earlier runs are in the file's git history."""
    path = output or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- statistics


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation): the value below which pct% of samples lie."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-pct * len(ordered) // 100)))  # ceil
    return ordered[min(rank, len(ordered)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- processes


def child_env(**overrides: str) -> dict[str, str]:
    """os.environ with this checkout first on PYTHONPATH, so ``-m metronome`` is this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.update(overrides)
    return env


def metronome_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metronome", *args],
        cwd=REPO,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_has(*args: str) -> tuple[bool, str]:
    """Whether ``metronome <args> --help`` succeeds; with its output (or error)."""
    proc = metronome_cli(*args, "--help")
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def cli_option(command: str, option: str) -> bool:
    ok, text = cli_has(command)
    return ok and re.search(rf"(^|\s){re.escape(option)}\b", text) is not None


def alive(server: MetronomeServer) -> bool:
    return server.proc is not None and server.proc.poll() is None


def start(server: MetronomeServer) -> MetronomeServer:
    """Start ``server`` and wait until it answers ``/readyz``; a BenchmarkError if not."""
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        raise BenchmarkError(str(exc)) from None
    return server


@contextlib.contextmanager
def running(server: MetronomeServer) -> Iterator[MetronomeServer]:
    """``with running(metronome_server(...)) as server:`` started, then stopped."""
    try:
        yield start(server)
    finally:
        server.stop()


def metronome_server(
    data_dir: Path,
    *,
    workers: int = 2,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    module: str = "metronome",
) -> MetronomeServer:
    """``python -m metronome serve ARGS`` from this checkout on a free port, with the test
    suite's :class:`MetronomeServer` (``module``: another module that serves the same way,
    e.g. ``benchmarks.undurable``, which adds ``serve`` itself); it logs to
    ``<data_dir>-server.log``."""
    settings = {
        "PYTHONPATH": child_env()["PYTHONPATH"],
        "METRONOME_ELASTICSEARCH_URL": "",
        **(env or {}),
    }
    command = ("metronome", "serve") if module == "metronome" else (module,)
    return MetronomeServer(settings, data_dir, workers=workers, args=tuple(args), command=command)


def bare_server(log_dir: Path, *, workers: int = 2, name: str = "bare") -> MetronomeServer:
    """The baseline app (``benchmarks.bare_app``), started and stopped like Metronome."""
    return MetronomeServer(
        {"PYTHONPATH": child_env()["PYTHONPATH"]},
        log_dir / name,
        workers=workers,
        command=("benchmarks.bare_app",),
    )


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --------------------------------------------------------------------------- /proc


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def descendants(root: int) -> list[int]:
    """All live descendants of ``root`` (children first), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = _ppid(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    found: list[int] = []
    frontier = [root]
    while frontier:
        children = sorted(pid for pid, ppid in parents.items() if ppid in frontier)
        found.extend(children)
        frontier = children
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, field: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- wrk


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        raise BenchmarkError(
            "wrk is not installed: install it (Debian/Ubuntu: "
            "`apt-get install -y wrk`; macOS: `brew install wrk`) and run again"
        )
    return wrk


def wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    proc = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    first = (proc.stdout + proc.stderr).strip().splitlines()
    return first[0] if first else None


def connections_per_process(port: int) -> list[int] | None:
    """How many established connections to ``port`` each server process holds, most
    first (``ss``, from iproute2); None where ``ss`` is missing. A keep-alive connection
    stays with the worker it landed on, so an uneven spread moves throughput."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        out = subprocess.run(
            [ss, "-tnpH", "state", "established", "sport", f"= :{port}"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def run_wrk(
    url: str,
    path: str,
    body: bytes,
    *,
    duration: float,
    connections: int,
    threads: int,
    expect: str | None = None,
    timeout_s: float = 10.0,
    script: Path = LUA_SCRIPT,
    script_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run POSTing ``body`` to ``url + path``; fails loudly on any bad answer.
    ``script``: another wrk script that prints the same BENCH_JSON line (built on
    post.lua), with ``script_env`` for its settings."""
    wrk = require_wrk()
    with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as f:
        f.write(body)
        body_file = f.name
    try:
        env = dict(
            os.environ,
            WRK_BODY_FILE=body_file,
            WRK_PATH=path,
            WRK_USER_AGENT=BROWSER_UA,
            WRK_EXPECT=expect or "",
            **(script_env or {}),
        )
        cmd = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(script),
            url + path,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(body_file)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if proc.returncode != 0 or not lines:
        raise BenchmarkError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    stats = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", proc.stdout)
    stats["non_2xx_line"] = int(non2xx.group(1)) if non2xx else 0
    seconds = stats["duration_us"] / 1e6
    stats["seconds"] = seconds
    stats["requests_per_s"] = stats["requests"] / seconds if seconds else 0.0
    errors = stats["errors"]
    bad = stats["bad_status"] + stats["bad_body"] + stats["non_2xx_line"]
    if bad or errors["status"]:
        raise BenchmarkError(
            f"{url}{path}: {stats['bad_status']} non-2xx and {stats['bad_body']} 2xx answers"
            f" without {expect!r} out of {stats['requests']} (wrk: {stats['non_2xx_line']}"
            f" non-2xx); first: {stats['example']}"
        )
    if errors["connect"] or errors["read"] or errors["write"] or errors["timeout"]:
        raise BenchmarkError(f"{url}{path}: socket errors {errors} in {stats['requests']} requests")
    return stats


# --------------------------------------------------------------------------- tick bodies

_EVENTS = ("view",) * 8 + ("download",) * 2
_FORMATS = ("csv", "kml", "shp", "geojson", "zip")
_PLANS = ("free", "pro", "team")
_REFERRERS = (
    "https://www.example.com/a",
    "https://www.arcgis.com/home",
    "https://www.google.com/",
    "https://news.example.net/story/7",
    None,
)


def realistic_ticks(
    n: int, seed: int = 42, *, ts_ms: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """``n`` ticks shaped like TICK: 1,000 items, mostly views, some downloads with formats.

    ``ts_ms``: optional pool of timestamps (epoch ms) to spread the ticks over (else none:
    the server's time of receipt).
    """
    rng = random.Random(seed)
    ticks = []
    for i in range(n):
        item = rng.randrange(1000)
        tick: dict[str, Any] = {
            "id": f"dataset-{item}",
            "event": rng.choice(_EVENTS),
            "url": f"https://data.example.org/d/{item}",
        }
        if tick["event"] == "download":
            tick["format"] = rng.choice(_FORMATS)
        referrer = rng.choice(_REFERRERS)
        if referrer:
            tick["referrer"] = referrer
        tick["plan"] = rng.choice(_PLANS)
        if ts_ms:
            tick["ts"] = ts_ms[i % len(ts_ms)]
        ticks.append(tick)
    return ticks


# --------------------------------------------------------------------------- Elasticsearch


class Elasticsearch:
    """A real Elasticsearch for a benchmark: METRONOME_TEST_ELASTICSEARCH_URL if set, else
    a throwaway single-node server from tests/support/es_server.py (stopped at exit)."""

    def __init__(self, heap: str = "1g") -> None:
        self.heap = heap
        self.url = os.environ.get("METRONOME_TEST_ELASTICSEARCH_URL", "").rstrip("/")
        self.external = bool(self.url)
        self._server: Any = None

    def __enter__(self) -> Elasticsearch:
        if not self.external:
            self._server = ElasticsearchServer(heap=self.heap)
            self._server.start()
            try:
                self._server.wait_ready()
            except BaseException:
                self._server.cleanup()
                raise
            self.url = self._server.url
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.cleanup()

    def info(self) -> dict[str, Any]:
        import httpx

        # GET / is not routed in the integ-test distribution: ask the node itself
        resp = httpx.get(
            f"{self.url}/_nodes/_local", params={"filter_path": "nodes.*.version"}, timeout=10
        )
        nodes = resp.json().get("nodes", {}) if resp.status_code == 200 else {}
        version = next((n.get("version") for n in nodes.values()), None)
        return {
            "version": version,
            "external": self.external,
            "heap": None if self.external else self.heap,
        }

    def refresh_and_count(self, pattern: str) -> int:
        import httpx

        httpx.post(
            f"{self.url}/{pattern}/_refresh",
            params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            timeout=120,
        ).raise_for_status()
        resp = httpx.get(
            f"{self.url}/{pattern}/_count",
            params={"ignore_unavailable": "true", "allow_no_indices": "true"},
            timeout=120,
        )
        resp.raise_for_status()
        return int(resp.json()["count"])

    def delete(self, pattern: str) -> None:
        import httpx

        httpx.delete(
            f"{self.url}/{pattern}",
            params={
                "ignore_unavailable": "true",
                "allow_no_indices": "true",
                "expand_wildcards": "all",
            },
            timeout=120,
        )


def install_templates(es_url: str, prefix: str) -> None:
    """``metronome templates install`` for ``prefix`` (as an operator would run it)."""
    env = child_env(METRONOME_ELASTICSEARCH_URL=es_url, METRONOME_INDEX_PREFIX=prefix)
    proc = metronome_cli("templates", "install", env=env)
    if proc.returncode != 0:
        raise BenchmarkError(
            f"metronome templates install failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
