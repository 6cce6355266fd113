"""Streaming anomaly detection: seasonal, robust, explained.

One :class:`Detector` per series sees its points in time order (``observe``) and says, for
each, whether it is anomalous and why. The same code runs in the worker on a KPI's series
and in ``python -m benchmarks.anomaly`` on the NAB corpus, with the same parameters
(:data:`DEFAULT_PARAMS`; a KPI's *sensitivity* scales only the threshold).

How a point is judged
---------------------
Each point is compared with up to three *expectations*, each a median of the series' own
history, so a past outlier moves none of them (a mean would follow it):

* ``recent``: the median of the last ``recent_points`` points (the current level);
* ``daily``: the median of the values at the same time of day on the previous
  ``seasons`` days (hour-of-day seasonality);
* ``weekly``: the same time of week on the previous weeks (day-of-week seasonality).

Each expectation keeps its past absolute errors; its *scale* is their median times 1.4826
(the MAD, which estimates a standard deviation that outliers do not inflate, so a history
with spikes in it does not widen the normal range until the spikes are a third of it).
The expectation whose errors have been smallest over its history is the series' *model*
(a flat series is judged by its level, a daily-shaped one by yesterday's shape, so a
flatline where the series used to rise is as surprising as a spike). Its robust z-score
``|observed - expected| / scale`` is the point's score, and the point is anomalous when
the score exceeds ``threshold / sensitivity`` **and** is the largest score of the last
``record_points`` points: a series whose normal life has bursts of a given size (tweets,
batch jobs) is only surprising beyond them, so the threshold adapts to each series without
per-series tuning.

An *alarm* is an anomalous point more than ``cooldown_points`` points after the previous
alarm: that is what the worker turns into an insight (and a recovery message once the
series is back within range), and what the benchmark scores. The parameters were chosen
once, on the whole NAB corpus (``python -m benchmarks.anomaly``), never per series.

No alarm is raised on a series too sparse to judge: fewer than ``min_points`` points seen,
or, for counts, an expected value and observed value both under ``min_volume``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_PARAMS",
    "DetectorParams",
    "Detector",
    "Verdict",
]

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """The detector's knobs, chosen once for every series (see benchmarks/anomaly.py)."""

    threshold: float = 4.0  # robust z-score above which a point is anomalous
    sensitivity: float = 1.0  # a KPI's: 2.0 halves the threshold, 0.5 doubles it
    recent_points: int = 12  # points in the level expectation
    seasons: int = 7  # previous days (and up to 4 previous weeks) in the seasonal medians
    error_points: int = 1000  # past errors kept per expectation for its scale
    min_errors: int = 100  # errors an expectation needs before it may judge
    min_points: int = 200  # points seen before any alarm
    cooldown_points: int = 50  # quiet points between two alarms
    min_volume: float = 0.0  # for counts: below this, expected and observed are too sparse
    record_points: int = 1000  # an anomaly is the largest deviation in this many points
    relative_floor: float = 0.01  # the scale is at least this share of the typical level
    history_s: float = 29 * DAY_S  # points kept for the seasonal expectations
    history_points: int = 20_000

    @property
    def effective_threshold(self) -> float:
        return self.threshold / self.sensitivity


