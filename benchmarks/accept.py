"""CPU per ``POST /tick`` inside one worker, without HTTP: Metronome's ASGI app versus the bare app.

``benchmarks.ingest`` measures whole servers under wrk, where the HTTP server, the load
generator, the shipper and the disk share two cores and the numbers move from run to run.
This benchmark calls each ASGI app directly in this process, the way uvicorn calls it
once it has parsed a request, and counts the CPU time of the process (every thread, the
kernel's work for them included) per request. What it leaves out is the same for every
contender: uvicorn's HTTP parsing and socket work.

Contenders, each answering the same tick (``_common.TICK``) with the same headers, from
16 concurrent requests at a time (about what one of two workers holds under wrk's 32
connections):

* metronome: ``create_app`` on the embedded store in a temporary data directory, started
  through its lifespan: the ``POST /tick`` fast path, every check, the enrichment, and the
  spool append with its group ``fdatasync`` on the helper thread (no shipper runs here);
* undurable: the same app with the spool's ``fdatasync`` replaced by nothing, as in
  ``benchmarks/undurable.py``: what accepting a tick costs before durability;
* undurable_falcon: the same undurable app, the same tick sent to ``POST /tick/``, which
  Falcon's route answers (the same ``Tick.accept``, behind Falcon's request, response and
  middleware) instead of the fast path (``metronome/api/fastpath.py``): the fast path's
  gain is ``summary.fast_path_gain``, CPU per request through Falcon over through the
  fast path;
* bare: ``benchmarks/bare_app.py``'s Falcon app, which reads the body and answers
  ``202 {}``.

    python -m benchmarks.accept [--requests 30000] [--trials 5]

After the trials, ``summary.stages_us`` says where a tick's microseconds go: each stage of
the fast path (the same calls :meth:`metronome.api.ticks.Tick.accept` makes, in its order)
run on its own ``--stage-calls`` times on the same app, and the spool's ``fdatasync`` as
metronome's CPU per request minus undurable's. ``unaccounted`` is what is left of
undurable's figure: the event loop, tasks and futures, and the ASGI calls between stages.
``summary.metronome_fdatasyncs_per_request`` and ``metronome_fdatasync_ms`` count and time
the spool's syncs in metronome's trials (how many requests share one, and how long the
disk takes: the wait every request of a group pays).

No goal of its own: it says where ``benchmarks.ingest``'s gap comes from. The ratio
bare / metronome is what the single-tick ratio would be if HTTP cost nothing; the HTTP
work both servers pay brings the measured ratio closer to 1.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks import _common as C
from tests.support.asgi import post_scope

NAME = "accept"
DEFAULT_REQUESTS = 30_000
CONCURRENCY = 16
BODY = orjson.dumps(C.TICK)
HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"content-type", b"application/json"),
    (b"user-agent", C.BROWSER_UA.encode()),
    (b"content-length", str(len(BODY)).encode()),
]


def _scope(path: str) -> dict[str, Any]:
    return post_scope(path, HEADERS)


async def one_request(app: Any, path: str) -> int:
    """One ``POST`` of the tick to ``path`` through ``app``; its status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # the app asked again: the client has gone
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(path), receive, send)
    return status


async def run_requests(app: Any, n: int, path: str) -> None:
    """``n`` requests to ``path``, ``CONCURRENCY`` at a time; every answer must be 202."""
    per_task, extra = divmod(n, CONCURRENCY)

    async def client(count: int) -> None:
        for _ in range(count):
            status = await one_request(app, path)
            if status != 202:
                raise C.BenchmarkError(f"POST {path} answered {status}")

    await asyncio.gather(*(client(per_task + (i < extra)) for i in range(CONCURRENCY)))


