"""The stage pass of :mod:`benchmarks.import_stages` stores what ``metronome import``
stores: run one after the other on the same generated log (in blocks small enough for
several batches, visits ending between blocks and the writer holding a batch), both
embedded stores hold the same events and as many visit summaries starting at the same
times (their ids differ: each run's visitor salts are its own), and every stage took some
CPU: the stages it times are the import's whole path, not a shortcut of it."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path

import pytest

from benchmarks.import_logs import generate_lines, metronome_env, write_log
from benchmarks.import_stages import STAGES, stage_pass
from metronome.config import Settings
from metronome.pipeline import import_process
from metronome.pipeline.log_input import import_files

LINES = 3000


def _rows(data_dir: Path) -> tuple[set[str], list[int]]:
    """The stored events' ids and the visit summaries' start times, in order."""
    with sqlite3.connect(data_dir / "metronome.sqlite3") as conn:
        events = {i for (i,) in conn.execute("SELECT id FROM events WHERE dataset = 'logs'")}
        visits = [ts for (ts,) in conn.execute("SELECT ts FROM events WHERE dataset = 'visits'")]
    return events, sorted(visits)


def test_the_stage_pass_stores_what_the_import_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "access.log"
    write_log(generate_lines(LINES, 7), log)
    monkeypatch.setattr(import_process, "BATCH_DOCS", 700)
    staged, imported = tmp_path / "staged", tmp_path / "imported"
    staged.mkdir(mode=0o700)
    thresholds = gc.get_threshold()
    try:
        result = stage_pass(str(log), str(staged), None)
    finally:
        gc.set_threshold(*thresholds)
    summary = asyncio.run(import_files(Settings.from_env(metronome_env(imported)), [str(log)]))

    assert result["read"] == summary.read == LINES
    assert result["rejected"] == 0 and result["batches"] == 5
    events, visits = _rows(staged)
    assert len(events) == LINES and len(visits) > 100
    assert (events, visits) == _rows(imported)
    assert result["stored_rows"] == {"logs": LINES, "visits": len(visits)}
    assert all(result["stage_cpu_s"][stage] > 0 for stage in STAGES)
    assert result["durable_commits"] >= 1  # the last batch, as the import's finish()
