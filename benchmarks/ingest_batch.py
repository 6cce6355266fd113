"""Batched ``POST /ticks`` throughput (500 ticks per JSON array): events accepted per second.

Same set-up as ``benchmarks.ingest`` (Metronome on the embedded store versus the bare Falcon
app, same gunicorn settings, wrk over keep-alive, shuffled alternating trials after a
warm-up), but every request carries the same 500 realistic ticks. A Metronome answer counts
only if it is 2xx and says ``"accepted":500``.

    python -m benchmarks.ingest_batch [--duration 10] [--trials 3] [--connections 8]

Goals: Metronome accepts >= 50,000 events/s, and >= 0.7 x the bare app's events/s.
"""

from __future__ import annotations

import sys

import orjson

from benchmarks import _common as C
from benchmarks.ingest import GOAL_RATIO, run_throughput

NAME = "ingest_batch"
BATCH = 500
GOAL_EVENTS_PER_S = 50_000


def main(argv: list[str] | None = None) -> int:
    body = orjson.dumps(C.realistic_ticks(BATCH))
    return run_throughput(
        name=NAME, description=__doc__, path="/ticks", body=body, events_per_request=BATCH,
        expect=f'"accepted":{BATCH},', unit="events",
        goal={"ratio": GOAL_RATIO, "metronome_events_per_s": GOAL_EVENTS_PER_S},
        default_connections=8, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
