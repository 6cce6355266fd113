"""The anomaly detector on a NAB-like corpus, scored as the NAB paper defines it.

    python -m benchmarks.anomaly [PATH]      # default: shared/nab beside the checkout

``PATH`` is any directory laid out like NAB's: ``data/<group>/<file>.csv`` (header
``timestamp,value``) and ``labels/combined_windows.json``. Every series runs through
:class:`metronome.insights.anomaly.Detector` -- the code the worker runs on a KPI, with
:data:`~metronome.insights.anomaly.DEFAULT_PARAMS`, the same for every series -- one point
at a time in time order; each *alarm* (the first anomalous point after a quiet spell) is
a detection. Reported per series and in total:

* the NAB score under the standard profile (and the two others), normalised as NAB does
  (null detector 0, perfect 100), beside NAB's published scoreboard;
* window recall (labelled windows with a detection / windows), window precision
  (detected windows / (detected windows + detections outside every window)), and F1;
* microseconds of CPU per point.

Writes ``benchmarks/results/anomaly.json`` (``--output``). The published scoreboard covers
NAB's whole corpus (58 files); PATH may hold part of it, so the comparison is indicative.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C
from benchmarks.nab import (
    PROFILES,
    FileScore,
    Series,
    corpus_score,
    default_corpus,
    load_corpus,
    score_file,
)
from metronome.insights.anomaly import DEFAULT_PARAMS, Detector, DetectorParams

NAME = "anomaly"
DEFAULT_PATH = default_corpus()
SKYLINE, HTM = 58.2, 70.5
# NAB's README at commit ea702d75 (standard, reward low FP, reward low FN)
SCOREBOARD = {
    "Perfect": (100.0, 100.0, 100.0),
    "ARTime": (74.9, 65.1, 80.4),
    "Numenta HTM": (70.5, 62.6, 75.2),
    "CAD OSE": (69.9, 67.0, 73.2),
    "earthgecko Skyline": (58.2, 46.2, 63.9),
    "KNN CAD": (58.0, 43.4, 64.8),
    "Relative Entropy": (54.6, 47.6, 58.8),
    "Random Cut Forest": (51.7, 38.4, 59.7),
    "Twitter ADVec v1.0.0": (47.1, 33.6, 53.5),
    "Windowed Gaussian": (39.6, 20.9, 47.4),
    "Etsy Skyline": (35.7, 27.1, 44.5),
    "Bayesian Changepoint": (17.7, 3.2, 32.2),
    "EXPoSE": (16.4, 3.2, 26.9),
    "Random": (11.0, 1.2, 19.5),
    "Null": (0.0, 0.0, 0.0),
}


def detect(series: Series, params: DetectorParams) -> tuple[list[bool], float]:
    """Alarms per point, in streaming order, and CPU seconds spent."""
    detector = Detector(params)
    started = time.process_time()
    alarms = [
        detector.observe(at.timestamp(), value).alarm
        for at, value in zip(series.timestamps, series.values, strict=True)
    ]
    return alarms, time.process_time() - started


def window_figures(scores: list[FileScore]) -> dict[str, float | None]:
    windows = sum(s.windows for s in scores)
    hit = sum(s.detected_windows for s in scores)
    fps = sum(s.false_positives for s in scores)
    recall = hit / windows if windows else None
    precision = hit / (hit + fps) if hit + fps else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall
        else None
    )
    return {
        "window_precision": C.rounded(precision),
        "window_recall": C.rounded(recall),
        "window_f1": C.rounded(f1),
    }


def run(path: Path, params: DetectorParams) -> dict[str, Any]:
    corpus = load_corpus(path)
    if not corpus:
        raise C.BenchmarkError(f"no labelled series under {path}")
    per_series = []
    by_profile: dict[str, list[FileScore]] = {name: [] for name in PROFILES}
    points = 0
    cpu_s = 0.0
    for series in corpus:
        alarms, spent = detect(series, params)
        points += len(alarms)
        cpu_s += spent
        row: dict[str, Any] = {"series": series.name, "points": len(alarms)}
        for name, cost in PROFILES.items():
            score = score_file(alarms, series.windows, cost)
            by_profile[name].append(score)
            if name == "standard":
                row.update(
                    windows=score.windows,
                    detected_windows=score.detected_windows,
                    false_positives=score.false_positives,
                    alarms=score.detections,
                    raw_score=round(score.score, 4),
                    **window_figures([score]),
                )
            row[f"nab_{name}"] = C.rounded(score.normalised(cost), 2)
        row["cpu_us_per_point"] = round(spent / len(alarms) * 1e6, 1)
        per_series.append(row)
    standard = by_profile["standard"]
    total = {
        "series": len(corpus),
        "points": points,
        "windows": sum(s.windows for s in standard),
        "detected_windows": sum(s.detected_windows for s in standard),
        "false_positives": sum(s.false_positives for s in standard),
        **window_figures(standard),
        **{
            f"nab_{name}": round(corpus_score(scores, PROFILES[name]), 2)
            for name, scores in by_profile.items()
        },
        "cpu_us_per_point": round(cpu_s / points * 1e6, 1),
    }
    return {"per_series": per_series, "total": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "path", nargs="?", type=Path, default=DEFAULT_PATH, help="NAB-like directory"
    )
    parser.add_argument("--output", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    params = DEFAULT_PARAMS
    result = run(args.path, params)
    total = result["total"]
    data = {
        "benchmark": NAME,
        "corpus": args.path.name,
        "parameters": {k: getattr(params, k) for k in params.__dataclass_fields__},
        "scoring": "NAB paper: scaled sigmoid of the first detection per window, "
        "probationary 15% (<= 750 points), profiles from NAB's config/profiles.json, "
        "normalised null = 0, perfect = 100",
        "published_scoreboard": {
            name: dict(zip(("standard", "reward_low_fp", "reward_low_fn"), s, strict=True))
            for name, s in SCOREBOARD.items()
        },
        "environment": C.environment(),
        "summary": {
            **total,
            "goal": f"NAB standard > {SKYLINE} (earthgecko Skyline), toward {HTM} (HTM)",
            "passed": total["nab_standard"] > SKYLINE,
        },
        "per_series": result["per_series"],
    }
    out = C.write_results(NAME, data, args.output)
    print(
        f"anomaly: NAB standard {total['nab_standard']} (Skyline {SKYLINE}, HTM {HTM}), "
        f"low FP {total['nab_reward_low_fp']}, low FN {total['nab_reward_low_fn']}; "
        f"windows {total['detected_windows']}/{total['windows']}, "
        f"F1 {total['window_f1']}, {total['cpu_us_per_point']} us/point -> {C.display(out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
