"""Following a live file across rotations, and resuming from saved positions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from metronome.logs.follow import Follower, PositionFile

_open: list[Follower] = []


@pytest.fixture(autouse=True)
def _close_followers() -> object:
    yield
    while _open:
        _open.pop().close()


def follow(*args: object) -> Follower:
    follower = Follower(*args)  # type: ignore[arg-type]
    _open.append(follower)
    return follower


def _append(path: Path, *lines: str) -> None:
    with open(path, "a") as handle:
        handle.write("".join(line + "\n" for line in lines))


def test_new_whole_lines_are_read_and_a_partial_line_waits(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _append(log, "one", "two")
    follower = follow(log)
    assert [line.text for line in follower.read()] == ["one", "two"]
    with open(log, "a") as handle:
        handle.write("thr")
    assert follower.read() == []
    _append(log, "ee")
    (three,) = follower.read()
    assert three.text == "three" and three.offset == len("one\ntwo\n")


def test_rename_rotation_finishes_the_old_file_then_reads_the_new(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _append(log, "a1")
    follower = follow(log)
    assert [line.text for line in follower.read()] == ["a1"]
    _append(log, "a2")  # written just before rotation
    os.rename(log, tmp_path / "access.log.1")
    _append(log, "b1")
    texts = [line.text for line in follower.read()] + [line.text for line in follower.read()]
    assert texts == ["a2", "b1"]


def test_copytruncate_starts_over_with_new_line_ids(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _append(log, "first-long-line", "second-long-line")
    follower = follow(log)
    before = follower.read()
    shutil.copy(log, tmp_path / "access.log.1")
    with open(log, "r+") as handle:
        handle.truncate(0)
    _append(log, "new")
    (after,) = follower.read()
    assert after.text == "new" and after.offset == 0
    assert after.source_id != before[0].source_id  # same inode, next generation


def test_positions_survive_a_restart_without_rereading(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    positions = PositionFile(tmp_path / "positions.json")
    _append(log, "x1", "x2")
    follower = follow(log)
    follower.read()
    follower.commit()
    positions.save({str(log): follower.state})  # type: ignore[dict-item]
    _append(log, "x3")
    uncommitted = follow(log, positions.load()[str(log)])
    assert [line.text for line in uncommitted.read()] == ["x3"]
    # not committed: a second restart reads x3 again (re-read, never skip)
    again = follow(log, positions.load()[str(log)])
    assert [line.text for line in again.read()] == ["x3"]
