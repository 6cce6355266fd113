"""`metronome retention`: old data goes, whole UTC days at a time, on both stores.

Ticks are sent with old ``ts`` through the running server, so they are stored exactly as
live ones are (daily indices on Elasticsearch, rows in the embedded store). The days used
are in 1975, far before anything else the suite writes to the shared servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from metronome.jobs.retention import cutoff_ms, parse_keep
from tests.support.backends import Backend, running_backend

# issue 18: these run on OpenSearch as a third store too (see tests/conftest.py)
OPENSEARCH_CONTRACT = True

CUTOFF = date(1975, 3, 4)  # documents from before 1975-03-04 go
OLD = ["1975-03-01T10:00:00Z", "1975-03-02T23:59:59.999Z", "1975-03-02T00:00:00Z"]
KEPT = ["1975-03-05T00:00:00Z", "1975-03-06T12:00:00Z"]  # a day's margin past midnight


def _keep_until(day: date) -> str:
    """The --keep that puts the cutoff at ``day`` (whole days before today, UTC)."""
    return f"{(datetime.now(UTC).date() - day).days}d"


def _indices(backend: Backend) -> list[str]:
    rows = httpx.get(
        f"{backend.es_url}/_cat/indices/{backend.index_prefix}-*-1975.*",
        params={"format": "json", "h": "index"},
        timeout=30,
    ).json()
    # visit summaries (issue 25) are not what `metronome retention` removes
    return sorted(row["index"] for row in rows if "-visits-" not in row["index"])


def test_retention_removes_whole_old_days_and_keeps_the_rest(backend: Backend, item: str) -> None:
    for ts in OLD + KEPT:
        backend.tick(id=item, ts=ts)
    line = (
        f'8.8.8.8 - - [01/Mar/1975:10:00:00 +0000] "GET /datasets/{item} HTTP/1.1" 200 5'
        ' "-" "curl/8.0"\n'
    )
    imported = backend.server.run_cli(
        "import", "-", input_text=line, env={"METRONOME_URL_RULES": "/datasets/{id} -> view"}
    )
    assert imported.returncode == 0, imported.stderr
    backend.settle()
    keep = _keep_until(CUTOFF)

    dry = backend.server.run_cli("retention", "--keep", keep, "--dataset", "ticks", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[-1].startswith("would delete ")
    assert "from before 1975-03-04 00:00 UTC" in lines[-1]
    if backend.es_url:
        p = backend.index_prefix
        assert lines[:-1] == [
            f"would delete index {p}-ticks-1975.03.01 (1 document)",
            f"would delete index {p}-ticks-1975.03.02 (2 documents)",
        ]
        assert lines[-1].startswith("would delete 2 indices, 3 documents of ticks")
    else:
        assert lines[:-1] == ["would delete 3 ticks documents"]
    assert len(backend.find(item)) == len(OLD + KEPT) + 1  # a dry run deletes nothing

    done = backend.server.run_cli("retention", "--keep", keep, "--dataset", "ticks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("deleted ")
    backend.settle()
    remaining = [(d["event"]["dataset"], d["@timestamp"]) for d in backend.find(item)]
    assert remaining == [
        ("metronome.logs", "1975-03-01T10:00:00.000Z"),  # not a tick
        ("metronome.ticks", "1975-03-05T00:00:00.000Z"),
        ("metronome.ticks", "1975-03-06T12:00:00.000Z"),
    ]
    if backend.es_url:
        p = backend.index_prefix
        assert _indices(backend) == [
            f"{p}-logs-1975.03.01",
            f"{p}-ticks-1975.03.05",
            f"{p}-ticks-1975.03.06",
        ]

    everything = backend.server.run_cli("retention", "--keep", keep)  # --dataset all
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines()[0] == (
        f"deleted index {backend.index_prefix}-logs-1975.03.01 (1 document)"
        if backend.es_url
        else "deleted 1 logs document"
    )
    backend.settle()
    assert [d["@timestamp"] for d in backend.find(item)] == [
        "1975-03-05T00:00:00.000Z",
        "1975-03-06T12:00:00.000Z",
    ]
    again = backend.server.run_cli("retention", "--keep", keep)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        (
            "deleted 0 documents of ticks, logs, metrics",
            "deleted 0 indices, 0 documents of ticks, logs, metrics",
        )
    )
    assert backend.tock(item, **{"from": "1975-03-01", "to": "1975-03-06"})["views"] == {
        "1975-03-06": 1,
        "1975-03-05": 1,
        "1975-03-04": 0,
        "1975-03-03": 0,
        "1975-03-02": 0,
        "1975-03-01": 0,
    }


def test_retention_of_one_site_removes_only_its_old_events(backend: Backend, item: str) -> None:
    """``--site``: that site's old ticks and logs go, one by one; an unknown site is refused
    (it would match nothing). The days are in 1974, before anything else the suite keeps."""
    for ts in ["1974-03-01T10:00:00Z", "1974-03-02T10:00:00Z", "1974-03-05T10:00:00Z"]:
        backend.tick(id=item, ts=ts)
    backend.settle()
    keep = _keep_until(date(1974, 3, 4))

    unknown = backend.server.run_cli("retention", "--keep", keep, "--site", "nosuch")
    assert unknown.returncode == 1
    assert "there is no site 'nosuch' (named by --site)" in unknown.stderr
    dry = backend.server.run_cli("retention", "--keep", keep, "--site", "default", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 2 documents of site default (ticks, logs)")
    done = backend.server.run_cli("retention", "--keep", keep, "--site", "default")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 2 documents of site default")
    backend.settle()
    assert [d["@timestamp"] for d in backend.find(item)] == ["1974-03-05T10:00:00.000Z"]


def test_retention_refuses_a_period_it_cannot_read(tmp_path: Path) -> None:
    for bad, why in (
        ("400", "use days or weeks, like 400d or 57w"),
        ("12m", "like 400d"),
        ("0d", "keep from 1 day to 36600 days"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "metronome", "retention", "--keep", bad],
            env={**os.environ, "METRONOME_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (bad, result.stdout)
        assert f"Invalid value for --keep: '{bad}'" in result.stderr and why in result.stderr
    assert not (tmp_path / "metronome.sqlite3").exists()  # refused before touching the store


@pytest.mark.parametrize("text, days", [("400d", 400), ("57w", 399), (" 1D ", 1)])
def test_keep_periods_and_the_midnight_cutoff(text: str, days: int) -> None:
    assert parse_keep(text) == timedelta(days=days)
    now = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)
    cutoff = datetime.fromtimestamp(cutoff_ms(parse_keep(text), now) / 1000, tz=UTC)
    assert cutoff == datetime(2026, 11, 23, tzinfo=UTC) - timedelta(days=days)


@pytest.mark.parametrize("kind", ["sqlite", "elasticsearch"])
def test_the_shipper_applies_the_retention_policy_per_site_periodically(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str
) -> None:
    """METRONOME_RETENTION=400d,default=30d: the default site keeps 30 days (its older
    events are deleted one by one), every site loses what is older than 400 days (whole
    days), and the shipper does it again every second here."""
    env = {"METRONOME_RETENTION": "400d,default=30d", "METRONOME_RETENTION_INTERVAL_S": "1"}
    now = datetime.now(UTC)
    with running_backend(request, tmp_path_factory, kind, env) as backend:
        ticks = [
            {"id": "kept-" + str(days), "ts": (now - timedelta(days=days)).isoformat()}
            for days in (500, 100, 10)
        ]
        assert backend.client.post("/ticks", json=ticks).json()["accepted"] == 3

        def items() -> set[str]:
            backend.settle()
            resp = backend.client.post(
                "/query", json={"range": {"from": "0"}, "bots": "include", "dimensions": ["item"]}
            )
            return {r["dimensions"][0] for r in resp.json()["results"]}

        deadline = time.monotonic() + 30
        while items() != {"kept-10"} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert items() == {"kept-10"}


@pytest.mark.parametrize(
    ("text", "says"),
    [("400d,90d", "one default period"), ("shop=", "400d or 57w"), ("x=1y", "400d")],
)
def test_a_retention_policy_it_cannot_read_is_refused_at_start(text: str, says: str) -> None:
    from metronome.config import Settings
    from metronome.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"METRONOME_RETENTION": text})


def test_retention_keeps_visit_summaries_to_the_same_period(backend: Backend, item: str) -> None:
    """Visit summaries (by the visit's start) go with the events: ``--dataset visits``,
    and one site's retention. The days are in 1973, before anything else the suite keeps."""
    for ts in ["1973-03-01T10:00:00Z", "1973-03-02T10:00:00Z", "1973-03-05T10:00:00Z"]:
        backend.tick(id=item, ts=ts)
    backend.settle()
    keep = _keep_until(date(1973, 3, 4))

    def visits() -> list[str]:
        backend.settle()
        resp = backend.client.post(
            "/query",
            json={
                "source": "visits",
                "range": {"from": "1973-03-01", "to": "1973-03-06"},
                "metrics": ["visits"],
                "dimensions": ["time:day"],
            },
        )
        assert resp.status_code == 200, resp.text
        return [r["dimensions"][0] for r in resp.json()["results"] if r["metrics"][0]]

    assert visits() == ["1973-03-01", "1973-03-02", "1973-03-05"]
    dry = backend.server.run_cli("retention", "--keep", keep, "--dataset", "visits", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # (other tests' older visits, such as 1970's, may be listed too)
    if backend.es_url:
        p = backend.index_prefix
        assert {
            f"would delete index {p}-visits-1973.03.01 (1 document)",
            f"would delete index {p}-visits-1973.03.02 (1 document)",
        } <= set(dry.stdout.splitlines())
    else:
        assert dry.stdout.startswith("would delete ")
        assert dry.stdout.splitlines()[0].endswith(" visits documents")
    assert visits() == ["1973-03-01", "1973-03-02", "1973-03-05"]

    site = backend.server.run_cli("retention", "--keep", keep, "--site", "default")
    assert site.returncode == 0, site.stderr
    lines = site.stdout.splitlines()
    assert lines[0].startswith("deleted 2 documents of site default (ticks, logs)")
    assert lines[1].startswith("deleted ") and "of site default (visits)" in lines[1]
    assert visits() == ["1973-03-05"]
    assert [d["@timestamp"] for d in backend.find(item)] == ["1973-03-05T10:00:00.000Z"]
