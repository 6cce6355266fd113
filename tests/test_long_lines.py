"""Access-log lines have a maximum length: a longer one costs neither memory nor progress.

The peak memory of ``metronome import`` is measured (the largest resident set of the
children of a small wrapper process) against an import of one short line.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from metronome.logs.ingest import split_lines
from tests.support.fuzz import fuzz

LINE = '81.2.69.160 - - [04/Jun/2019:10:00:00 +0000] "GET /doc HTTP/1.1" 200 5 "-" "curl/8"\n'
STREAM_BYTES = 200 << 20
HEADROOM_KIB = 48 << 10  # one 1 MiB read and one 64 KiB line, with room for the allocator

# runs the import as its only child and prints that child's peak resident set (KiB)
_WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdin=sys.stdin, capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""
_ZEROS = f"""
import sys
chunk = bytes(1 << 20)
for _ in range({STREAM_BYTES >> 20}):
    sys.stdout.buffer.write(chunk)
sys.stdout.buffer.write({(chr(10) + LINE).encode()!r})
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "METRONOME_DATA_DIR": str(tmp_path / "data")}


def _import(tmp_path: Path, source: str, stdin: int | None = None) -> tuple[int, str]:
    """(peak KiB, stderr) of ``metronome import source``."""
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "metronome", "import", source],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]), done.stderr


def _baseline_kib(tmp_path: Path) -> int:
    small = tmp_path / "small.log"
    small.write_text(LINE)
    peak, _ = _import(tmp_path, str(small))
    return peak


def test_an_endless_line_on_standard_input_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    baseline = _baseline_kib(tmp_path)
    zeros = subprocess.Popen([sys.executable, "-c", _ZEROS], stdout=subprocess.PIPE)
    assert zeros.stdout is not None
    try:
        started = time.monotonic()
        peak, stderr = _import(tmp_path, "-", stdin=zeros.stdout.fileno())
        elapsed = time.monotonic() - started
    finally:
        zeros.stdout.close()
        zeros.wait()
    assert peak < baseline + HEADROOM_KIB, (peak, baseline)
    assert "read 2 lines, stored 1, already stored 0, rejected 1 (line_too_long 1)" in stderr
    assert elapsed < 120


def test_a_gzip_bomb_is_read_in_bounded_memory(tmp_path: Path) -> None:
    baseline = _baseline_kib(tmp_path)
    bomb = tmp_path / "bomb.log.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # the gzip container
    with open(bomb, "wb") as out:
        chunk = bytes(1 << 20)
        for _ in range(STREAM_BYTES >> 20):
            out.write(compressor.compress(chunk))
        out.write(compressor.compress(b"\n" + LINE.encode()))
        out.write(compressor.flush())
    assert bomb.stat().st_size < STREAM_BYTES // 100
    peak, stderr = _import(tmp_path, str(bomb))
    assert peak < baseline + HEADROOM_KIB, (peak, baseline)
    assert "read 2 lines, stored 1, already stored 0, rejected 1 (line_too_long 1)" in stderr


def test_ship_follows_past_a_line_longer_than_the_limit(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"x" * (3 << 20))  # longer than one read, no end yet
    env = {**_env(tmp_path), "METRONOME_MAX_LINE_BYTES": "4096"}
    ship = subprocess.Popen(
        [sys.executable, "-m", "metronome", "ship", str(log)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        with open(log, "a") as handle:
            handle.write("\n" + "y" * 5000 + "\n" + LINE)
        deadline = time.monotonic() + 30
        positions = tmp_path / "data" / "ship-positions.json"
        while time.monotonic() < deadline:
            if positions.exists() and str(log.stat().st_size) in positions.read_text():
                break
            time.sleep(0.2)
    finally:
        ship.send_signal(signal.SIGTERM)
        _, stderr = ship.communicate(timeout=30)
    assert ship.returncode == 0, stderr
    assert stderr.splitlines()[-1].strip() == (
        "read 3 lines, spooled 1, rejected 2 (line_too_long 2), bots 0"
    )


@fuzz(200)
@given(
    data=st.lists(st.sampled_from([b"a", b"bb", b"\n", b"\r\n", b"x" * 40]), max_size=60).map(
        b"".join
    ),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    limit=st.integers(1, 60),
)
def test_lines_split_from_reads_of_any_size_are_the_lines_of_the_stream(
    data: bytes, sizes: list[int], limit: int
) -> None:
    stream = io.BytesIO(data)
    turn = iter(sizes * (len(data) + 1))
    got = list(split_lines(lambda _n: stream.read(next(turn)), limit))
    expected = data.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert got == [line if len(line) <= limit else None for line in expected]
