"""Batched ``POST /ticks`` throughput (500 ticks per JSON array): events accepted per second.

Same set-up as ``benchmarks.ingest`` (Metronome on the embedded store versus the bare Falcon
app, same gunicorn settings, wrk over keep-alive, shuffled alternating trials after a
warm-up), but every request carries the same 500 realistic ticks. A Metronome answer counts
only if it is 2xx and says ``"accepted":500``.

    python -m benchmarks.ingest_batch [--duration 10] [--trials 3] [--connections 8]

Goal: Metronome accepts >= 50,000 events/s into its spool. The bare app's figure is
recorded for scale only: it reads the bytes and parses nothing, so no ratio goal applies.
"""

from __future__ import annotations

import sys

import orjson

from benchmarks import _common as C
from benchmarks.ingest import run_throughput

NAME = "ingest_batch"
BATCH = 500
GOAL_EVENTS_PER_S = 50_000


def main(argv: list[str] | None = None) -> int:
    body = orjson.dumps(C.realistic_ticks(BATCH))
    return run_throughput(
        name=NAME,
        description=__doc__,
        path="/ticks",
        body=body,
        events_per_request=BATCH,
        expect=f'"accepted":{BATCH},',
        unit="events",
        goal={"metronome_events_per_s": GOAL_EVENTS_PER_S},
        default_connections=8,
        argv=argv,
    )


if __name__ == "__main__":
    sys.exit(main())
