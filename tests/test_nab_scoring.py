"""The NAB scoring that benchmarks/anomaly.py reports, checked against hand-computed values.

Values below were worked out by hand from the NAB paper's definitions: the scaled sigmoid
sigma(y) = 2 / (1 + e^(5y)) - 1; a true positive at relative position y = -(last - i + 1) /
width scores sigma(y) / sigma(-1) (so a window's first point scores exactly A_TP); a false
positive i points past a window's last point scores A_FP * sigma(i / (width - 1)); one before
any window, or more than three widths after, -A_FP; a missed window -A_FN; the first 15% of
the points (at most 750) are probationary.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.nab import (
    PROFILES,
    FileScore,
    corpus_score,
    load_corpus,
    probationary_length,
    scaled_sigmoid,
    score_file,
)

STANDARD = PROFILES["standard"]


def _hits(n: int, *indices: int) -> list[bool]:
    hits = [False] * n
    for i in indices:
        hits[i] = True
    return hits


def test_scaled_sigmoid_matches_the_papers_curve() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.986614, abs=1e-6)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(-0.6) == pytest.approx(0.905148, abs=1e-6)
    assert scaled_sigmoid(5 / 9) == pytest.approx(-0.882926, abs=1e-6)
    assert scaled_sigmoid(3.5) == -1.0  # beyond three window-lengths: a full false positive


def test_probationary_period_is_fifteen_percent_capped_at_750_points() -> None:
    assert probationary_length(100) == 15
    assert probationary_length(4032) == 604
    assert probationary_length(15902) == 750


def test_first_point_of_a_window_scores_exactly_the_true_positive_weight() -> None:
    score = score_file(_hits(100, 20), [(20, 29)], STANDARD)
    assert score.score == pytest.approx(1.0)
    assert score.normalised(STANDARD) == pytest.approx(100.0)


def test_only_the_first_detection_in_a_window_counts() -> None:
    # i = 24 in (20, 29): y = -(29 - 24 + 1) / 10 = -0.6 -> 0.905148 / 0.986614 = 0.917429
    score = score_file(_hits(100, 24, 26, 29), [(20, 29)], STANDARD)
    assert score.score == pytest.approx(0.917429, abs=1e-6)
    assert (score.detected_windows, score.false_positives) == (1, 0)


def test_late_detection_in_a_window_scores_little() -> None:
    # i = 29, the window's last point: y = -0.1 -> 0.244919 / 0.986614 = 0.248242
    score = score_file(_hits(100, 29), [(20, 29)], STANDARD)
    assert score.score == pytest.approx(0.248242, abs=1e-6)


def test_a_hand_made_file_scores_the_hand_computed_total() -> None:
    # 100 points, windows (20, 29) and (60, 69); detections:
    #   5 probationary (ignored); 16 before any window: -0.11;
    #   24 first in the first window: +0.917429; 26 in it again: nothing;
    #   34, 5 points past a window of width 10: 0.11 * sigma(5 / 9) = -0.097122;
    #   the second window is missed: -1.
    score = score_file(_hits(100, 5, 16, 24, 26, 34), [(20, 29), (60, 69)], STANDARD)
    assert score.score == pytest.approx(0.917429 - 0.11 - 0.097122 - 1.0, abs=1e-6)
    assert (score.detections, score.false_positives, score.detected_windows) == (4, 2, 1)
    # normalised: null = -2, perfect = +2 -> 100 * (-0.289693 + 2) / 4
    assert score.normalised(STANDARD) == pytest.approx(42.7577, abs=1e-4)


def test_false_positive_far_after_a_window_costs_the_full_weight() -> None:
    score = score_file(_hits(200, 40, 100), [(40, 49)], STANDARD)
    assert score.score == pytest.approx(1.0 - 0.11)


def test_the_reward_low_fn_profile_doubles_a_missed_window() -> None:
    score = score_file(_hits(100), [(20, 29)], PROFILES["reward_low_fn"])
    assert score.score == -2.0
    assert score.normalised(PROFILES["reward_low_fn"]) == 0.0


def test_corpus_score_normalises_null_to_zero_and_perfect_to_one_hundred() -> None:
    windows = [(20, 29), (60, 69)]
    null = [score_file(_hits(100), windows, STANDARD), score_file(_hits(50), [], STANDARD)]
    perfect = [score_file(_hits(100, 20, 60), windows, STANDARD)]
    assert corpus_score(null, STANDARD) == 0.0
    assert corpus_score(perfect, STANDARD) == pytest.approx(100.0)
    # a file without windows adds only its false positives: -0.11 of 4 possible points
    mixed = [*perfect, FileScore(-0.11, 0, 0, 1, 1)]
    assert corpus_score(mixed, STANDARD) == pytest.approx(100 * (2 - 0.11 + 2) / 4)


def test_load_corpus_maps_window_timestamps_to_point_indices(tmp_path: Path) -> None:
    (tmp_path / "data" / "group").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    start = datetime(2014, 4, 1)
    lines = ["timestamp,value"] + [
        f"{start + timedelta(minutes=5 * i):%Y-%m-%d %H:%M:%S},{i}" for i in range(10)
    ]
    (tmp_path / "data" / "group" / "a.csv").write_text("\r\n".join(lines))
    (tmp_path / "labels" / "combined_windows.json").write_text(
        '{"group/a.csv": [["2014-04-01 00:10:00.000000", "2014-04-01 00:20:00.000000"]],'
        ' "group/missing.csv": []}'
    )
    (series,) = load_corpus(tmp_path)
    assert series.name == "group/a.csv"
    assert series.windows == [(2, 4)]
    assert series.values[-1] == 9.0
