"""What a KPI's series says now: anomaly, trends and threshold crossings (no I/O).

:func:`evaluate` takes one KPI's rules and its series -- one value per bucket, oldest
first, the last bucket possibly still filling up -- and returns one :class:`Finding` per
thing it watches, each *active* or not, with its explanation. The worker keeps which ones
are raised, and turns a change into an insight (raised, or recovered).

* **anomaly**: the streaming detector of :mod:`.anomaly` over the complete buckets; the
  bucket still filling up counts as soon as it is already above the expected range for a
  whole bucket (an additive metric only grows), so a spike is seen within the hour.
* **trend**: the last complete window (``window_buckets``) against the one before, and the
  last complete bucket against the same bucket a week before; a change of at least
  ``trend_pct`` percent, claimed only when either side holds ``min_volume``.
* **threshold**: the last complete bucket above ``above`` or below ``below`` (and, for an
  additive metric, the bucket filling up once it is above ``above``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from metronome.insights.anomaly import DEFAULT_PARAMS, Detector, Verdict

__all__ = ["Finding", "Rules", "evaluate"]

WEEK_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class Rules:
    """A KPI's rules, as the evaluation needs them."""

    name: str
    bucket_s: int  # 3600 or 86400
    window_buckets: int
    sensitivity: float = 1.0
    trend_pct: float = 10.0
    min_volume: float = 20.0
    above: float | None = None
    below: float | None = None
    additive: bool = True  # counts and sums only grow while a bucket fills up


@dataclass(frozen=True, slots=True)
class Finding:
    """One watched thing's state at ``at_ms`` (the start of the bucket judged)."""

    kind: str  # anomaly, trend or threshold
    key: str  # anomaly; trend:previous_period; trend:same_time_last_week; threshold:above ...
    active: bool
    at_ms: int
    message: str
    observed: float | None = None
    expected: float | None = None
    low: float | None = None
    high: float | None = None
    score: float | None = None
    change: float | None = None
    compared_to: str | None = None
    direction: str | None = None


def _fmt(value: float) -> str:
    return f"{value:.4g}" if value != int(value) else f"{int(value)}"


def _anomaly(
    rules: Rules, starts: Sequence[int], values: Sequence[float], complete: int
) -> Finding:
    params = replace(DEFAULT_PARAMS, sensitivity=rules.sensitivity, min_volume=rules.min_volume)
    detector = Detector(params)
    last: Verdict | None = None
    for start, value in zip(starts[:complete], values[:complete], strict=True):
        last = detector.observe(start / 1000, value)
    judged = last
    if complete < len(values):  # the bucket filling up
        partial = detector.peek(starts[complete] / 1000, values[complete])
        if (
            rules.additive
            and partial.anomalous
            and partial.expected is not None
            and partial.observed > partial.expected
        ):
            judged = partial
    if judged is None:
        return Finding("anomaly", "anomaly", False, starts[-1] if starts else 0, "no data yet")
    at_ms = int(judged.at_s * 1000)
    where = "so far in the bucket still filling up; " if judged is not last else ""
    return Finding(
        "anomaly",
        "anomaly",
        judged.anomalous,
        at_ms,
        f"{rules.name}: {where}{judged.reason}",
        observed=judged.observed,
        expected=judged.expected,
        low=judged.low,
        high=judged.high,
        score=round(judged.score, 3),
        compared_to=judged.model,
        direction=None
        if judged.expected is None
        else ("up" if judged.observed > judged.expected else "down"),
    )


def _trend(rules: Rules, key: str, at_ms: int, current: float, before: float, what: str) -> Finding:
    if max(current, before) < rules.min_volume:
        return Finding(
            "trend",
            key,
            False,
            at_ms,
            f"{rules.name}: too little volume to claim a trend ({_fmt(current)} against"
            f" {_fmt(before)} {what}; the minimum is {_fmt(rules.min_volume)})",
            observed=current,
            expected=before,
            compared_to=key.split(":", 1)[1],
        )
    change = (current - before) / before if before else 1.0
    active = abs(change) * 100 >= rules.trend_pct
    direction = "up" if change > 0 else "down"
    return Finding(
        "trend",
        key,
        active,
        at_ms,
        f"{rules.name} is "
        + (f"{direction} {abs(change) * 100:.0f}%" if round(change * 100) else "unchanged")
        + f" ({_fmt(current)} against"
        f" {_fmt(before)} {what})" + ("" if active else f", within {rules.trend_pct:g}%"),
        observed=current,
        expected=before,
        change=round(change, 4),
        compared_to=key.split(":", 1)[1],
        direction=direction,
    )


def evaluate(
    rules: Rules, starts: Sequence[int], values: Sequence[float], now_ms: int
) -> list[Finding]:
    """The findings of one KPI's series (``starts`` in epoch ms, oldest first)."""
    bucket_ms = rules.bucket_s * 1000
    complete = sum(1 for start in starts if start + bucket_ms <= now_ms)
    findings = [_anomaly(rules, starts, values, complete)]
    if complete:
        w = rules.window_buckets
        last_at = starts[complete - 1]
        if complete >= 2 * w:
            current = float(sum(values[complete - w : complete]))
            before = float(sum(values[complete - 2 * w : complete - w]))
            findings.append(
                _trend(
                    rules, "trend:previous_period", last_at, current, before, "in the period before"
                )
            )
        week = WEEK_S // rules.bucket_s
        if complete > week:
            findings.append(
                _trend(
                    rules,
                    "trend:same_time_last_week",
                    last_at,
                    float(values[complete - 1]),
                    float(values[complete - 1 - week]),
                    "at the same time last week",
                )
            )
    for side, limit in (("above", rules.above), ("below", rules.below)):
        if limit is None or not starts:
            continue
        index = complete - 1
        if side == "above" and rules.additive and complete < len(values):
            if values[complete] > limit:
                index = complete
        if index < 0:
            continue
        value = float(values[index])
        active = value > limit if side == "above" else value < limit
        findings.append(
            Finding(
                "threshold",
                f"threshold:{side}",
                active,
                starts[index],
                f"{rules.name} is {_fmt(value)}, "
                + ("" if active else "not ")
                + f"{side} the threshold {_fmt(limit)}",
                observed=value,
                expected=limit,
                compared_to=f"threshold_{side}",
                direction="up" if side == "above" else "down",
            )
        )
    return findings
