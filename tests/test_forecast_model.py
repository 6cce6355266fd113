"""The seasonal forecast on series whose future is known by construction."""

from __future__ import annotations

import math
import random

from metronome.reports.forecast import forecast, season_points, seasonal_naive

HOUR_S = 3600.0


def _weekly(hours: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [
        100
        + 60 * math.sin(2 * math.pi * (h % 24) / 24)
        - (40 if (h // 24) % 7 >= 5 else 0)
        + rng.gauss(0, 3)
        for h in range(hours)
    ]


def test_the_season_is_a_week_with_two_weeks_of_history_else_a_day() -> None:
    assert season_points(24 * 14, HOUR_S) == 168
    assert season_points(24 * 13, HOUR_S) == 24
    assert season_points(24, HOUR_S) == 1


def test_a_weekly_series_is_forecast_within_its_noise_and_inside_the_interval() -> None:
    series = _weekly(24 * 42)
    history, future = series[: 24 * 35], series[24 * 35 :]
    result = forecast(history, HOUR_S, len(future))
    assert result.season_points == 168
    errors = [abs(a - p) for a, p in zip(future, result.predicted, strict=True)]
    assert sum(errors) / len(errors) < 6  # the noise is 3; the weekend dip is foreseen
    inside = sum(lo <= a <= hi for a, lo, hi in zip(future, result.low, result.high, strict=True))
    assert 0.6 < inside / len(future) <= 1.0


def test_outliers_in_the_history_do_not_move_the_forecast() -> None:
    clean = _weekly(24 * 35)
    dirty = list(clean)
    for i in range(10, len(dirty), 97):
        dirty[i] += 5000
    a = forecast(clean, HOUR_S, 168).predicted
    b = forecast(dirty, HOUR_S, 168).predicted
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 10


def test_seasonal_naive_repeats_the_last_season() -> None:
    assert seasonal_naive([1, 2, 3, 4, 5], 2, 5) == [4, 5, 4, 5, 4]
    assert forecast([], HOUR_S, 3).predicted == []
