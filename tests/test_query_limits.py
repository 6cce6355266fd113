"""What a query may hold, and what its dates may be: the limits, checked without a server.

Every nested structure a request may hold is bounded (filters: depth and count) and
validated in time linear in its size; every moment is in the supported range
(:data:`~metronome.reports.timebuckets.SUPPORTED_RANGE`), so every bucket, label and
previous period computed from it exists, in every time zone. Anything else is a 400
naming the limit, never an exception a server would answer with a 500.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from metronome.errors import InvalidParameter, InvalidQuery
from metronome.jobs.forget import ALL_TIME, forget_query
from metronome.reports.query import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_NODES,
    QUERY_SCHEMA,
    iso_moment,
    parse_query,
)
from metronome.reports.timebuckets import (
    EARLIEST_MS,
    LATEST_MS,
    bucket_label,
    bucket_starts,
    parse_moment,
)
from metronome.reports.tock import parse_tock_query, tock_queries
from tests.support.fuzz import TIME_ZONES, fuzz

ZONES = TIME_ZONES
LEAF = ["is", "item", ["doc-1"]]
NOW_MS = 1_780_000_000_000  # 2026-05-28


def nested(op: str, depth: int) -> list[Any]:
    """A filter ``depth`` deep: ``not`` chains, or ``and``/``or`` of a leaf and the rest."""
    node: list[Any] = LEAF
    for _ in range(depth - 1):
        node = ["not", node] if op == "not" else [op, [node, LEAF]]
    return node


def refused(body: Any) -> InvalidQuery:
    with pytest.raises(InvalidQuery) as caught:
        parse_query(body, now_ms=NOW_MS)
    return caught.value


@pytest.mark.parametrize("op", ["not", "and", "or"])
def test_filters_nest_up_to_the_limit_and_no_deeper(op: str) -> None:
    parse_query({"filters": [nested(op, MAX_FILTER_DEPTH)]}, now_ms=NOW_MS)
    error = refused({"filters": [nested(op, MAX_FILTER_DEPTH + 1)]})
    assert error.details["field"] == "query.filters[0]"
    assert error.details["limit"] == MAX_FILTER_DEPTH
    assert f"at most {MAX_FILTER_DEPTH} deep" in error.message


@pytest.mark.parametrize("depth", [20, 25, 200, 900])
def test_deeply_nested_filters_are_refused_at_once(depth: int) -> None:
    """A 300-byte request of 20 nested nots took 15 s to validate; 25 killed the worker."""
    started = time.monotonic()
    for op in ("not", "and"):
        refused({"filters": [nested(op, depth)]})
    assert time.monotonic() - started < 0.5


def test_too_many_filters_are_refused_naming_the_limit() -> None:
    wide = ["and", [LEAF] * 50]
    parse_query({"filters": [wide, wide, wide]}, now_ms=NOW_MS)  # 153 filters
    error = refused({"filters": [wide, wide, wide, wide]})  # 204
    assert error.details["limit"] == MAX_FILTER_NODES
    assert str(MAX_FILTER_NODES) in error.message


def test_the_largest_allowed_filters_validate_in_well_under_a_second() -> None:
    """Each filter is checked against its operator's shape only, once: validation takes
    time linear in the number of filters (checking every shape at every level doubled the
    work with each level)."""
    chains = MAX_FILTER_NODES // MAX_FILTER_DEPTH
    largest = {"filters": [nested("not", MAX_FILTER_DEPTH)] * chains}
    started = time.monotonic()
    parse_query(largest, now_ms=NOW_MS)
    assert time.monotonic() - started < 0.5


def test_a_bad_nested_filter_is_named_by_its_top_level_filter() -> None:
    error = refused({"filters": [LEAF, ["and", [LEAF, ["not", ["is", "item", []]]]]]})
    assert error.details["field"] == "query.filters[1]"
    assert "query.filters[1][1][1][1][2]" in error.message and "a filter is" in error.message


def test_the_published_query_schema_is_a_valid_json_schema() -> None:
    Draft202012Validator.check_schema(QUERY_SCHEMA)


def test_forget_uses_the_same_limits() -> None:
    with pytest.raises(InvalidQuery):
        forget_query([nested("not", 30)])
    forget_query([nested("not", MAX_FILTER_DEPTH)])  # over all time: ALL_TIME is supported
    assert int(ALL_TIME["to"]) == LATEST_MS


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01",
        "0001-12-30",
        "9999-12-31",
        "9999-01-02",
        "0001-01-01T00:00:00",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-11:00",
        "-62135596800000",
        "253402300799999",
        "99999999999999999999999999",
        "9" * 5000,
    ],
)
def test_moments_outside_the_supported_range_are_refused(zone: str, text: str) -> None:
    for end in (False, True):
        with pytest.raises(InvalidParameter) as caught:
            parse_moment("from", text, ZoneInfo(zone), end=end)
        assert "supported range" in caught.value.message


@pytest.mark.parametrize("zone", ZONES)
def test_every_date_of_years_2_to_9998_is_supported_in_every_zone(zone: str) -> None:
    tz = ZoneInfo(zone)
    assert parse_moment("from", "0002-01-01", tz, end=False) >= EARLIEST_MS
    assert parse_moment("to", "9998-12-31", tz, end=True) <= LATEST_MS
    assert parse_moment("from", EARLIEST_MS, tz, end=False) == EARLIEST_MS
    assert parse_moment("to", str(LATEST_MS), tz, end=True) == LATEST_MS


@pytest.mark.parametrize("text", ["١٢٣", "²", "True", "1e3", "", "0x10", "2019-02-30"])
def test_what_is_not_a_moment_is_refused(text: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_moment("from", text, ZoneInfo("UTC"), end=False)
    with pytest.raises(InvalidParameter):
        parse_moment("from", True, ZoneInfo("UTC"), end=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"from": "9999-12-30", "to": "9999-12-31", "tz": "Asia/Tokyo"}, "from"),
        ({"from": "0001-01-01", "to": "9999-12-31", "interval": "month"}, "from"),
        ({"to": "0001-01-05", "tz": "Pacific/Pago_Pago"}, "to"),
        ({"top": "²"}, "top"),
        ({"top": "1" * 5000}, "top"),
    ],
)
def test_tock_parameters_at_the_edge_of_their_type_are_a_400(
    params: dict[str, str], parameter: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_tock_query("x", params, now_ms=NOW_MS)
    assert caught.value.details["parameter"] in (parameter, "to", "from")


@pytest.mark.parametrize(
    "zone", ["Europe", "America", "a" * 300, "Europe/", "zone.tab", "../x", ""]
)
def test_what_is_not_a_time_zone_is_a_400(zone: str) -> None:
    """'Europe' is a directory of the zone database: it raised IsADirectoryError, a 500."""
    error = refused({"tz": zone})
    assert error.details["field"] == "query.tz"
    with pytest.raises(InvalidParameter) as caught:
        parse_tock_query("x", {"tz": zone or "Nowhere"}, now_ms=NOW_MS)
    assert caught.value.details["parameter"] == "tz"


@pytest.mark.parametrize("zone", ZONES)
def test_tock_without_from_near_the_earliest_date_starts_at_the_earliest_moment(
    zone: str,
) -> None:
    query = parse_tock_query("x", {"to": "0002-01-05", "tz": zone}, now_ms=NOW_MS)
    assert query.start_ms >= EARLIEST_MS
    for body in tock_queries(query).values():
        parse_query(body, now_ms=NOW_MS)  # what /tock runs is a query /query accepts


def test_tock_lists_site_among_its_parameters() -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_tock_query("x", {"colour": "red"}, now_ms=NOW_MS)
    assert "site" in caught.value.message


def test_a_previous_period_before_the_supported_range_is_refused() -> None:
    error = refused(
        {"range": {"from": "0002-01-02", "to": "0002-02-01"}, "compare": "previous_period"}
    )
    assert error.details["field"] == "query.compare"
    parse_query({"range": {"from": "0002-01-02", "to": "0002-02-01"}}, now_ms=NOW_MS)


def test_epoch_milliseconds_may_be_json_integers() -> None:
    query = parse_query({"range": {"from": 1_700_000_000_000, "to": 1_700_086_400_000}})
    assert (query.group.start_ms, query.group.end_ms) == (1_700_000_000_000, 1_700_086_400_000)
    for bad in (1.5, True, 10**20, "", None):
        error = refused({"range": {"from": bad}})
        assert "epoch ms" in error.message, error.message


def test_a_bad_preset_is_told_the_general_forms() -> None:
    for bad in ("fortnight", "0d", "1000d", "7w"):
        error = refused({"range": bad})
        assert "Nd" in error.message and "Nh" in error.message and "999" in error.message


@pytest.mark.parametrize("zone", ZONES)
def test_labels_of_early_years_are_zero_padded_iso_dates(zone: str) -> None:
    tz = ZoneInfo(zone)
    start = int(datetime(5, 1, 1, tzinfo=tz).timestamp() * 1000)
    assert bucket_label(start, "day", tz) == "0005-01-01"
    assert bucket_label(start, "month", tz) == "0005-01"
    assert bucket_label(start, "hour", tz).startswith("0005-01-01T00:00")


# --- properties -------------------------------------------------------------------------

MOMENTS = (
    st.integers(EARLIEST_MS - 10**12, LATEST_MS + 10**12)
    | st.sampled_from([EARLIEST_MS, LATEST_MS, EARLIEST_MS - 1, LATEST_MS + 1, 0, -1])
    | st.integers(-(2**70), 2**70)
)


def _as_text(ms: int, zone: str, form: int) -> str | int:
    if form == 0:
        return ms
    if form == 1:
        return str(ms)
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(ZoneInfo(zone))
    except (OverflowError, ValueError, OSError):
        return str(ms)
    return moment.date().isoformat() if form == 2 else moment.isoformat()


FILTERS: st.SearchStrategy[Any] = st.recursive(
    st.sampled_from([LEAF, ["gt", "bytes", 10], ["is", "item", []], ["not"], "x", []]),
    lambda inner: (
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=1, max_size=3)).map(list)
        | st.tuples(st.just("not"), inner).map(list)
    ),
    max_leaves=40,
)


@fuzz(400)
@given(
    start=MOMENTS,
    length=st.integers(1, 10**13),
    zone=st.sampled_from(ZONES),
    forms=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    dimension=st.sampled_from([[], ["time:hour"], ["time:day"], ["time:week"], ["time:month"]]),
    compare=st.sampled_from([None, "previous_period"]),
    filters=st.lists(FILTERS, max_size=3),
)
def test_any_query_is_resolved_or_refused_quickly_and_its_answer_can_be_shaped(
    start: int,
    length: int,
    zone: str,
    forms: tuple[int, int],
    dimension: list[str],
    compare: str | None,
    filters: list[Any],
) -> None:
    body = {
        "range": {
            "from": _as_text(start, zone, forms[0]),
            "to": _as_text(start + length, zone, forms[1]),
        },
        "tz": zone,
        "dimensions": dimension,
        "compare": compare,
        "filters": filters,
    }
    started = time.monotonic()
    try:
        query = parse_query(body, now_ms=NOW_MS)
    except InvalidQuery as exc:
        assert exc.details.get("field", "").startswith("query")
        return
    finally:
        assert time.monotonic() - started < 0.5
    tz = ZoneInfo(zone)
    groups = [query.group] + ([query.previous] if query.previous else [])
    for group in groups:  # what the engine computes to shape an answer
        iso_moment(group.start_ms, tz)
        iso_moment(group.end_ms, tz)
        for bucket in group.bucket_starts[:3] + group.bucket_starts[-3:]:
            label = bucket_label(bucket, dimension[0][5:], tz)  # type: ignore[arg-type]
            assert label[:4].isdigit()


@fuzz(300)
@given(
    start=MOMENTS,
    length=st.integers(1, 10**13),
    zone=st.sampled_from(ZONES),
    forms=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    interval=st.sampled_from(["hour", "day", "week", "month"]),
)
def test_any_tock_range_is_resolved_or_refused(
    start: int, length: int, zone: str, forms: tuple[int, int], interval: str
) -> None:
    params = {
        "from": str(_as_text(start, zone, forms[0])),
        "to": str(_as_text(start + length, zone, forms[1])),
        "tz": zone,
        "interval": interval,
    }
    try:
        query = parse_tock_query("x", params, now_ms=NOW_MS)
    except InvalidParameter:
        return
    tz = ZoneInfo(zone)
    starts = bucket_starts(query.start_ms, query.end_ms, interval, tz)  # type: ignore[arg-type]
    for bucket in starts[:2] + starts[-2:]:
        bucket_label(bucket, interval, tz)  # type: ignore[arg-type]
