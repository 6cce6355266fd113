"""Time ranges and calendar buckets in a time zone (DST-aware), computed once for every store."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from metronome.errors import InvalidParameter
from metronome.events.document import parse_iso_ms
from metronome.store.query import Interval

__all__ = [
    "EARLIEST_MS",
    "LATEST_MS",
    "MAX_BUCKETS",
    "SUPPORTED_RANGE",
    "bucket_count",
    "bucket_label",
    "bucket_starts",
    "floor_to_bucket",
    "parse_moment",
    "parse_zone",
]

_ZONE = re.compile(r"^[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+){0,2}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DIGITS = re.compile(r"^[-+]?[0-9]+$")

MAX_BUCKETS = 10_000

# Every moment a report takes lies in [EARLIEST_MS, LATEST_MS]: 0001-12-31T00:00Z to
# 9999-01-02T00:00Z. Every date of years 2 to 9998 is inside in any time zone (offsets are
# less than a day), and a day, a week or a month around any moment inside (a bucket's
# start, the next one's, a label) is still a date Python can hold, in every time zone.
EARLIEST_MS = -62_104_147_200_000
LATEST_MS = 253_370_851_200_000
SUPPORTED_RANGE = (
    "dates of years 2 to 9998, timestamps and epoch ms from 0001-12-31T00:00Z"
    f" ({EARLIEST_MS}) to 9999-01-02T00:00Z ({LATEST_MS})"
)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def floor_to_bucket(moment: datetime, interval: Interval, tz: ZoneInfo) -> datetime:
    """The start (in ``tz``) of the bucket holding ``moment``."""
    local = moment.astimezone(tz)
    if interval == "minute":
        return local.replace(second=0, microsecond=0)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.date()
    if interval == "week":
        day -= timedelta(days=day.weekday())  # ISO weeks start on Monday, as in Elasticsearch
    elif interval == "month":
        day = day.replace(day=1)
    return _local_midnight(day, tz)


def _next_start(start: datetime, interval: Interval, tz: ZoneInfo) -> datetime:
    if interval == "minute":
        return (start.astimezone(UTC) + timedelta(minutes=1)).astimezone(tz)
    if interval == "hour":
        # step in absolute time so repeated or skipped local hours around DST work out
        return (start.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
    day = start.date()
    if interval == "day":
        day += timedelta(days=1)
    elif interval == "week":
        day += timedelta(days=7)
    else:
        day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return _local_midnight(day, tz)


def bucket_count(start_ms: int, end_ms: int, interval: Interval, tz: ZoneInfo) -> int:
    """How many buckets overlap ``[start_ms, end_ms)``, counted without listing them."""
    if end_ms <= start_ms:
        return 0
    first = floor_to_bucket(datetime.fromtimestamp(start_ms / 1000, tz=UTC), interval, tz)
    if interval in ("minute", "hour"):
        step_ms = 60_000 if interval == "minute" else 3_600_000
        return -(-(end_ms - int(first.timestamp() * 1000)) // step_ms)
    last = floor_to_bucket(datetime.fromtimestamp((end_ms - 1) / 1000, tz=UTC), interval, tz)
    if interval == "month":
        return (last.year - first.year) * 12 + last.month - first.month + 1
    days = (last.date() - first.date()).days
    return days // 7 + 1 if interval == "week" else days + 1


def bucket_starts(start_ms: int, end_ms: int, interval: Interval, tz: ZoneInfo) -> list[int]:
    """Starts (epoch ms) of every bucket overlapping ``[start_ms, end_ms)``.

    Raises ValueError when there would be more than :data:`MAX_BUCKETS`.
    """
    if bucket_count(start_ms, end_ms, interval, tz) > MAX_BUCKETS:
        raise ValueError(f"more than {MAX_BUCKETS} {interval} buckets")
    current = floor_to_bucket(datetime.fromtimestamp(start_ms / 1000, tz=UTC), interval, tz)
    starts: list[int] = []
    while (ms := int(current.timestamp() * 1000)) < end_ms:
        starts.append(ms)
        if len(starts) > MAX_BUCKETS:
            raise ValueError(f"more than {MAX_BUCKETS} {interval} buckets")
        current = _next_start(current, interval, tz)
    return starts


def bucket_label(start_ms: int, interval: Interval, tz: ZoneInfo) -> str:
    """The key a report shows for a bucket: ``2015-01-22`` for days and weeks (the week's
    Monday), ``2015-01`` for months, ``2015-01-22T13:00+01:00`` for hours and
    ``2015-01-22T13:07+01:00`` for minutes."""
    local = datetime.fromtimestamp(start_ms / 1000, tz=UTC).astimezone(tz)
    if interval == "month":  # not strftime: its %Y does not pad years before 1000 on Linux
        return f"{local.year:04d}-{local.month:02d}"
    if interval in ("minute", "hour"):
        return local.isoformat(timespec="minutes")
    return local.date().isoformat()


def parse_zone(name: str, text: str) -> ZoneInfo:
    """The IANA time zone named ``text`` (``Europe/Berlin``); raises
    :class:`InvalidParameter` naming parameter ``name`` for anything else, including
    names that are directories or files of the zone database that are not zones."""
    if len(text) <= 64 and _ZONE.match(text):
        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, say
            pass
    raise InvalidParameter(
        f"'{name}' must be an IANA time zone name such as Europe/Berlin, got {_shown(text)}",
        parameter=name,
    )


def parse_moment(name: str, text: str | int, tz: ZoneInfo, *, end: bool) -> int:
    """A ``from``/``to`` value to epoch ms: a date (the start of that day in ``tz``; as
    ``to`` the whole day included), an ISO 8601 timestamp (no offset: in ``tz``) or epoch
    ms (text or an integer). Raises :class:`InvalidParameter` for anything else, and for a
    moment outside :data:`SUPPORTED_RANGE`."""
    if isinstance(text, int) and not isinstance(text, bool):
        return _supported(name, text, text)
    if not isinstance(text, str):
        raise _not_a_moment(name, text)
    text = text.strip()
    if _DATE.match(text):
        try:
            day = datetime.strptime(text, "%Y-%m-%d").date()
        except ValueError:
            raise InvalidParameter(
                f"'{name}' is not a valid date: {text!r}", parameter=name
            ) from None
        if not 2 <= day.year <= 9998:
            raise _out_of_range(name, text)
        if end:
            day += timedelta(days=1)
        ms = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)
        return _supported(name, ms, text)
    if _DIGITS.match(text):
        if len(text) > 20:  # out of range anyway, and slow to convert when very long
            raise _out_of_range(name, text)
        return _supported(name, int(text), text)
    try:
        parsed = parse_iso_ms(text, tz)
    except (OverflowError, ValueError):  # year 1 in a zone east of UTC, say
        raise _out_of_range(name, text) from None
    if parsed is None:
        raise _not_a_moment(name, text)
    return _supported(name, parsed, text)


def _shown(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:40] + "..."


def _not_a_moment(name: str, text: object) -> InvalidParameter:
    return InvalidParameter(
        f"'{name}' must be a date (2015-01-22), an ISO 8601 timestamp or epoch milliseconds,"
        f" got {_shown(text)}",
        parameter=name,
    )


def _out_of_range(name: str, text: str | int) -> InvalidParameter:
    return InvalidParameter(
        f"'{name}' is out of the supported range ({SUPPORTED_RANGE}), got {_shown(text)}",
        parameter=name,
    )


def _supported(name: str, ms: int, text: str | int) -> int:
    if not EARLIEST_MS <= ms <= LATEST_MS:
        raise _out_of_range(name, text)
    return ms
