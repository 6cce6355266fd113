"""The concurrency report: requests in progress at once, from imported access logs that
log a duration, on both stores through real HTTP and ``metronome import``."""

from __future__ import annotations

from pathlib import Path

from tests.support.backends import Backend

FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent'
    ' "$http_referer" "$http_user_agent" $request_time'
)


def _line(when: str, path: str, seconds: str) -> str:
    return (
        f'198.51.100.4 - - [{when} +0000] "GET {path} HTTP/1.1" 200 512 "-"'
        f' "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0" {seconds}'
    )


def test_concurrency_report_reads_request_durations(backend: Backend, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    lines = [
        _line("17/Sep/2024:10:15:00", "/a", "1.500"),
        _line("17/Sep/2024:10:15:01", "/b", "0.500"),
        _line("17/Sep/2024:10:59:59", "/c", "2.000"),
        _line("17/Sep/2024:10:30:00", "/d", "-"),  # no duration: counted apart
        _line("17/Sep/2024:12:00:00", "/e", "36.000"),
    ]
    log.write_text("\n".join(lines) + "\n")
    result = backend.server.run_cli(
        "import", str(log), "--quiet", env={"METRONOME_LOG_FORMAT": FORMAT}
    )
    assert result.returncode == 0, result.stderr
    backend.settle()
    resp = backend.client.get(
        "/reports/concurrency",
        params={"from": "2024-09-17T10:00:00Z", "to": "2024-09-17T13:00:00Z"},
    )
    assert resp.status_code == 200, resp.text
    rows = {r["time"]: r for r in resp.json()["results"]}
    ten, eleven, noon = (rows[f"2024-09-17T{h}:00+00:00"] for h in ("10", "11", "12"))
    assert ten == {
        "time": "2024-09-17T10:00+00:00",
        "requests": 3,
        "requests_without_duration": 1,
        "mean_concurrency": round(4.0 / 3600, 6),
        # the busiest minute, 10:15, held 2 s of requests: 2/60 at once on average
        "peak_concurrency": round(2.0 / 60, 6),
        "busy_seconds": 4.0,
        "longest_request_s": 2.0,
    }
    assert eleven["requests"] == 0 and eleven["mean_concurrency"] == 0
    assert eleven["peak_concurrency"] == 0
    assert noon["mean_concurrency"] == 0.01  # 36 s of one request in an hour
    assert noon["peak_concurrency"] == 0.6  # ... all of them in the minute it ended in
    assert resp.json()["meta"]["peak_over"] == "minute"

    minutes = backend.client.get(
        "/reports/concurrency",
        params={"from": "2024-09-17T10:15:00Z", "to": "2024-09-17T10:17:00Z", "interval": "minute"},
    )
    assert minutes.status_code == 200, minutes.text
    by_minute = {r["time"]: r for r in minutes.json()["results"]}
    quarter = by_minute["2024-09-17T10:15+00:00"]
    assert quarter["requests"] == 2 and quarter["busy_seconds"] == 2.0
    assert quarter["mean_concurrency"] == quarter["peak_concurrency"] == round(2.0 / 60, 6)
    assert by_minute["2024-09-17T10:16+00:00"]["requests"] == 0


def test_concurrency_report_refuses_month_buckets(backend: Backend) -> None:
    resp = backend.client.get("/reports/concurrency", params={"interval": "month"})
    assert resp.status_code == 400
    assert resp.json()["details"]["parameter"] == "interval"


def test_minute_buckets_are_refused_past_ten_thousand(backend: Backend) -> None:
    resp = backend.client.post(
        "/query", json={"source": "logs", "range": "30d", "dimensions": ["time:minute"]}
    )
    assert resp.status_code == 400, resp.text
    assert "10000" in resp.text.replace(",", "") or "10 000" in resp.text