DEFAULT_PARAMS = DetectorParams()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the detector says about one point, and why."""

    at_s: float
    observed: float
    expected: float | None
    low: float | None
    high: float | None
    score: float
    anomalous: bool
    alarm: bool  # the first anomalous point after a quiet spell: notify
    model: str | None  # "recent", "daily" or "weekly"
    reason: str

    def explain(self) -> str:
        return self.reason


_MODEL_WORDS = {
    "recent": "the median of the last {n} points",
    "daily": "the median of the same time of day on the previous days",
    "weekly": "the median of the same time of week on the previous weeks",
}


class _Expectation:
    """One expectation's past absolute errors: their robust scale (refreshed every
    ``REFRESH`` points, which keeps the per-point cost flat) and their mean."""

    __slots__ = ("name", "errors", "_sum", "_scale", "_age")
    REFRESH = 16

    def __init__(self, name: str, keep: int) -> None:
        self.name = name
        self.errors: deque[float] = deque(maxlen=keep)
        self._sum = 0.0
        self._scale = 0.0
        self._age = self.REFRESH

    def add(self, error: float) -> None:
        if len(self.errors) == self.errors.maxlen:
            self._sum -= self.errors[0]
        self.errors.append(error)
        self._sum += error
        self._age += 1

    def scale(self) -> float:
        if self._age >= self.REFRESH:
            errors = np.fromiter(self.errors, float, len(self.errors))
            self._scale = float(np.median(errors)) * MAD_TO_SIGMA
            self._age = 0
        return self._scale

    def typical(self) -> float:
        return self._sum / len(self.errors)


class Detector:
    """The streaming detector of one series. ``observe`` each point in time order."""

    def __init__(self, params: DetectorParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._times: list[float] = []
        self._values: list[float] = []
        self._first = 0  # index of the oldest kept point in the lists
        self._seen = 0
        self._since_alarm = params.cooldown_points
        self._expectations = {
            name: _Expectation(name, params.error_points) for name in ("recent", "daily", "weekly")
        }
        self._level = _Expectation("level", params.error_points)  # magnitudes, for the floor
        self._record = _RollingMax(params.record_points)

    # ------------------------------------------------------------------ expectations

    def _at(self, when_s: float, tolerance_s: float) -> float | None:
        times = self._times
        i = bisect.bisect_left(times, when_s - tolerance_s, lo=self._first)
        if i < len(times) and times[i] <= when_s + tolerance_s:
            return self._values[i]
        return None

    def _seasonal(
        self, at_s: float, period_s: float, count: int, tolerance_s: float
    ) -> float | None:
        if not self._times or self._times[self._first] > at_s - period_s + tolerance_s:
            return None
        found = [
            v
            for k in range(1, count + 1)
            if (v := self._at(at_s - k * period_s, tolerance_s)) is not None
        ]
        return _median(found) if found else None

    def _expected(self, at_s: float) -> dict[str, float]:
        p = self.params
        out: dict[str, float] = {}
        kept = len(self._values) - self._first
        if kept:
            out["recent"] = _median(self._values[-min(kept, p.recent_points) :])
            tolerance = self._step_s() / 2
            daily = self._seasonal(at_s, DAY_S, p.seasons, tolerance)
            if daily is not None:
                out["daily"] = daily
            weekly = self._seasonal(at_s, WEEK_S, 4, tolerance)
            if weekly is not None:
                out["weekly"] = weekly
        return out

    def _step_s(self) -> float:
        kept = len(self._times) - self._first
        if kept < 2:
            return 0.0
        k = min(kept - 1, 50)
        return (self._times[-1] - self._times[-1 - k]) / k

    # ------------------------------------------------------------------ one point

    def observe(self, at_s: float, value: float) -> Verdict:
        """Judge one point against the history so far, then add it to the history."""
        p = self.params
        expected = self._expected(at_s)
        self._level.add(abs(value))
        floor = max(p.relative_floor * self._level.scale() / MAD_TO_SIGMA, 1e-9)
        ready = {
            name: e
            for name, e in self._expectations.items()
            if name in expected and len(e.errors) >= p.min_errors
        }
        verdict = self._judge(at_s, value, expected, ready, floor)
        for name, guess in expected.items():
            self._expectations[name].add(abs(value - guess))
        self._remember(at_s, value)
        return verdict

    def peek(self, at_s: float, value: float) -> Verdict:
        """Judge a point without learning from it (a bucket still filling up): the same
        verdict ``observe`` would give, leaving the detector as it was."""
        saved = (self._seen, self._since_alarm, self._record.snapshot())
        level = _Expectation("level", self.params.error_points)
        level.errors.extend(self._level.errors)
        level._sum = self._level._sum
        level.add(abs(value))
        floor = max(self.params.relative_floor * level.scale() / MAD_TO_SIGMA, 1e-9)
        expected = self._expected(at_s)
        ready = {
            name: e
            for name, e in self._expectations.items()
            if name in expected and len(e.errors) >= self.params.min_errors
        }
        verdict = self._judge(at_s, value, expected, ready, floor)
        self._seen, self._since_alarm = saved[0], saved[1]
        self._record.restore(saved[2])
        return verdict

    def _judge(
        self,
        at_s: float,
        value: float,
        expected: dict[str, float],
        ready: dict[str, _Expectation],
        floor: float,
    ) -> Verdict:
        p = self.params
        self._seen += 1
        self._since_alarm += 1
        if not ready or self._seen <= p.min_points:
            return Verdict(
                at_s,
                value,
                None,
                None,
                None,
                0.0,
                False,
                False,
                None,
                "too little history to judge",
            )
        typical = {name: e.typical() for name, e in ready.items()}
        model = min(typical, key=typical.__getitem__)
        scales = {name: max(e.scale(), floor) for name, e in ready.items()}
        threshold = p.effective_threshold
        guess, scale = expected[model], scales[model]
        score = abs(value - guess) / scale
        low, high = guess - threshold * scale, guess + threshold * scale
        record = self._record.max()
        self._record.push(score)
        sparse = p.min_volume > 0 and max(abs(value), abs(guess)) < p.min_volume
        anomalous = score > threshold and score > record and not sparse
        alarm = anomalous and self._since_alarm > p.cooldown_points
        if alarm:
            self._since_alarm = 0
        if sparse:
            reason = f"too sparse to judge: expected and observed are under {_fmt(p.min_volume)}"
        else:
            direction = "above" if value > guess else "below" if value < guess else "at"
            words = _MODEL_WORDS[model].format(n=p.recent_points)
            inside = "outside" if score > threshold else "inside"
            if scale <= 1e-9:  # a flat history: a deviation in its spread means nothing
                by = "while the history has no spread at all"
            else:
                by = f"by {score:.1f} robust standard deviations"
            reason = (
                f"observed {_fmt(value)} is {direction} the expected {_fmt(guess)} "
                f"({words}) {by}, {inside} the "
                f"expected range {_fmt(low)} to {_fmt(high)}"
            )
            if score > threshold:
                reason += (
                    f"; the largest deviation of the last {p.record_points} points"
                    if score > record
                    else f"; but no larger than one in the last {p.record_points} points "
                    f"({record:.1f})"
                )
        return Verdict(at_s, value, guess, low, high, score, anomalous, alarm, model, reason)

    def _remember(self, at_s: float, value: float) -> None:
        p = self.params
        self._times.append(at_s)
        self._values.append(value)
        times = self._times
        while self._first < len(times) and (
            len(times) - self._first > p.history_points or times[self._first] < at_s - p.history_s
        ):
            self._first += 1
        if self._first > 4096 and self._first > len(times) // 2:
            del self._times[: self._first]
            del self._values[: self._first]
            self._first = 0


class _RollingMax:
    """The largest of the last ``size`` numbers pushed, in amortised O(1) (a monotonic
    queue of (index, value) with decreasing values)."""

    __slots__ = ("_size", "_queue", "_count")

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: deque[tuple[int, float]] = deque()
        self._count = 0

    def push(self, value: float) -> None:
        queue = self._queue
        while queue and queue[-1][1] <= value:
            queue.pop()
        queue.append((self._count, value))
        self._count += 1
        while queue[0][0] <= self._count - 1 - self._size:
            queue.popleft()

    def max(self) -> float:
        return self._queue[0][1] if self._queue else 0.0

    def snapshot(self) -> tuple[int, list[tuple[int, float]]]:
        return self._count, list(self._queue)

    def restore(self, state: tuple[int, list[tuple[int, float]]]) -> None:
        self._count = state[0]
        self._queue = deque(state[1])


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _fmt(value: float) -> str:
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}" if not math.isclose(value, round(value)) else f"{round(value)}"
