"""``POST /ticks`` counts an NDJSON body's ticks while it arrives: however the body is cut
into chunks, the count is the body's non-blank lines, and the chunk that goes past the
limit refuses it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.api.ticks import BatchLines
from metronome.errors import LimitExceeded

LINES = st.lists(st.sampled_from([b'{"id":"a"}', b"", b"  ", b"{bad", b"\t{}\r"]), max_size=30)


def _chunks(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@given(lines=LINES, cuts=st.lists(st.integers(0, 400), max_size=8), limit=st.integers(1, 20))
def test_the_count_is_the_non_blank_lines_whatever_the_chunks(
    lines: list[bytes], cuts: list[int], limit: int
) -> None:
    body = b"\n".join(lines)
    expected = sum(1 for line in lines if line.strip())
    counter = BatchLines(limit)
    try:
        for chunk in _chunks(body, cuts):
            counter.feed(chunk)
    except LimitExceeded:
        assert expected > limit
        assert counter.seen > limit
        return
    assert expected <= limit
    assert counter.seen == expected


def test_a_json_array_is_not_counted_by_lines() -> None:
    counter = BatchLines(1)
    counter.feed(b'  [\n{"id":"a"},\n{"id":"b"},\n{"id":"c"}\n]')
    assert counter.seen == 0


def test_the_first_chunk_past_the_limit_refuses_the_body() -> None:
    counter = BatchLines(1000)
    with pytest.raises(LimitExceeded, match="at most 1000 ticks; this one has at least"):
        for _ in range(1000):  # 4 MiB of invalid lines, 64 KiB at a time
            counter.feed(b"{not json}\n" * 6000)
    assert counter.seen <= 6000
