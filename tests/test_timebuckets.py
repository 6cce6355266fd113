"""Calendar buckets: counting them without listing agrees with listing them."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from metronome.reports.timebuckets import MAX_BUCKETS, bucket_count, bucket_starts
from tests.support.fuzz import TIME_ZONES, fuzz

ZONES = [*TIME_ZONES, "America/New_York"]
INTERVALS = {"hour": 3_600_000 * 2000, "day": 86_400_000 * 900, "week": 86_400_000 * 3000}
INTERVALS["month"] = 86_400_000 * 365 * 40
START_2000 = 946_684_800_000
SPAN_2000_2040 = 40 * 365 * 86_400_000


@fuzz(300)
@given(
    start=st.integers(START_2000, START_2000 + SPAN_2000_2040),
    length=st.integers(1, 10**12),
    interval=st.sampled_from(sorted(INTERVALS)),
    zone=st.sampled_from(ZONES),
)
def test_bucket_count_equals_the_number_of_listed_buckets(
    start: int, length: int, interval: str, zone: str
) -> None:
    length = 1 + length % INTERVALS[interval]
    tz = ZoneInfo(zone)
    count = bucket_count(start, start + length, interval, tz)  # type: ignore[arg-type]
    if count > MAX_BUCKETS:
        return  # bucket_starts refuses these; test_bucket_starts_refuses_... covers it
    assert count == len(bucket_starts(start, start + length, interval, tz))  # type: ignore[arg-type]


def test_bucket_starts_refuses_too_many_buckets_before_listing_them() -> None:
    tz = ZoneInfo("Europe/Berlin")
    ten_thousand_years_ms = 10_000 * 365 * 86_400_000
    try:
        bucket_starts(0, ten_thousand_years_ms, "hour", tz)
    except ValueError as exc:
        assert str(MAX_BUCKETS) in str(exc)
    else:
        raise AssertionError("87 million hour buckets were listed")
    assert bucket_count(0, ten_thousand_years_ms, "hour", tz) > MAX_BUCKETS


def test_bucket_count_across_a_dst_change_counts_local_days() -> None:
    tz = ZoneInfo("Europe/Berlin")
    # 2026-03-28 00:00 to 2026-03-31 00:00 Berlin: three local days, one of 23 hours
    start = 1_774_652_400_000
    end = 1_774_908_000_000
    assert bucket_count(start, end, "day", tz) == 3 == len(bucket_starts(start, end, "day", tz))
    assert bucket_count(start, end, "hour", tz) == 71
