"""Cost per request of metronome.middleware: the same app called with and without it.

Each app is called in this process through its ASGI or WSGI interface, the way a server
calls it once it has parsed a request, so what differs between a pair of contenders is
the middleware alone: deciding to track (sampling and exclusion checks), timing, counting
the status and body bytes, reading the route template, and queueing the API call on a
real batching :class:`~metronome.client.Client` (a fresh one per trial; its background
thread sends nothing while requests are timed: every 1,000 requests the timers pause while
it sends what queued, as it would every second, to a local sink that answers
``POST /ticks`` as Metronome does, ``202`` with every tick accepted).
Contenders, each answering ``GET /items/{id}`` with a small JSON body:

* falcon_asgi / falcon_asgi_tracked: a ``falcon.asgi.App``, plain and through
  ``track_falcon`` (ASGIMiddleware + FalconRoute);
* falcon_wsgi / falcon_wsgi_tracked: a ``falcon.App``, plain and through ``track_falcon``
  (WSGIMiddleware + FalconRoute);
* flask / flask_tracked: a Flask app, plain and through ``track_flask`` (WSGIMiddleware
  around ``wsgi_app``, reading ``url_rule`` from the request Flask leaves in the environ
  while the response starts);
* flask_hooks: the floor of that approach, the same Flask app with the one hook tracking
  needs and nothing in it: ``wsgi_app`` wrapped by a function that passes the request on
  with a ``start_response`` of its own that only calls the server's (no timing, no
  recording).

    python -m benchmarks.middleware [--requests 20000] [--trials 5] [--pairs 40]

Goal: the middleware adds at most 10 µs per request to every app (the issue asks for
"a few microseconds"). Two estimates, both CPU time of the thread answering the requests:

* ``summary.<app>_overhead_us``: the median tracked minus the median plain trial (whole
  trials of ``--requests`` each, in shuffled order);
* ``summary.<app>_overhead_us_paired``: the median, over ``--pairs`` rounds, of tracked
  minus plain in chunks of 1,000 requests run back to back (each round in shuffled order):
  both halves of a pair see the same machine, so the load of other processes cancels far
  better than across whole trials; ``<app>_paired_quartiles_us`` beside it. The goal is
  judged on this one.

Beside them, figures that say how far to trust them on a busy machine:
``<app>_plain_spread_us``, how much the plain app's own trials differ, and
``<app>_calls_added_per_request``, the Python function calls the middleware adds per
request (counted with cProfile, untimed: the same on a quiet or a busy machine);
``flask_hooks_*`` the same figures for the empty hook.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import pstats
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import falcon
import falcon.asgi
import flask
import orjson

from benchmarks import _common as C
from metronome.client import Client
from metronome.middleware import ApiCallTracker, track_falcon, track_flask

NAME = "middleware"
DEFAULT_REQUESTS = 20_000
DEFAULT_PAIRS = 40
GOAL_US = 10.0
CALLS_REQUESTS = 1_000  # requests profiled to count calls
CHUNK = 1_000  # requests between two sends of the client (about a second's at 1,000/s)
# CPU time of the thread that answers the requests (time.thread_time): on a shared machine
# wall time also counts the time other processes held the CPU, and the process's CPU time
# the client's and the sink's threads (both recorded beside it per trial)
UNIT = "thread_cpu_us_per_request"
APPS = ("falcon_asgi", "falcon_wsgi", "flask")
HOOKS = "flask_hooks"  # the empty hook: what any tracking of a Flask app pays at least


class _AsyncItems:
    async def on_get(self, req: Any, resp: Any, item_id: str) -> None:
        resp.media = {"item": item_id}


class _Items:
    def on_get(self, req: Any, resp: Any, item_id: str) -> None:
        resp.media = {"item": item_id}


def _flask_app() -> flask.Flask:
    app = flask.Flask("bench")

    @app.get("/items/<item_id>")
    def item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    return app


def _empty_hook(app: flask.Flask) -> flask.Flask:
    """The hook ``track_flask`` uses, with nothing in it (the floor of any such tracking)."""
    inner = app.wsgi_app

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        def passing_start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
            return start_response(line, headers, exc_info)

        return inner(environ, passing_start_response)

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    return app


def _app(kind: str, tracker: ApiCallTracker | None) -> Any:
    if kind == HOOKS:
        return _empty_hook(_flask_app())
    if kind == "flask":
        app = _flask_app()
        return track_flask(app, tracker) if tracker else app
    falcon_app: Any = falcon.asgi.App() if kind == "falcon_asgi" else falcon.App()
    falcon_app.add_route("/items/{item_id}", _AsyncItems() if kind == "falcon_asgi" else _Items())
    return track_falcon(falcon_app, tracker) if tracker else falcon_app


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


def _environ(path: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8080",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": _EMPTY,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


class _Empty:
    def read(self, *args: Any) -> bytes:
        return b""

    def readline(self, *args: Any) -> bytes:
        return b""


_EMPTY = _Empty()


def _run_asgi(loop: asyncio.AbstractEventLoop, app: Any, n: int) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    status = [0]

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    async def requests() -> None:
        for i in range(n):
            await app(_scope(f"/items/{i % 100}"), receive, send)
            if status[0] != 200:
                raise C.BenchmarkError(f"the app answered {status[0]}")

    loop.run_until_complete(requests())


def _run_wsgi(app: Any, n: int) -> None:
    status = [""]

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status[0] = line
        return None

    for i in range(n):
        body = app(_environ(f"/items/{i % 100}"), start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        if not status[0].startswith("200"):
            raise C.BenchmarkError(f"the app answered {status[0]}")


class _Sink(BaseHTTPRequestHandler):
    """Takes the client's batches after a trial: ``202`` with every tick accepted."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        ticks = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = orjson.dumps({"accepted": len(ticks), "rejected": [], "ids": []})
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _contender(
    kind: str, tracked: bool, loop: asyncio.AbstractEventLoop, sink_url: str
) -> Callable[[int], dict[str, float]]:
    def run(n: int) -> dict[str, float]:
        client = tracker = None
        if tracked:
            client = Client(sink_url, batch_size=10**9, max_queue=10**8, flush_interval_s=10**6)
            tracker = ApiCallTracker(client)
        app = _app(kind, tracker)
        gc.collect()
        wall = cpu = thread = 0.0
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            wall_at, cpu_at = time.perf_counter(), time.process_time()
            thread_at = time.thread_time()
            if kind == "falcon_asgi":
                _run_asgi(loop, app, count)
            else:
                _run_wsgi(app, count)
            thread += time.thread_time() - thread_at
            wall += time.perf_counter() - wall_at
            cpu += time.process_time() - cpu_at
            # untimed: the client sends what queued, as its thread does every second
            if client is not None and not client.flush(120):
                raise C.BenchmarkError(f"{kind}: the client did not send {client.stats}")
        if tracker is not None:
            assert client is not None
            if tracker.stats.tracked != n or tracker.stats.failures or client.stats.sent != n:
                raise C.BenchmarkError(f"{kind}: {tracker.stats}, {client.stats} of {n}")
            client.close()
        return {
            "thread_cpu_us_per_request": thread / n * 1e6,
            "cpu_us_per_request": cpu / n * 1e6,
            "us_per_request": wall / n * 1e6,
        }

    return run


