"""RabbitMQ in: ``metronome worker`` consuming a queue versus a bare durable pika consumer.

Both drain the same pre-filled durable queue of N messages (default 2,000), each a JSON
array of ``--ticks`` realistic ticks (default 10), from a RabbitMQ started for the run
(tests/support/rabbitmq.py), with the same prefetch:

* baseline: a pika ``BlockingConnection`` consumer in this process that does the least a
  consumer that acknowledges only what is safe must do: decode each message's JSON, append
  its bytes to a file, ``fdatasync`` once per delivered group, then acknowledge the group.
* metronome: ``metronome worker`` (embedded store) with the queue in ``[[queues]]``
  (``kind = "ticks"``): every tick validated and built into a document, spooled durably,
  then acknowledged, while the same process ships the spool to the store. Timed from the
  first messages taken (as the baseline, start-up excluded; the whole command's time is
  recorded too) until the queue holds no ready message; then the worker is stopped and its
  state file must say every message was acknowledged, none dead-lettered.

After one unrecorded warm-up round of each, the measured trials alternate in shuffled
rounds.

    python -m benchmarks.queue_input [--messages 2000] [--ticks 10] [--trials 3]

Goal: Metronome's events/s >= 0.1 x the bare consumer's: it does far more per event
(validation, enrichment, documents, the spool's framing, and shipping to the store in the
same process) -- recorded, not asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pika

from benchmarks import _common as C
from tests.support.rabbitmq import RabbitMQServer

NAME = "queue_input"
GOAL_RATIO = 0.1


def fill(url: str, queue: str, bodies: list[bytes]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True)
        for index, body in enumerate(bodies):
            channel.basic_publish(
                "",
                queue,
                body,
                pika.BasicProperties(
                    delivery_mode=2, message_id=f"{queue}-{index}", timestamp=int(time.time())
                ),
            )
        deadline = time.monotonic() + 120
        while channel.queue_declare(queue, passive=True).method.message_count < len(bodies):
            if time.monotonic() > deadline:
                raise C.BenchmarkError(f"RabbitMQ did not take {len(bodies)} messages")
            time.sleep(0.05)
    finally:
        connection.close()


def ready(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def run_baseline(
    url: str, bodies: list[bytes], events: int, prefetch: int, work: Path
) -> dict[str, Any]:
    queue = f"bench-b-{uuid.uuid4().hex[:8]}"
    fill(url, queue, bodies)
    out = work / f"{queue}.ndjson"
    acked = decoded = 0
    connection = pika.BlockingConnection(pika.URLParameters(url))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        held: list[tuple[Any, bytes]] = []
        channel.basic_consume(queue, lambda _c, m, _p, b: held.append((m, b)))
        started = time.perf_counter()
        while acked < len(bodies):
            connection.process_data_events(time_limit=0 if held else 0.05)
            if not held:
                continue
            group, held = held, []
            for _method, body in group:
                decoded += len(orjson.loads(body))
            os.write(fd, b"\n".join(body for _, body in group) + b"\n")
            os.fdatasync(fd)
            for method, _body in group:
                channel.basic_ack(method.delivery_tag)
            acked += len(group)
        seconds = time.perf_counter() - started
        channel.queue_delete(queue)
    finally:
        os.close(fd)
        connection.close()
        out.unlink(missing_ok=True)
    if decoded != events:
        raise C.BenchmarkError(f"baseline decoded {decoded} ticks, expected {events}")
    return {
        "messages": acked,
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
    }


def run_metronome(
    url: str, bodies: list[bytes], events: int, prefetch: int, work: Path
) -> dict[str, Any]:
    queue = f"bench-m-{uuid.uuid4().hex[:8]}"
    fill(url, queue, bodies)
    data_dir = work / f"data-{queue}"
    config = work / f"{queue}.toml"
    config.write_text(
        f'[[queues]]\nname = "bench"\nqueue = "{queue}"\nkind = "ticks"\nprefetch = {prefetch}\n'
    )
    env = C.child_env(
        METRONOME_CONFIG=str(config),
        METRONOME_AMQP_URL=url,
        METRONOME_DATA_DIR=str(data_dir),
        METRONOME_ELASTICSEARCH_URL="",
        METRONOME_LOG_LEVEL="warning",
        METRONOME_MAX_BATCH_TICKS="10000",
    )
    env.pop("METRONOME_SHIPPER_PARENT", None)
    log = work / f"{queue}.log"
    with open(log, "wb") as output:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "metronome", "worker"],
            cwd=C.REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            first: float | None = None  # when the first messages were taken
            while waiting := ready(url, queue):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise C.BenchmarkError(f"the worker stopped early:\n{log.read_text()[-2000:]}")
                if first is None and waiting < len(bodies):
                    first = time.perf_counter()
                time.sleep(0.02)
            ended = time.perf_counter()
            seconds = ended - started
            steady_s = ended - (first or started)
            # the state file is written every 2 s: wait for it to count every message
            deadline = time.monotonic() + 30
            state: dict[str, Any] = {}
            while state.get("acked") != len(bodies):
                if time.monotonic() > deadline:
                    raise C.BenchmarkError(f"the worker acknowledged {state}; log: {log}")
                time.sleep(0.2)
                try:
                    state = json.loads((data_dir / "queues" / "bench.json").read_text())
                except (OSError, ValueError):
                    state = {}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    if state.get("dead_lettered"):
        raise C.BenchmarkError(f"the worker dead-lettered messages: {state}")
    return {
        "messages": state["acked"],
        "events": events,
        "seconds_whole_command": seconds,
        "events_per_s_whole_command": events / seconds,
        # from the first messages taken (start-up excluded, as for the baseline)
        "seconds": steady_s,
        "events_per_s": events / steady_s,
    }


def cli_startup_s() -> float:
    """Median wall time of ``python -m metronome --version``: a floor under the worker's."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        C.metronome_cli("--version")
        times.append(time.perf_counter() - started)
    return float(C.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = C.base_parser(__doc__.splitlines()[0], duration=None, trials=3, warmup=None)
    parser.add_argument("--messages", type=int, default=2000, help="messages per trial")
    parser.add_argument("--ticks", type=int, default=10, help="ticks per message")
    parser.add_argument("--prefetch", type=int, default=100, help="basic.qos prefetch")
    args = parser.parse_args(argv)
    seed = C.new_seed(args.seed)
    C.pin_git()
    events = args.messages * args.ticks
    ticks = C.realistic_ticks(events, seed, ts_ms=[int(time.time() * 1000) - 60_000] * events)
    bodies = [orjson.dumps(ticks[i : i + args.ticks]) for i in range(0, events, args.ticks)]
    work = C.temp_dir("metronome-bench-queue-")
    started_at = time.time()
    trials: list[dict[str, Any]] = []
    warmups: dict[str, Any] = {}
    runners = {"metronome": run_metronome, "baseline": run_baseline}
    broker = RabbitMQServer()
    try:
        broker.start()
        cli_start = cli_startup_s()
        warm = bodies[: max(1, len(bodies) // 5)]
        for _, label in C.trial_order(list(runners), 1, seed + 1):
            r = runners[label](broker.url, warm, len(warm) * args.ticks, args.prefetch, work)
            warmups[label] = {"events_per_s": round(r["events_per_s"], 1)}
        for round_no, label in C.trial_order(list(runners), args.trials, seed):
            r = runners[label](broker.url, bodies, events, args.prefetch, work)
            trials.append({"round": round_no, "contender": label, **r})
            print(f"{NAME}: {label}: {r['events_per_s']:,.0f} events/s", file=sys.stderr)
    finally:
        broker.stop()
    summary = {}
    for label in runners:
        rates = [t["events_per_s"] for t in trials if t["contender"] == label]
        summary[label] = {"median_events_per_s": C.rounded(C.median(rates), 1)}
    ratio = C.ratio(
        summary["metronome"]["median_events_per_s"], summary["baseline"]["median_events_per_s"]
    )
    data = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "started_at": started_at,
        "parameters": {
            "messages": args.messages,
            "ticks_per_message": args.ticks,
            "prefetch": args.prefetch,
            "trials": args.trials,
            "seed": seed,
        },
        "environment": C.environment(cli_startup_s=round(cli_start, 3)),
        "warmup": warmups,
        "trials": trials,
        "summary": {**summary, "ratio_metronome_to_baseline": C.rounded(ratio)},
        "goal": {"ratio_at_least": GOAL_RATIO, "met": ratio is not None and ratio >= GOAL_RATIO},
    }
    path = C.write_results(NAME, data, args.output)
    print(f"{NAME}: ratio {ratio:.3f} (goal >= {GOAL_RATIO}); {C.display(path)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
