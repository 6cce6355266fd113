"""NAB (Numenta Anomaly Benchmark) corpora and scoring, as the NAB paper defines them.

Lavin and Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta Anomaly
Benchmark" (2015), section "Scoring": each labelled anomaly *window* is worth one true
positive, credited to the **first** detection inside it with the scaled sigmoid of its
relative position (the window's start scores the full weight, its end about zero); a window
with no detection costs ``A_FN``; each detection outside every window costs ``A_FP``, scaled
by the same sigmoid of its distance past the closest preceding window (a detection just
after a window costs little, one more than three window-lengths later the full weight);
detections in the *probationary period* (the first 15% of a file, at most 750 points) are
not counted. The corpus score is normalised so that the null detector (no detection) gets
0 and the perfect detector (one detection at the start of each window) gets 100.

This module only reads files and does arithmetic; it is not a test and not the detector.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = [
    "PROFILES",
    "CostMatrix",
    "FileScore",
    "Series",
    "corpus_score",
    "default_corpus",
    "load_corpus",
    "probationary_length",
    "scaled_sigmoid",
    "score_file",
]


@dataclass(frozen=True, slots=True)
class CostMatrix:
    """One NAB application profile's weights."""

    tp: float
    fp: float
    fn: float


# NAB's config/profiles.json
PROFILES = {
    "standard": CostMatrix(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_fp": CostMatrix(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_fn": CostMatrix(tp=1.0, fp=0.11, fn=2.0),
}

PROBATIONARY_PERCENT = 0.15


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: 2 / (1 + e^(5y)) - 1, and -1 beyond 3 window-lengths.

    ``y`` is -1.0 at a window's first point, 0.0 just past its last, and grows after it.
    """
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probationary_length(points: int) -> int:
    """Points at the start of a file where detections do not count (NAB: 15%, capped)."""
    return int(min(math.floor(PROBATIONARY_PERCENT * points), PROBATIONARY_PERCENT * 5000))


@dataclass(frozen=True, slots=True)
class FileScore:
    """One file's raw NAB score under one profile, and the counts behind it."""

    score: float
    windows: int
    detected_windows: int
    false_positives: int  # counted detections outside every window
    detections: int  # counted detections (after the probationary period)

    @property
    def null(self) -> float:
        return -float(self.windows)

    def normalised(self, cost: CostMatrix) -> float | None:
        """100 * (score - null) / (perfect - null); None for a file without windows."""
        perfect, null = cost.tp * self.windows, -cost.fn * self.windows
        if perfect == null:
            return None
        return 100.0 * (self.score - null) / (perfect - null)


def score_file(
    detections: Sequence[bool],
    windows: Sequence[tuple[int, int]],
    cost: CostMatrix,
    *,
    probation: int | None = None,
) -> FileScore:
    """NAB's raw score for one file: ``detections`` per point, ``windows`` as inclusive
    ``(first, last)`` point indices in time order, ``probation`` defaulting to NAB's."""
    n = len(detections)
    skip = probationary_length(n) if probation is None else probation
    flagged = [i for i, hit in enumerate(detections) if hit and i >= skip]
    in_window = [-1] * n
    for w, (first, last) in enumerate(windows):
        for i in range(first, last + 1):
            in_window[i] = w
    max_tp = scaled_sigmoid(-1.0)
    first_hit: dict[int, int] = {}
    fp_score = 0.0
    false_positives = 0
    for i in flagged:
        w = in_window[i]
        if w >= 0:
            first_hit.setdefault(w, i)
            continue
        false_positives += 1
        preceding = [k for k, (_, last) in enumerate(windows) if last < i]
        if not preceding:
            fp_score -= cost.fp
            continue
        first, last = windows[preceding[-1]]
        width = last - first + 1
        position = abs(last - i) / float(width - 1) if width > 1 else 4.0
        fp_score += scaled_sigmoid(position) * cost.fp
    tp_score = 0.0
    for w, i in first_hit.items():
        first, last = windows[w]
        width = last - first + 1
        tp_score += scaled_sigmoid(-(last - i + 1) / float(width)) * cost.tp / max_tp
    fn_score = -cost.fn * (len(windows) - len(first_hit))
    return FileScore(
        score=tp_score + fp_score + fn_score,
        windows=len(windows),
        detected_windows=len(first_hit),
        false_positives=false_positives,
        detections=len(flagged),
    )


def corpus_score(scores: Sequence[FileScore], cost: CostMatrix) -> float:
    """The normalised score of a whole corpus: 100 * (S - S_null) / (S_perfect - S_null)."""
    windows = sum(s.windows for s in scores)
    raw = sum(s.score for s in scores)
    perfect, null = cost.tp * windows, -cost.fn * windows
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0


# --------------------------------------------------------------------------- corpora


@dataclass(frozen=True, slots=True)
class Series:
    """One labelled file: its name relative to ``data/``, points and window indices."""

    name: str
    timestamps: list[datetime]
    values: list[float]
    windows: list[tuple[int, int]]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def _index_windows(timestamps: list[datetime], spans: list[list[str]]) -> list[tuple[int, int]]:
    import bisect

    windows = []
    for start_text, end_text in spans:
        start, end = _parse_time(start_text), _parse_time(end_text)
        first = bisect.bisect_left(timestamps, start)
        last = bisect.bisect_right(timestamps, end) - 1
        if first <= last:
            windows.append((first, last))
    return sorted(windows)


def load_corpus(root: Path) -> list[Series]:
    """Every ``data/**/*.csv`` under ``root`` that ``labels/combined_windows.json`` names."""
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    corpus = []
    for name in sorted(labels):
        path = root / "data" / name
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            rows = [(_parse_time(r[0]), float(r[1])) for r in reader if r]
        timestamps = [t for t, _ in rows]
        corpus.append(
            Series(
                name=name,
                timestamps=timestamps,
                values=[v for _, v in rows],
                windows=_index_windows(timestamps, labels[name]),
            )
        )
    return corpus


def default_corpus() -> Path:
    """``shared/nab`` beside the checkout (or beside the directory holding worktrees)."""
    repo = Path(__file__).resolve().parent.parent
    for base in (repo.parent, repo.parent.parent):
        if (base / "shared" / "nab" / "labels").is_dir():
            return base / "shared" / "nab"
    return repo.parent / "shared" / "nab"
