"""Forecast backtest: the seasonal forecast of /query against the seasonal-naive forecast.

    python -m benchmarks.forecast [PATH]      # default: shared/nab beside the checkout

Two corpora, each backtested with rolling origins (the model sees only the points before
each origin, as it would in production):

* every series under ``PATH/data`` (NAB-like; 5-minute to hourly points, about two weeks):
  one season (a day) ahead from every day after the first two;
* generated tick traffic: hourly page views of three sites (daily and weekly shape,
  Poisson noise, a few bot bursts and a holiday dip in the history), ten weeks each: 7
  days ahead from each of the last four weeks, the horizon ``"forecast": {"horizon":
  "7d"}`` asks for.

Per series: MASE (mean absolute error over the forecast steps, divided by the in-sample
mean absolute error of the one-season-ahead seasonal-naive forecast, Hyndman and Koehler
2006) of :func:`metronome.reports.forecast.forecast` and of the seasonal-naive forecast
(repeat the last season: "last week" with a weekly season), their ratio, and the share of
points inside the 80% interval. In total: the mean MASE of each and their ratio. Goal: a
mean MASE below 1, i.e. better than the in-sample seasonal-naive forecast, and below the
seasonal-naive forecast's own. Writes ``benchmarks/results/forecast.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.nab import default_corpus, load_corpus
from metronome.reports.forecast import forecast, seasonal_naive

NAME = "forecast"
DEFAULT_PATH = default_corpus()
HOUR_S = 3600.0


def backtest(
    values: list[float], step_s: float, horizon: int, origins: list[int]
) -> dict[str, Any]:
    errors_model: list[float] = []
    errors_naive: list[float] = []
    inside = 0
    scale_terms: list[float] = []
    for origin in origins:
        history = values[:origin]
        actual = np.asarray(values[origin : origin + horizon])
        result = forecast(history, step_s, len(actual))
        m = result.season_points
        naive = np.asarray(seasonal_naive(history, m, len(actual)))
        predicted = np.asarray(result.predicted)
        errors_model.extend(np.abs(actual - predicted))
        errors_naive.extend(np.abs(actual - naive))
        inside += int(np.sum((actual >= result.low) & (actual <= result.high)))
        h = np.asarray(history)
        if len(h) > m:
            scale_terms.append(float(np.mean(np.abs(h[m:] - h[:-m]))))
    scale = statistics.fmean(scale_terms) if scale_terms else math.nan
    mae_model = statistics.fmean(errors_model)
    mae_naive = statistics.fmean(errors_naive)
    return {
        "origins": len(origins),
        "mase": mae_model / scale if scale else None,
        "mase_seasonal_naive": mae_naive / scale if scale else None,
        "ratio_to_seasonal_naive": mae_model / mae_naive if mae_naive else None,
        "interval_coverage": inside / len(errors_model),
    }


def nab_series(path: Path) -> list[tuple[str, list[float], float, int, list[int]]]:
    out = []
    for series in load_corpus(path):
        times = [t.timestamp() for t in series.timestamps]
        step = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
        day = int(round(86_400 / step))
        origins = list(range(2 * day, len(series.values) - day + 1, day))
        if origins:
            out.append((f"nab/{series.name}", series.values, step, day, origins))
    return out


def tick_traffic(seed: int) -> list[tuple[str, list[float], float, int, list[int]]]:
    """Hourly page views of three generated sites, ten weeks each."""
    rng = np.random.default_rng(seed)
    out = []
    for name, peak in (("small", 12.0), ("medium", 150.0), ("large", 2400.0)):
        hours = 10 * 168
        h = np.arange(hours)
        daily = 0.55 + 0.45 * np.sin(2 * np.pi * ((h % 24) - 9) / 24)
        weekday = np.where((h // 24) % 7 >= 5, 0.6, 1.0)
        growth = 1 + 0.002 * h / 24
        rate = peak * daily * weekday * growth
        counts = rng.poisson(rate).astype(float)
        for _ in range(4):  # bot bursts in the history
            at = int(rng.integers(0, 6 * 168))
            counts[at : at + 3] += peak * 5
        holiday = int(rng.integers(2 * 168, 5 * 168)) // 24 * 24
        counts[holiday : holiday + 24] *= 0.3
        origins = [hours - k * 168 for k in (4, 3, 2, 1)]
        out.append((f"ticks/{name}", [float(c) for c in counts], HOUR_S, 168, origins))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "path", nargs="?", type=Path, default=DEFAULT_PATH, help="NAB-like directory"
    )
    parser.add_argument("--seed", type=int, default=22, help="seed of the generated traffic")
    parser.add_argument("--output", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    started = time.process_time()
    rows = []
    for name, values, step, horizon, origins in [*nab_series(args.path), *tick_traffic(args.seed)]:
        row = {"series": name, "points": len(values), "horizon_points": horizon}
        row.update(backtest(values, step, horizon, origins))
        rows.append(row)

    def total(prefix: str) -> dict[str, Any]:
        chosen = [r for r in rows if r["series"].startswith(prefix) and r["mase"] is not None]
        model = statistics.fmean(r["mase"] for r in chosen)
        naive = statistics.fmean(r["mase_seasonal_naive"] for r in chosen)
        return {
            "series": len(chosen),
            "mean_mase": round(model, 3),
            "mean_mase_seasonal_naive": round(naive, 3),
            "ratio_to_seasonal_naive": round(model / naive, 3),
            "series_better_than_seasonal_naive": sum(
                r["ratio_to_seasonal_naive"] < 1 for r in chosen
            ),
            "mean_interval_coverage": round(
                statistics.fmean(r["interval_coverage"] for r in chosen), 3
            ),
        }

    summary = {"nab": total("nab/"), "ticks": total("ticks/"), "all": total("")}
    summary["goal"] = "mean MASE < 1 and below the seasonal-naive forecast's"
    summary["passed"] = all(
        s["mean_mase"] < 1 and s["ratio_to_seasonal_naive"] < 1
        for s in (summary["nab"], summary["ticks"])
    )
    for r in rows:
        for key in ("mase", "mase_seasonal_naive", "ratio_to_seasonal_naive", "interval_coverage"):
            r[key] = C.rounded(r[key])
    data = {
        "benchmark": NAME,
        "parameters": {"seed": args.seed, "corpus": args.path.name, "coverage": 0.8},
        "environment": C.environment(cpu_s=round(time.process_time() - started, 2)),
        "summary": summary,
        "per_series": rows,
    }
    out = C.write_results(NAME, data, args.output)
    nab, ticks = summary["nab"], summary["ticks"]
    print(
        f"forecast: NAB mean MASE {nab['mean_mase']} (seasonal naive"
        f" {nab['mean_mase_seasonal_naive']}), ticks {ticks['mean_mase']} (seasonal naive"
        f" {ticks['mean_mase_seasonal_naive']}) -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