def _calls_per_request(kind: str, tracked: bool, loop: asyncio.AbstractEventLoop) -> float:
    """Python function calls per request (cProfile's count, untimed): what the middleware
    adds in calls does not move with the machine's load, unlike its time."""
    client = tracker = None
    if tracked:  # nothing is sent: the queue is dropped after the count
        client = Client("http://127.0.0.1:9", batch_size=10**9, flush_interval_s=10**6)
        tracker = ApiCallTracker(client)
    app = _app(kind, tracker)
    run = (lambda n: _run_asgi(loop, app, n)) if kind == "falcon_asgi" else None
    run = run or (lambda n: _run_wsgi(app, n))
    run(200)
    profile = cProfile.Profile()
    profile.enable()
    run(CALLS_REQUESTS)
    profile.disable()
    if client is not None:
        client._queue.clear()
        client.close()
    stats = pstats.Stats(profile).stats
    return sum(entry[1] for entry in stats.values()) / CALLS_REQUESTS


def _paired(
    kind: str, pairs: int, seed: int, loop: asyncio.AbstractEventLoop, sink_url: str
) -> dict[str, list[float]]:
    """Per round, CHUNK requests of each of ``kind``'s contenders (plain, tracked, and for
    Flask the empty hook) back to back, in shuffled order: each one's CPU µs per request
    minus the plain app's in the same round."""
    client = Client(sink_url, batch_size=10**9, max_queue=10**8, flush_interval_s=10**6)
    tracker = ApiCallTracker(client)
    apps = {kind: _app(kind, None), f"{kind}_tracked": _app(kind, tracker)}
    if kind == "flask":
        apps[HOOKS] = _app(HOOKS, None)

    def run(app: Any, n: int) -> float:
        at = time.thread_time()
        if kind == "falcon_asgi":
            _run_asgi(loop, app, n)
        else:
            _run_wsgi(app, n)
        return (time.thread_time() - at) / n * 1e6

    for app in apps.values():  # warm-up
        run(app, CHUNK)
    differences: dict[str, list[float]] = {label: [] for label in apps if label != kind}
    rounds: dict[int, list[str]] = {}
    for round_no, label in C.trial_order(list(apps), pairs, seed):
        rounds.setdefault(round_no, []).append(label)
    for labels in rounds.values():
        gc.collect()
        took = {label: run(apps[label], CHUNK) for label in labels}
        for label in differences:
            differences[label].append(took[label] - took[kind])
        if not client.flush(120):  # untimed: the client sends what queued
            raise C.BenchmarkError(f"{kind}: the client did not send {client.stats}")
    if tracker.stats.failures or client.stats.sent != tracker.stats.tracked:
        raise C.BenchmarkError(f"{kind}: {tracker.stats}, {client.stats}")
    client.close()
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=5, warmup=None)
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"requests per trial [default: {DEFAULT_REQUESTS}]",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=DEFAULT_PAIRS,
        help=f"rounds of the paired estimate, {CHUNK} requests each [default: {DEFAULT_PAIRS}]",
    )
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    C.pin_git()
    load_at_start = C.loadavg()
    started_at = time.time()
    loop = asyncio.new_event_loop()
    calls_loop = asyncio.new_event_loop()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, name="sink", daemon=True).start()
    sink_url = f"http://127.0.0.1:{sink.server_port}"
    contenders = {}
    for kind in APPS:
        contenders[kind] = _contender(kind, False, loop, sink_url)
        contenders[f"{kind}_tracked"] = _contender(kind, True, loop, sink_url)
    warmups: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    by_pairs: dict[str, dict[str, list[float]]] = {}
    try:
        for _, label in C.trial_order(list(contenders), 1, seed + 1):
            r = contenders[label](min(args.requests, 5_000))
            warmups[label] = {k: round(v, 2) for k, v in r.items()}
        for round_no, label in C.trial_order(list(contenders), args.trials, seed):
            r = contenders[label](args.requests)
            trials.append(
                {"round": round_no, "contender": label, **{k: round(v, 2) for k, v in r.items()}}
            )
            print(
                f"  round {round_no} {label:20} {r[UNIT]:7.2f} µs CPU per request",
                file=sys.stderr,
            )
        for kind in APPS:
            by_pairs[kind] = _paired(kind, args.pairs, seed + 2, loop, sink_url)
            print(f"  paired {kind} done", file=sys.stderr)
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
        sink.shutdown()
        sink.server_close()

    per_request = {
        label: C.median(t[UNIT] for t in trials if t["contender"] == label) for label in contenders
    }
    summary: dict[str, Any] = {
        f"{label}_thread_cpu_us_per_request": C.rounded(value, 2)
        for label, value in per_request.items()
    }
    overheads = {}
    for kind in APPS:
        plain, tracked = per_request[kind], per_request[f"{kind}_tracked"]
        assert plain is not None and tracked is not None
        overheads[kind] = tracked - plain
        summary[f"{kind}_overhead_us"] = C.rounded(tracked - plain, 2)
        summary[f"{kind}_ratio"] = C.rounded(C.ratio(plain, tracked))
        paired = []
        for round_no in range(args.trials):
            by = {t["contender"]: t[UNIT] for t in trials if t["round"] == round_no}
            paired.append(C.rounded(by[f"{kind}_tracked"] - by[kind], 2))
        summary[f"{kind}_overhead_us_per_round"] = paired
    # the paired estimate: tracked minus plain, chunk by chunk on the same machine
    paired_overheads = {}
    for kind in APPS:
        for label, differences in by_pairs[kind].items():
            name = kind if label == f"{kind}_tracked" else label
            middle = C.median(differences)
            assert middle is not None
            if name == kind:
                paired_overheads[kind] = middle
            quartiles = [C.percentile(sorted(differences), pct) for pct in (25, 75)]
            summary[f"{name}_overhead_us_paired"] = C.rounded(middle, 2)
            summary[f"{name}_paired_quartiles_us"] = [C.rounded(q, 2) for q in quartiles]
    # the noise floor: two runs of the same plain app differ by this much (a figure below
    # it is not resolved on this machine at this load), and the calls the middleware adds
    for kind in APPS:
        rounds = [t[UNIT] for t in trials if t["contender"] == kind]
        summary[f"{kind}_plain_spread_us"] = C.rounded(max(rounds) - min(rounds), 2)
        added = _calls_per_request(kind, True, calls_loop) - _calls_per_request(
            kind, False, calls_loop
        )
        summary[f"{kind}_calls_added_per_request"] = C.rounded(added, 1)
    hooks_calls = _calls_per_request(HOOKS, False, calls_loop)
    summary[f"{HOOKS}_calls_added_per_request"] = C.rounded(
        hooks_calls - _calls_per_request("flask", False, calls_loop), 1
    )
    calls_loop.close()
    summary["goal"] = f"every app's paired overhead <= {GOAL_US:g} µs per request"
    summary["passed"] = all(v <= GOAL_US for v in paired_overheads.values())
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "requests": args.requests,
            "trials": args.trials,
            "pairs": args.pairs,
            "paired": f"per round, {CHUNK} requests of each contender of an app back to back"
            " (shuffled), tracked (and the empty hook) minus plain; median over the rounds",
            "warmup": "one unrecorded run of each contender (up to 5,000 requests)",
            "seed": seed,
            "request": "GET /items/{i % 100}, answered with a small JSON body",
            "client": "metronome.client.Client, a fresh one per trial, queueing only while"
            f" timed; every {CHUNK} requests, untimed, flushed to a local sink answering"
            " POST /ticks with 202",
            "unit": "CPU microseconds per request of the thread answering them"
            " (time.thread_time, median of trials; the process's CPU time and wall time"
            " per trial beside it), one request at a time, the app called through ASGI or"
            " WSGI in this process (no HTTP)",
        },
        "environment": C.environment(loadavg_at_start=load_at_start),
        "warmup": warmups,
        "trials": trials,
        "summary": summary,
    }
    out = C.write_results(NAME, results, args.output)
    print(
        "middleware: overhead per request "
        + ", ".join(
            f"{k} {paired_overheads[k]:.2f} µs paired, {overheads[k]:.2f} µs by trials"
            f" (plain runs spread {summary[f'{k}_plain_spread_us']} µs,"
            f" {summary[f'{k}_calls_added_per_request']} calls added)"
            for k in APPS
        )
        + f"; Flask's empty hook {summary[f'{HOOKS}_overhead_us_paired']} µs paired"
        f" ({summary[f'{HOOKS}_calls_added_per_request']} calls)"
        + f" (goal <= {GOAL_US:g}: {'passed' if summary['passed'] else 'NOT met'})"
        f" -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
