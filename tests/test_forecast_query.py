"""``POST /query`` with ``"forecast"``: a time series continued, through real HTTP, on both
stores.

Three weeks of hourly page views of one item in March 2018, the same every week: one view
an hour at night, four an hour from 09:00 to 16:59 on weekdays, two on weekend days. The
week after is then known, and the forecast must say it, with an interval around it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.backends import Backend

START = datetime(2018, 3, 5, tzinfo=UTC)  # a Monday
RANGE = {"from": "2018-03-05", "to": "2018-03-25"}  # three whole weeks, UTC


def views_in_hour(at: datetime) -> int:
    if not 9 <= at.hour < 17:
        return 1
    return 2 if at.weekday() >= 5 else 4


@pytest.fixture(scope="module")
def weeks(backend: Backend, item: str) -> tuple[Backend, str]:
    ticks: list[dict[str, Any]] = []
    for hour in range(21 * 24):
        at = START + timedelta(hours=hour)
        for k in range(views_in_hour(at)):
            ts = (at + timedelta(minutes=7 * k)).isoformat().replace("+00:00", "Z")
            ticks.append({"id": item, "ts": ts})
    for first in range(0, len(ticks), 250):
        resp = backend.client.post("/ticks", json=ticks[first : first + 250])
        assert resp.status_code == 202, resp.text
    backend.settle()
    return backend, item


@pytest.fixture(scope="module")
def item() -> str:
    import uuid

    return "forecast-" + uuid.uuid4().hex[:10]


def test_forecast_continues_the_weekly_shape_with_an_interval(weeks: tuple[Backend, str]) -> None:
    backend, item = weeks
    resp = backend.client.post(
        "/query",
        json={
            "source": "ticks",
            "range": RANGE,
            "dimensions": ["time:hour"],
            "filters": [["is", "item.id", [item]]],
            "limit": 10_000,
            "forecast": {"horizon": "7d"},
        },
    )
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert len(answer["results"]) == 21 * 24  # the history is answered as usual
    meta = answer["meta"]["forecast"]
    assert meta["buckets"] == 168 and meta["season"] == "week" and meta["coverage"] == 0.8
    assert meta["history_buckets"] == 21 * 24
    forecast = answer["forecast"]
    assert len(forecast) == 168
    assert forecast[0]["dimensions"] == ["2018-03-26T00:00+00:00"]  # right after the range
    for hour, row in enumerate(forecast):
        expected = views_in_hour(datetime(2018, 3, 26, tzinfo=UTC) + timedelta(hours=hour))
        (value,), (low,), (high,) = row["metrics"], row["low"], row["high"]
        assert value == expected, (hour, row)
        assert low <= value <= high
    assert answer["query"]["forecast"] == {"horizon": "7d", "coverage": 0.8}


def test_forecast_needs_exactly_one_time_dimension(weeks: tuple[Backend, str]) -> None:
    backend, _ = weeks
    for body in (
        {"dimensions": ["item.id"], "forecast": {"horizon": "7d"}},
        {"dimensions": ["time:month"], "forecast": {"horizon": "30d"}},
        {"dimensions": ["time:day"], "forecast": {"horizon": "7d"}, "compare": "previous_period"},
        {"dimensions": ["time:day"], "forecast": {"horizon": "7 days"}},
        {"dimensions": ["time:hour"], "forecast": {"horizon": "999d"}},
    ):
        resp = backend.client.post("/query", json=body)
        assert resp.status_code == 400, (body, resp.text)
        error = resp.json()
        assert error["error"] == "invalid_query"
        assert error["details"]["field"] == "query.forecast" or "forecast" in error["message"]
