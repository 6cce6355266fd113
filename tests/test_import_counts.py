"""``metronome import`` says what it stored: identical lines are different requests, a
second import of the same lines says ``already stored``, and rejects are recorded once."""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from metronome.config import Settings
from metronome.pipeline.log_input import import_files
from tests.support.fuzz import fuzz

RULES = "/datasets/{id}"


def _line(item: str, when: str, agent: str = "curl/8.5") -> str:
    return f'8.8.8.8 - - [{when}] "GET /datasets/{item} HTTP/1.1" 200 512 "-" "{agent}"'


def test_identical_lines_far_apart_are_each_stored_and_a_second_import_says_so(
    backend: Any, item: str, tmp_path: Path
) -> None:
    b = backend  # the shared server of each store (tests/conftest.py)
    marker = f"not a request {item}"
    lines = [
        _line(item, "07/May/2026:10:00:00 +0000"),
        _line(item + "-other", "07/May/2026:10:30:00 +0000"),  # more than ten minutes later
        _line(item, "07/May/2026:10:00:00 +0000"),  # the same request line again
        marker,
    ]
    plain = tmp_path / "access.log"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "copy.log.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    env = {"METRONOME_URL_RULES": RULES}
    rejects = b.server.data_dir / "rejects.ndjson"

    def recorded() -> int:
        text = rejects.read_text() if rejects.exists() else ""
        return sum(marker in line for line in text.splitlines())

    first = b.server.run_cli("import", str(plain), env=env)
    assert first.returncode == 0, first.stderr
    assert "read 4 lines, stored 3, already stored 0, rejected 1 (no_match 1)" in first.stderr
    assert recorded() == 1
    for path in (plain, packed):  # again, and a gzipped copy
        again = b.server.run_cli("import", str(path), env=env)
        assert again.returncode == 0, again.stderr
        assert "read 4 lines, stored 0, already stored 3, rejected 1" in again.stderr
        assert recorded() == 1
    day = {"from": "2026-05-07", "to": "2026-05-07"}
    assert b.tock(item, **day)["views"] == {"2026-05-07": 2}
    assert len(b.find(item)) == 2


# every line a request, some identical, in any order of time (hours apart included)
_requests = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 47).map(lambda h: h * 1800)),
    min_size=1,
    max_size=30,
)


@fuzz(25)
@given(requests=_requests, split=st.integers(0, 30))
def test_every_line_is_stored_once_however_identical_lines_are_spread(
    requests: list[tuple[str, int]], split: int
) -> None:
    """Import a prefix of a file, then the whole file: every line is one event, and the
    second import stores exactly the lines the first did not (an appended log)."""
    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory)
        config = Settings.from_env(
            {"METRONOME_DATA_DIR": str(data / "data"), "METRONOME_URL_RULES": RULES}
        )
        lines = [
            _line(item, f"07/May/2026:{s // 3600:02d}:{s % 3600 // 60:02d}:00 +0000")
            for item, s in requests
        ]
        head = data / "head.log"
        whole = data / "whole.log"
        head.write_text("".join(line + "\n" for line in lines[:split]))
        whole.write_text("".join(line + "\n" for line in lines))
        first = asyncio.run(import_files(config, [str(head)]))
        second = asyncio.run(import_files(config, [str(whole)]))
        done = min(split, len(lines))
        assert (first.stored, first.already) == (done, 0)
        assert (second.stored, second.already) == (len(lines) - done, done)
        with sqlite3.connect(data / "data" / "metronome.sqlite3") as db:
            # the events table also holds the visits' summaries (issue 25): count lines
            (count,) = db.execute("SELECT count(*) FROM events WHERE dataset = 'logs'").fetchone()
        assert count == len(lines)
