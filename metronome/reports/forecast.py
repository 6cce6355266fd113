"""Seasonal forecasts with an interval: a robust seasonal profile on a robust level.

The model, for a regular series (one value per step):

* the *season* is a week when the history holds at least ``2`` weeks and ``min_seasons``
  of them, else a day under the same rule, else none (a flat forecast);
* the *level* is the median of the last season's values, so one outlier or one missing
  bucket does not move it;
* the *profile* is, per position in the season (hour of the week, say), the median over
  the last ``seasons`` seasons of the value minus that season's median: the usual shape
  of a season, outliers voted out;
* the forecast at a step is level + profile at its position; its interval holds the
  central ``coverage`` of the same model's errors on the history (each past season
  predicted from the seasons before it), so the width is what the model has missed by,
  not an assumption about the noise.

Why not Holt-Winters: it follows outliers into its level and seasonal states and needs a
fit per series; medians need none and the backtest (``python -m benchmarks.forecast``)
measures the result against the seasonal-naive forecast (repeat the last season).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Forecast", "forecast", "season_points", "seasonal_naive"]

LEVEL_SHARE = 4
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True, slots=True)
class Forecast:
    """Predicted values for the next ``len(predicted)`` steps, each with an interval."""

    predicted: list[float]
    low: list[float]
    high: list[float]
    season_points: int  # 1: no season found
    coverage: float


def season_points(points: int, step_s: float, min_seasons: int = 2) -> int:
    """The season, in points, that ``points`` of history at ``step_s`` apart support."""
    for period_s in (WEEK_S, DAY_S):
        m = int(round(period_s / step_s)) if step_s > 0 else 0
        if m >= 2 and points >= min_seasons * m:
            return m
    return 1


def _profile(history: np.ndarray, m: int, seasons: int) -> tuple[float, np.ndarray]:
    """(level, profile of length m) from the last whole seasons of ``history``."""
    if m == 1:
        return float(np.median(history[-min(len(history), 48) :])), np.zeros(1)
    k = min(seasons, len(history) // m)
    recent = history[len(history) - k * m :].reshape(k, m)
    deviations = recent - np.median(recent, axis=1, keepdims=True)
    profile = np.median(deviations, axis=0)
    # the level: the last ``m / LEVEL_SHARE`` points with the profile taken out, so a
    # level shift in the last season counts without waiting for a whole season
    tail = max(1, m // LEVEL_SHARE)
    level = float(np.median(recent[-1, -tail:] - profile[-tail:]))
    return level, profile


def _predict(history: np.ndarray, m: int, seasons: int, horizon: int) -> np.ndarray:
    level, profile = _profile(history, m, seasons)
    # the profile starts where the history's last whole seasons start, that is a whole
    # number of seasons before the first forecast step
    return level + profile[np.arange(horizon) % m]


def forecast(
    values: Sequence[float],
    step_s: float,
    horizon: int,
    *,
    seasons: int = 4,
    min_seasons: int = 2,
    coverage: float = 0.8,
) -> Forecast:
    """Forecast ``horizon`` steps after ``values`` (oldest first, ``step_s`` apart)."""
    history = np.asarray(values, dtype=float)
    if len(history) == 0 or horizon <= 0:
        return Forecast([], [], [], 1, coverage)
    m = season_points(len(history), step_s, min_seasons)
    predicted = _predict(history, m, seasons, horizon)
    # the model's own errors on the history: each later season from the ones before it
    errors: list[np.ndarray] = []
    block = m if m > 1 else min(48, max(1, len(history) // 4))
    start = max(block * (2 if m > 1 else 1), len(history) - 8 * block)
    for cut in range(start, len(history) - block + 1, block):
        guess = _predict(history[:cut], m, seasons, block)
        errors.append(history[cut : cut + block] - guess)
    if errors:
        residuals = np.concatenate(errors)
        lo_q, hi_q = np.quantile(residuals, [(1 - coverage) / 2, (1 + coverage) / 2])
    else:
        spread = float(np.std(history))
        lo_q, hi_q = -spread, spread
    return Forecast(
        predicted=[float(v) for v in predicted],
        low=[float(v + lo_q) for v in predicted],
        high=[float(v + hi_q) for v in predicted],
        season_points=m,
        coverage=coverage,
    )


def seasonal_naive(values: Sequence[float], m: int, horizon: int) -> list[float]:
    """The baseline: repeat the last season (the last value when ``m`` is 1)."""
    history = list(values)
    m = max(1, min(m, len(history)))
    last = history[len(history) - m :]
    return [float(last[i % m]) for i in range(horizon)]
