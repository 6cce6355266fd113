"""Domain functions without I/O: addresses, referrers, timestamps and calendar buckets."""

from __future__ import annotations

import ipaddress
from zoneinfo import ZoneInfo

import pytest

from metronome.errors import InvalidField
from metronome.events.document import format_timestamp, new_event_id
from metronome.events.enrich import client_address, parse_user_agent, referrer_keys
from metronome.events.tick import parse_timestamp
from metronome.reports.timebuckets import bucket_label, bucket_starts

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", "1.1.1.1", "203.0.113.5"),  # untrusted peer: its header is ignored
        ("10.1.2.3", "198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.7, 10.9.9.9", "198.51.100.7"),  # 6.6.6.6 is forgeable
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "garbage", "10.1.2.3"),
        ("::1", "2001:db8::7", "2001:db8::7"),
        ("10.1.2.3", "[2001:db8::8]:4711", "2001:db8::8"),
        ("10.1.2.3", "192.0.2.1:8080", "192.0.2.1"),
    ],
)
def test_client_address_believes_forwarded_for_only_through_trusted_proxies(
    peer: str, xff: str | None, expected: str
) -> None:
    assert client_address(peer, xff, PROXIES) == expected


@pytest.mark.parametrize(
    ("referrer", "expected"),
    [
        ("https://www.arcgis.com/", ("arcgis.com", "arcgis.com")),
        (
            "http://WashingtonPost.com/articles/dc-news/?a=1#x",
            ("washingtonpost.com", "washingtonpost.com/articles/dc-news"),
        ),
        ("example.org/path", ("example.org", "example.org/path")),
        (
            "android-app://com.google.android.gm/",
            ("com.google.android.gm", "com.google.android.gm"),
        ),
        ("", (None, None)),
        ("http://[::1", (None, None)),
    ],
)
def test_referrer_keys_drop_scheme_query_and_www(
    referrer: str, expected: tuple[str | None, str | None]
) -> None:
    assert referrer_keys(referrer) == expected


def test_known_crawlers_are_bots_and_command_line_clients_are_not() -> None:
    assert parse_user_agent(
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
    ).is_bot
    assert not parse_user_agent("curl/8.5.0").is_bot
    assert parse_user_agent("curl/8.5.0").name == "curl"


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("2015-01-22T00:00:00Z", 1421884800000),
        ("2015-01-22T01:00:00+01:00", 1421884800000),
        ("2015-01-22T00:00:00", 1421884800000),
        ("2015-01-22", 1421884800000),
        (1421884800000, 1421884800000),
        ("1421884800000", 1421884800000),
        (" 1421884800000\n", 1421884800000),
    ],
)
def test_timestamps_are_iso_8601_or_epoch_milliseconds(value: object, ms: int) -> None:
    assert parse_timestamp(value) == ms


@pytest.mark.parametrize(
    "value", [True, "soon", float("nan"), {"a": 1}, "\x1c3", "\u0663", "3\x85"]
)
def test_bad_timestamps_name_the_field(value: object) -> None:
    with pytest.raises(InvalidField) as err:
        parse_timestamp(value)
    assert err.value.details == {"field": "ts"}


def test_days_in_a_zone_with_a_half_hour_offset_start_at_local_midnight() -> None:
    tz = ZoneInfo("Asia/Kolkata")
    starts = bucket_starts(1421884800000, 1421884800000 + 86400000, "day", tz)
    assert [bucket_label(s, "day", tz) for s in starts] == ["2015-01-22", "2015-01-23"]
    assert starts[0] == 1421884800000 - 5.5 * 3600 * 1000


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1421884800007, "2015-01-22T00:00:00.007Z"),
        (1421884800999, "2015-01-22T00:00:00.999Z"),
        (1421884801000, "2015-01-22T00:00:01.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_timestamps_are_written_as_logstash_does(ms: int, text: str) -> None:
    assert format_timestamp(ms) == text
    assert format_timestamp(ms) == text  # the second time from the per-second memo


def test_event_ids_are_the_millisecond_then_80_random_bits_and_sort_by_time() -> None:
    first, second = new_event_id(1421884800007), new_event_id(1421884800008)
    assert len(first) == 32 and int(first, 16) >= 0
    assert first.startswith(f"{1421884800007:012x}") and second.startswith(f"{1421884800008:012x}")
    assert first < second
    assert len({new_event_id(0) for _ in range(1000)}) == 1000
