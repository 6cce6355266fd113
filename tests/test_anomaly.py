"""The streaming anomaly detector on series whose answer is known by construction."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from metronome.insights.anomaly import DEFAULT_PARAMS, Detector

HOUR_S = 3600.0


def _daily(hours: int, seed: int = 7) -> list[tuple[float, float]]:
    """Hourly points of a daily cycle (100 at night, 400 at 15:00) with noise."""
    rng = random.Random(seed)
    return [
        (h * HOUR_S, 250 - 150 * math.cos(2 * math.pi * ((h % 24) - 3) / 24) + rng.gauss(0, 8))
        for h in range(hours)
    ]


def _run(points, params=DEFAULT_PARAMS):
    detector = Detector(params)
    return [detector.observe(at, value) for at, value in points]


def test_a_spike_in_a_seasonal_series_raises_one_explained_alarm() -> None:
    points = _daily(24 * 28)
    at, value = points[-10]
    points[-10] = (at, value + 400)
    verdicts = _run(points)
    alarms = [v for v in verdicts if v.alarm]
    assert [v.at_s for v in alarms] == [at]
    (alarm,) = alarms
    assert alarm.observed == value + 400
    assert alarm.low is not None and alarm.high is not None and alarm.expected is not None
    assert alarm.low < value < alarm.high < alarm.observed
    assert "above the expected" in alarm.reason
    assert "expected range" in alarm.reason


def test_the_daily_peak_itself_is_not_an_anomaly() -> None:
    verdicts = _run(_daily(24 * 28))
    assert not any(v.alarm for v in verdicts)
    assert verdicts[-1].model in {"daily", "weekly"}  # the shape, not the level, is the model


def test_outliers_in_the_history_do_not_widen_the_normal_range() -> None:
    clean = _run(_daily(24 * 28))[-1]
    spiky = _daily(24 * 28)
    for i in range(300, len(spiky) - 24, 50):  # a spike every ~2 days
        spiky[i] = (spiky[i][0], spiky[i][1] + 2000)
    dirty = _run(spiky)[-1]
    assert clean.high is not None and dirty.high is not None
    assert dirty.high - dirty.low < 1.5 * (clean.high - clean.low)


def test_a_series_with_too_little_history_raises_no_alarm() -> None:
    points = _daily(DEFAULT_PARAMS.min_points)
    points[-1] = (points[-1][0], 10_000.0)
    verdicts = _run(points)
    assert not any(v.anomalous for v in verdicts)
    assert verdicts[-1].reason == "too little history to judge"


def test_a_sparse_count_series_raises_no_alarm_under_the_minimum_volume() -> None:
    rng = random.Random(3)
    points = [(h * HOUR_S, float(rng.random() < 0.05)) for h in range(24 * 28)]
    points[-1] = (points[-1][0], 4.0)  # 4 events where there are usually none
    params = replace(DEFAULT_PARAMS, min_volume=10)
    verdicts = _run(points, params)
    assert not any(v.alarm for v in verdicts)
    assert verdicts[-1].reason.startswith("too sparse to judge")
    # the same series with volume is judged
    loud = [(at, value * 100) for at, value in points]
    assert _run(loud, params)[-1].alarm


def test_sensitivity_scales_the_threshold() -> None:
    points = _daily(24 * 28)
    at, value = points[-10]
    points[-10] = (at, value + 45)  # about 4-5 robust sigmas
    low = _run(points, replace(DEFAULT_PARAMS, sensitivity=0.5))
    high = _run(points, replace(DEFAULT_PARAMS, sensitivity=2.0))
    assert not low[-10].anomalous
    assert high[-10].anomalous


def test_a_jump_out_of_a_flat_history_is_explained_without_a_meaningless_score() -> None:
    detector = Detector()
    for step in range(400):
        detector.observe(step * 3600.0, 0.0)
    verdict = detector.observe(400 * 3600.0, 5.0)
    assert verdict.anomalous
    assert "the history has no spread at all" in verdict.reason
    assert "robust standard deviations" not in verdict.reason and "e+" not in verdict.reason
