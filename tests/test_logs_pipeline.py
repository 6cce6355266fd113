"""Access logs end to end: import, ship and the forward input, counted by /tock."""

from __future__ import annotations

import gzip
import os
import sqlite3
import time
from pathlib import Path

from fluent import sender

from tests.support.backends import Backend, wait_for_drain
from tests.support.es_server import free_port
from tests.support.metronome_server import MetronomeServer

RULES = "/datasets/{id}/download.{format} -> download; /datasets/{id} -> view"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def _line(
    item: str,
    when: str,
    path: str = "",
    status: int = 200,
    agent: str = FIREFOX,
    client: str = "8.8.8.8",
) -> str:
    return (
        f'{client} - - [{when}] "GET /datasets/{item}{path} HTTP/1.1" {status} 512 '
        f'"https://www.example.org/list?page=2" "{agent}"'
    )


def test_imported_logs_count_with_ticks_in_tock_and_import_twice_stores_once(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    lines = [
        _line(item, "05/May/2026:10:00:00 +0200", "/download.csv"),
        _line(item, "05/May/2026:10:00:00 +0200", "/download.csv"),  # same second, twice
        _line(item, "05/May/2026:11:00:00 +0200", "/download.kml"),
        _line(item, "05/May/2026:12:00:00 +0200"),
        "\\x16\\x03\\x01 not a request at all",
    ]
    plain = tmp_path / "access.log"
    plain.write_text("\n".join(lines) + "\n")
    packed = tmp_path / "access.log.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    backend.tick(id=item, event="download", format="csv", ts="2026-05-05T09:00:00Z")
    env = {"METRONOME_URL_RULES": RULES}

    first = backend.server.run_cli("import", str(plain), env=env)
    assert first.returncode == 0, first.stderr
    assert "read 5 lines, stored 4, already stored 0, rejected 1 (no_match 1), bots 0" in (
        first.stderr
    )
    again = backend.server.run_cli("import", str(packed), env=env)  # a gzipped copy
    assert again.returncode == 0, again.stderr
    assert "read 5 lines, stored 0, already stored 4, rejected 1" in again.stderr

    window = {"from": "2026-05-05", "to": "2026-05-05"}
    report = backend.tock(item, **window)
    assert report["downloads"] == {"csv": 3, "kml": 1}
    assert report["views"] == {"2026-05-05": 1}
    assert report["referers"] == {"example.org/list": 1}
    assert backend.tock(item, sources="ticks", **window)["downloads"] == {"csv": 1}
    assert backend.tock(item, sources="logs", **window)["downloads"] == {"csv": 2, "kml": 1}
    assert len([d for d in backend.find(item) if d["event"]["dataset"] == "metronome.logs"]) == 4
    countries = {
        d["client"]["geo"]["country_iso_code"]
        for d in backend.find(item)
        if d["event"]["dataset"] == "metronome.logs"
    }
    assert countries == {"US"}  # 8.8.8.8, from the bundled offline database
    rejects = (backend.server.data_dir / "rejects.ndjson").read_text()
    assert "no_match" in rejects and "not a request" in rejects


def test_stdin_import_reads_standard_input(backend: Backend, item: str) -> None:
    line = _line(item, "06/May/2026:10:00:00 +0000", "/download.zip")
    result = backend.server.run_cli(
        "import", "-", env={"METRONOME_URL_RULES": RULES}, input_text=line + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert backend.tock(item, **{"from": "2026-05-06", "to": "2026-05-06"})["downloads"] == {
        "zip": 1
    }


def test_ship_follows_rotation_and_resumes_without_doubles(tmp_path: Path) -> None:
    server = MetronomeServer({"METRONOME_URL_RULES": RULES}, data_dir=tmp_path / "data")
    server.start()
    log = tmp_path / "access.log"
    log.write_text(_line("ship", "07/May/2026:10:00:00 +0000", "/download.csv") + "\n")
    ship = server.popen_cli("ship", str(log))
    try:
        _wait_until(lambda: _downloads(server) == {"csv": 1})
        with open(log, "a") as handle:
            handle.write(_line("ship", "07/May/2026:10:00:01 +0000", "/download.csv") + "\n")
        os.rename(log, tmp_path / "access.log.1")
        log.write_text(_line("ship", "07/May/2026:10:00:02 +0000", "/download.kml") + "\n")
        _wait_until(lambda: _downloads(server) == {"csv": 2, "kml": 1})
    finally:
        ship.terminate()
        assert ship.wait(timeout=30) == 0
    restarted = server.popen_cli("ship", str(log))  # resumes from its position file
    try:
        with open(log, "a") as handle:
            handle.write(_line("ship", "07/May/2026:10:00:03 +0000", "/download.kml") + "\n")
        _wait_until(lambda: _downloads(server) == {"csv": 2, "kml": 2})
        with open(log, "a") as handle:  # a last line: once it is counted, so is all before it
            handle.write(_line("ship", "07/May/2026:10:00:04 +0000", "/download.zip") + "\n")
        _wait_until(lambda: "zip" in _downloads(server))
        assert _downloads(server) == {"csv": 2, "kml": 2, "zip": 1}  # nothing read twice
    finally:
        restarted.terminate()
        assert restarted.wait(timeout=30) == 0
        assert server.stop() == 0, server.log_tail()


def test_forward_input_takes_fluent_logger_ticks_and_access_lines(tmp_path: Path) -> None:
    port = free_port()
    server = MetronomeServer(
        {
            "METRONOME_FORWARD": "on",
            "METRONOME_FORWARD_PORT": str(port),
            "METRONOME_URL_RULES": RULES,
        },
        data_dir=tmp_path / "data",
    )
    server.start()
    try:
        _wait_until(lambda: _port_open(port))
        fluent = sender.FluentSender("metronome", host="127.0.0.1", port=port)
        assert fluent.emit(
            "tick",
            {"id": "fwd", "event": "download", "format": "csv", "ts": "2026-05-08T10:00:00Z"},
        )
        assert fluent.emit(
            "access", {"message": _line("fwd", "08/May/2026:11:00:00 +0000", "/download.shp")}
        )
        assert fluent.emit(
            "tick",
            {
                "id": "fwd",
                "event": "download",
                "format": "kml",
                "ts": "2026-05-08T10:00:00Z",
                "site": "partner",
            },
        )
        fluent.close()
        expected = {"csv": 1, "shp": 1, "kml": 1}
        _wait_until(lambda: _downloads(server, "fwd", "2026-05-08") == expected)
        with sqlite3.connect(server.data_dir / "metronome.sqlite3") as conn:
            stored = set(conn.execute("SELECT site_id, format FROM events WHERE item_id = 'fwd'"))
        # the connection's credentials (here none) decide the site, not a tick's site field:
        # everything goes to METRONOME_LOG_SITE
        assert stored == {("default", "csv"), ("default", "shp"), ("default", "kml")}
    finally:
        assert server.stop() == 0, server.log_tail()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _downloads(
    server: MetronomeServer, item: str = "ship", day: str = "2026-05-07"
) -> dict[str, int]:
    import httpx

    wait_for_drain(server)
    answer = httpx.get(f"{server.url}/tock/{item}", params={"from": day, "to": day}).json()
    return answer["downloads"]  # type: ignore[no-any-return]


def _wait_until(predicate: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
