"""Settings for every property-based test: the same examples on every run, by default.

A verdict must never depend on luck, so each run draws the same examples (hypothesis'
``derandomize``). To hunt for new failures, draw new ones, and more:

    METRONOME_TEST_FUZZ_RANDOM=1 METRONOME_TEST_FUZZ_EXAMPLES=500 scripts/test -k fuzz

``METRONOME_TEST_FUZZ_EXAMPLES`` replaces each test's own example count.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["FUZZ_EXAMPLES", "FUZZ_RANDOM", "TIME_ZONES", "fuzz"]

FUZZ_RANDOM = os.environ.get("METRONOME_TEST_FUZZ_RANDOM", "") not in ("", "0")
FUZZ_EXAMPLES = int(os.environ.get("METRONOME_TEST_FUZZ_EXAMPLES", "0") or 0)

TIME_ZONES = [
    "UTC",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Europe/Berlin",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Australia/Lord_Howe",
]
"""Every kind of time zone: east, west, half-hour, DST (a half-hour one too), the easternmost
(+14) and nearly the westernmost (-11)."""


def fuzz(max_examples: int) -> settings:
    """Hypothesis settings for a test that draws ``max_examples`` examples by default."""
    return settings(
        max_examples=FUZZ_EXAMPLES or max_examples,
        deadline=None,
        database=None,
        derandomize=not FUZZ_RANDOM,
        suppress_health_check=list(HealthCheck),
    )
