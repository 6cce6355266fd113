"""A KPI's evaluation (trends, thresholds, the anomaly of a bucket still filling up) on
series whose answer is known by construction."""

from __future__ import annotations

import math

from metronome.insights.evaluate import Rules, evaluate

HOUR_MS = 3_600_000
START_MS = 1_700_000_000_000 // HOUR_MS * HOUR_MS


def _rules(**overrides) -> Rules:
    return Rules(**{"name": "Views", "bucket_s": 3600, "window_buckets": 24, **overrides})


def _hours(values: list[float]) -> tuple[list[int], list[float]]:
    return [START_MS + i * HOUR_MS for i in range(len(values))], values


def _by_key(findings):
    return {f.key: f for f in findings}


def _daily(hours: int) -> list[float]:
    return [float(10 + round(5 * math.sin(2 * math.pi * h / 24))) for h in range(hours)]


def test_a_change_of_a_fifth_against_the_day_before_is_a_trend() -> None:
    values = [10.0] * 24 * 8 + [12.0] * 24
    starts, values = _hours(values)
    now = starts[-1] + HOUR_MS  # every bucket complete
    found = _by_key(evaluate(_rules(min_volume=10), starts, values, now))
    trend = found["trend:previous_period"]
    assert trend.active and trend.change == 0.2 and trend.direction == "up"
    assert "up 20% (288 against 240 in the period before)" in trend.message
    week = found["trend:same_time_last_week"]
    assert week.active and week.observed == 12 and week.expected == 10


def test_no_trend_is_claimed_under_the_minimum_volume() -> None:
    starts, values = _hours([0.0] * 24 * 8 + [1.0] * 24)  # +infinity %, on 24 views a day
    found = _by_key(evaluate(_rules(min_volume=30), starts, values, starts[-1] + HOUR_MS))
    assert not found["trend:previous_period"].active
    assert "too little volume" in found["trend:previous_period"].message


def test_a_small_change_is_no_trend() -> None:
    starts, values = _hours([100.0] * 24 * 8 + [105.0] * 24)
    found = _by_key(evaluate(_rules(), starts, values, starts[-1] + HOUR_MS))
    assert not found["trend:previous_period"].active
    assert "within 10%" in found["trend:previous_period"].message


def test_thresholds_judge_the_last_complete_bucket_and_a_filling_one_only_upwards() -> None:
    starts, values = _hours([50.0] * 30 + [200.0])
    now = starts[-1] + HOUR_MS // 2  # the last bucket is filling up
    found = _by_key(evaluate(_rules(above=100, below=60), starts, values, now))
    assert found["threshold:above"].active and found["threshold:above"].at_ms == starts[-1]
    assert found["threshold:below"].active  # 50, the last complete bucket
    assert found["threshold:below"].at_ms == starts[-2]
    averages = _by_key(evaluate(_rules(above=100, additive=False), starts, values, now))
    assert not averages["threshold:above"].active  # an average may still fall


def test_a_spike_in_the_filling_bucket_is_an_anomaly_at_once() -> None:
    starts, values = _hours(_daily(24 * 10) + [300.0])
    now = starts[-1] + 60_000  # one minute into the hour
    (anomaly,) = [
        f for f in evaluate(_rules(min_volume=5), starts, values, now) if f.kind == "anomaly"
    ]
    assert anomaly.active and anomaly.at_ms == starts[-1]
    assert anomaly.observed == 300 and anomaly.high is not None and anomaly.high < 300
    assert anomaly.message.startswith("Views: so far in the bucket still filling up;")
    # a filling bucket below the range is no anomaly: it may still fill up
    values[-1] = 0.0
    (quiet,) = [
        f for f in evaluate(_rules(min_volume=5), starts, values, now) if f.kind == "anomaly"
    ]
    assert not quiet.active and quiet.at_ms == starts[-2]