class Lifespan:
    """Runs an ASGI app's lifespan startup, and its shutdown on :meth:`stop`."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(
            self._app(
                {"type": "lifespan", "asgi": {"version": "3.0"}},
                self._events.get,
                self._answers.put,
            )
        )
        await self._events.put({"type": "lifespan.startup"})
        answer = await self._answers.get()
        if answer["type"] != "lifespan.startup.complete":
            raise C.BenchmarkError(f"the app did not start: {answer}")

    async def stop(self) -> None:
        await self._events.put({"type": "lifespan.shutdown"})
        await self._answers.get()
        if self._task is not None:
            await self._task


def timed(loop: asyncio.AbstractEventLoop, app: Any, n: int, path: str) -> dict[str, float]:
    gc.collect()
    started_cpu, started = time.process_time(), time.perf_counter()
    loop.run_until_complete(run_requests(app, n, path))
    cpu_seconds = time.process_time() - started_cpu
    seconds = time.perf_counter() - started
    return {
        "cpu_us_per_request": cpu_seconds * 1e6 / n,
        "requests_per_cpu_s": n / cpu_seconds,
        "wall_us_per_request": seconds * 1e6 / n,
    }


STAGE_CALLS = 20_000


def stage_costs(loop: asyncio.AbstractEventLoop, app: Any, calls: int) -> dict[str, float]:
    """CPU microseconds per call of each stage of ``POST /tick`` on ``app`` (a
    :class:`~metronome.api.fastpath.FastIngest`), each run ``calls`` times on its own, in
    the order :meth:`~metronome.api.ticks.Tick.accept` runs them. The spool stage writes
    without ``fdatasync`` (its CPU is the trials' metronome minus undurable)."""
    from benchmarks.undurable import _no_sync
    from metronome.api import fastpath, render
    from metronome.api.body import decode_json, read_body, require_content_type
    from metronome.api.guard import named_sites
    from metronome.api.ticks import JSON_TYPES
    from metronome.pipeline import records, spool

    tick = app._tick
    guard = tick._guard
    settings = tick._settings
    scope = _scope("/tick")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    req = fastpath._Request(scope, receive)
    client_ip = tick._client_ip(req)
    raw = decode_json(BODY)
    access = loop.run_until_complete(guard.ingest(req, named_sites(req, (raw,)), client_ip, 1))
    info = loop.run_until_complete(tick._info(req, client_ip, access))
    document = tick._build(raw, info)
    encoded = records.encode_many([document])

    async def asgi_request() -> None:
        fastpath._Request(scope, receive)

    async def checks() -> None:
        require_content_type(req, JSON_TYPES)
        await guard.precheck_ingest(req, tick._client_ip(req))

    async def body() -> None:
        request = fastpath._Request(scope, receive)
        decode_json(await read_body(request, settings.max_body_bytes, tick._deadlines))

    async def sites() -> None:
        await guard.ingest(req, named_sites(req, (raw,)), client_ip, 1)

    async def request_info() -> None:
        await tick._info(req, client_ip, access)

    async def build() -> None:
        tick._build(raw, info)

    async def encode() -> None:
        records.encode_many([document])

    writer = tick._pipeline._writer

    async def spool_write() -> None:
        await writer.append(encoded)

    async def answer() -> None:
        await fastpath._answer(send, 202, render.dump_json({"id": document.id}), {}, None)

    stages = {
        "asgi_request": asgi_request,
        "checks": checks,
        "body": body,
        "sites": sites,
        "request_info": request_info,
        "build": build,
        "encode": encode,
        "spool_write": spool_write,
        "answer": answer,
    }

    # the spool's appends, as in the trials, from CONCURRENCY requests at once (they share
    # groups); the other stages one call after another
    concurrency = {"spool_write": CONCURRENCY}

    async def repeat(stage: Callable[[], Any], n: int, tasks: int = 1) -> None:
        async def client(count: int) -> None:
            for _ in range(count):
                await stage()

        await asyncio.gather(*(client(n // tasks) for _ in range(tasks)))

    synced = spool._fdatasync
    spool._fdatasync = _no_sync
    costs: dict[str, float] = {}
    try:
        for label, stage in stages.items():
            tasks = concurrency.get(label, 1)
            n = calls // tasks * tasks
            loop.run_until_complete(repeat(stage, min(n, 2_000), tasks))  # warm caches
            gc.collect()
            started = time.process_time()
            loop.run_until_complete(repeat(stage, n, tasks))
            costs[label] = (time.process_time() - started) * 1e6 / n
    finally:
        spool._fdatasync = synced
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=5, warmup=None)
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"requests per trial [default: {DEFAULT_REQUESTS}]",
    )
    parser.add_argument(
        "--stage-calls",
        type=int,
        default=STAGE_CALLS,
        help=f"calls of each stage for summary.stages_us [default: {STAGE_CALLS}]",
    )
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    C.pin_git()
    load_at_start = C.loadavg()
    started_at = time.time()

    data_dir = tempfile.mkdtemp(prefix="metronome-bench-accept-")
    for key in [k for k in os.environ if k.startswith("METRONOME_")]:
        del os.environ[key]  # this run's settings only: the embedded store, defaults
    os.environ.update(
        METRONOME_DATA_DIR=data_dir,
        METRONOME_LOG_LEVEL="warning",
        METRONOME_SPOOL_MAX_BYTES=str(8 << 30),
    )

    import uvloop

    from benchmarks.bare_app import app as bare_app
    from benchmarks.undurable import _no_sync
    from metronome.app import create_app
    from metronome.config import Settings
    from metronome.pipeline import spool

    synced = spool._fdatasync
    syncs: list[float] = []  # the wall seconds of each fdatasync of metronome's trials

    def counted(fd: int) -> OSError | None:
        """The spool's fdatasync, timed (on the spool's helper thread)."""
        started = time.perf_counter()
        try:
            return synced(fd)
        finally:
            syncs.append(time.perf_counter() - started)

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    metronome_app = create_app(Settings.from_env(os.environ))
    lifespan = Lifespan(metronome_app)

    def contender(
        app: Any, sync: Callable[[int], Any], path: str = "/tick"
    ) -> Callable[[int], dict[str, float]]:
        def run(n: int) -> dict[str, float]:
            spool._fdatasync = sync
            try:
                return timed(loop, app, n, path)
            finally:
                spool._fdatasync = synced

        return run

    contenders = {
        "metronome": contender(metronome_app, counted),
        "undurable": contender(metronome_app, _no_sync),
        "undurable_falcon": contender(metronome_app, _no_sync, "/tick/"),
        "bare": contender(bare_app, synced),
    }
    warmups: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    try:
        loop.run_until_complete(lifespan.start())
        for _, label in C.trial_order(list(contenders), 1, seed + 1):
            r = contenders[label](min(args.requests, 5_000))
            warmups[label] = {k: round(v, 1) for k, v in r.items()}
        syncs.clear()
        for round_no, label in C.trial_order(list(contenders), args.trials, seed):
            r = contenders[label](args.requests)
            trials.append(
                {"round": round_no, "contender": label, **{k: round(v, 1) for k, v in r.items()}}
            )
            print(
                f"  round {round_no} {label:10} {r['cpu_us_per_request']:6.1f} µs CPU"
                f" per request ({r['requests_per_cpu_s']:,.0f} per CPU second)",
                file=sys.stderr,
            )
        stages = stage_costs(loop, metronome_app, args.stage_calls)
        loop.run_until_complete(lifespan.stop())
    except C.BenchmarkError as exc:
        print(f"{NAME}: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
        shutil.rmtree(data_dir, ignore_errors=True)

    cpu_us = {
        label: C.median(t["cpu_us_per_request"] for t in trials if t["contender"] == label)
        for label in contenders
    }
    paired = []
    for round_no in range(args.trials):
        by = {t["contender"]: t["cpu_us_per_request"] for t in trials if t["round"] == round_no}
        paired.append(C.rounded(C.ratio(by["bare"], by["metronome"])))
    stages_us = {label: round(value, 1) for label, value in stages.items()}
    undurable_us = cpu_us["undurable"] or 0.0
    stages_us["fdatasync"] = round((cpu_us["metronome"] or 0.0) - undurable_us, 1)
    stages_us["unaccounted"] = round(undurable_us - sum(stages.values()), 1)
    results = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "parameters": {
            "requests": args.requests,
            "concurrency": CONCURRENCY,
            "trials": args.trials,
            "warmup": "one unrecorded run of each contender (up to 5,000 requests)",
            "seed": seed,
            "body_bytes": len(BODY),
            "metronome": "metronome.app.create_app, embedded store, spool synced on its"
            " helper thread, no shipper",
            "undurable": "the same app with the spool's fdatasync replaced by nothing",
            "undurable_falcon": "the undurable app, the tick sent to /tick/ (Falcon's route,"
            " not the fast path)",
            "bare": "benchmarks.bare_app.app (Falcon, answers 202 {})",
            "unit": "CPU microseconds of this process per request (median of trials);"
            " ASGI called directly, no HTTP",
            "stage_calls": args.stage_calls,
            "stages": "summary.stages_us: CPU µs per call of each stage of POST /tick run"
            " alone (spool_write without fdatasync); fdatasync = metronome - undurable;"
            " unaccounted = undurable - the stages (event loop, tasks, ASGI glue)",
        },
        "environment": C.environment(loadavg_at_start=load_at_start),
        "warmup": warmups,
        "trials": trials,
        "summary": {
            **{
                f"{label}_cpu_us_per_request": C.rounded(value, 1)
                for label, value in cpu_us.items()
            },
            "ratio_bare_to_metronome": C.rounded(C.ratio(cpu_us["bare"], cpu_us["metronome"])),
            "ratio_bare_to_undurable": C.rounded(C.ratio(cpu_us["bare"], cpu_us["undurable"])),
            "fast_path_gain": C.rounded(C.ratio(cpu_us["undurable_falcon"], cpu_us["undurable"])),
            "paired_ratios_bare_to_metronome": paired,
            "metronome_fdatasyncs_per_request": C.rounded(
                len(syncs) / (args.requests * args.trials)
            ),
            "metronome_fdatasync_ms": {
                "p50": C.rounded((C.percentile(syncs, 50) or 0.0) * 1e3),
                "p90": C.rounded((C.percentile(syncs, 90) or 0.0) * 1e3),
            },
            "stages_us": stages_us,
            "goal": None,
        },
    }
    out = C.write_results(NAME, results, args.output)
    print(
        f"{NAME}: µs CPU per POST /tick without HTTP: metronome {cpu_us['metronome']:.1f},"
        f" undurable {cpu_us['undurable']:.1f} (through Falcon {cpu_us['undurable_falcon']:.1f}),"
        f" bare {cpu_us['bare']:.1f}; bare/metronome"
        f" {results['summary']['ratio_bare_to_metronome']}, fast path gain"
        f" {results['summary']['fast_path_gain']} -> {C.display(out)}"
    )
    print(
        f"{NAME}: µs per stage: " + ", ".join(f"{k} {v}" for k, v in stages_us.items()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
