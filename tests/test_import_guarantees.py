"""``metronome import`` parses in one process and writes in another; what it promises
holds on both stores: killed mid-import it loses nothing it had stored and a second run
stores the rest once; every line is stored or rejected with its reason; a server ingesting
ticks into the same data directory keeps answering and storing them meanwhile."""

from __future__ import annotations

import gzip
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.backends import Backend

RULES = "/datasets/{id}"
SUMMARY = re.compile(
    r"read (\d+) lines, stored (\d+), already stored (\d+), rejected (\d+)(?: \(([^)]*)\))?"
)


def _write_log(path: Path, item: str, lines: int, junk_every: int = 0) -> int:
    """``lines`` combined lines for 50 items named after ``item``; every ``junk_every``-th
    line is not a request at all. Returns how many lines are junk."""
    junk = 0
    with open(path, "w") as f:
        for i in range(lines):
            if junk_every and i % junk_every == junk_every - 1:
                f.write(f"not a request {item} {i}\n")
                junk += 1
                continue
            minute, second = divmod(i % 3600, 60)
            f.write(
                f"10.{i % 200}.{i // 200 % 200}.7 - - [07/May/2026:10:{minute:02d}:{second:02d}"
                f' +0000] "GET /datasets/{item}-{i % 50} HTTP/1.1" 200 512 "-" "curl/8.5"\n'
            )
    return junk


def _stored(b: Backend, item: str) -> int:
    """Documents of the ``item-*`` items in the store, read from the store itself."""
    if b.es_url:
        httpx.post(f"{b.es_url}/{b.index_prefix}-logs-*/_refresh", timeout=30)
        resp = httpx.post(
            f"{b.es_url}/{b.index_prefix}-logs-*/_count",
            json={"query": {"prefix": {"item.id": f"{item}-"}}},
            timeout=30,
        )
        return int(resp.json().get("count", 0)) if resp.status_code == 200 else 0
    with sqlite3.connect(b.server.data_dir / "metronome.sqlite3", timeout=30) as conn:
        row = conn.execute(
            "SELECT count(*) FROM events WHERE dataset = 'logs' AND item_id >= ? AND item_id < ?",
            (f"{item}-", f"{item}."),  # '.' follows '-': every id starting with "<item>-"
        ).fetchone()
    return int(row[0])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _import(b: Backend, path: Path, *extra: str) -> dict[str, Any]:
    done = b.server.run_cli(
        "import",
        str(path),
        *extra,
        env={"METRONOME_URL_RULES": RULES, "METRONOME_LOG_FORMAT": "combined"},
    )
    assert done.returncode == 0, done.stderr
    found = SUMMARY.search(done.stderr)
    assert found, done.stderr
    read, stored, already, rejected = (int(found[n]) for n in range(1, 5))
    return {
        "read": read,
        "stored": stored,
        "already": already,
        "rejected": rejected,
        "reasons": found[5] or "",
    }


def test_an_import_killed_midway_keeps_what_it_stored_and_a_second_run_stores_the_rest_once(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    b = backend
    # 12 batches of 2,000 (import_process.BATCH_DOCS): the test kills the import at the
    # first one it sees stored, so most of the file is left for the second run
    lines = 24_000
    log = tmp_path / "access.log"
    junk = _write_log(log, item, lines, junk_every=1000)
    errors = tmp_path / "import.stderr"
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metronome", "import", "--quiet", str(log)],
            env={**b.server.env, "METRONOME_URL_RULES": RULES, "METRONOME_LOG_FORMAT": "combined"},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 240
        seen = 0
        while seen == 0:  # the first batches are in the store, and readers see them
            assert proc.poll() is None, errors.read_text()
            assert time.monotonic() < deadline, "nothing stored in 240 s"
            time.sleep(0.02)
            seen = _stored(b, item)
        parsers = _children(proc.pid)
        assert parsers, "the import runs its parsing in a second process"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen < lines - junk, "the import ended before it was killed: use a longer log"
    deadline = time.monotonic() + 30  # the parsing process notices and ends by itself
    while any(_alive(pid) for pid in parsers):
        assert time.monotonic() < deadline, f"parsing process {parsers} outlived the import"
        time.sleep(0.05)
    after_kill = _stored(b, item)
    assert after_kill >= seen  # nothing a reader saw stored was lost
    if b.es_url is None:
        with sqlite3.connect(b.server.data_dir / "metronome.sqlite3") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    again = _import(b, log)
    assert again["read"] == lines
    assert again["rejected"] == junk and again["reasons"] == f"no_match {junk}"
    assert again["already"] >= after_kill  # what survived is recognised as stored
    assert again["stored"] + again["already"] == lines - junk  # every line once
    assert _stored(b, item) == lines - junk
    third = _import(b, log)
    assert (third["stored"], third["already"]) == (0, lines - junk)


def test_live_ticks_are_acknowledged_and_stored_while_an_import_writes(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    b = backend
    lines = 12_000  # six batches: seconds of writing, with ticks arriving all along
    log = tmp_path / "access.log"
    _write_log(log, item, lines)
    proc = subprocess.Popen(
        [sys.executable, "-m", "metronome", "import", str(log)],
        env={**b.server.env, "METRONOME_URL_RULES": RULES, "METRONOME_LOG_FORMAT": "combined"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    live = f"{item}-live"
    sent = during = 0
    try:
        while proc.poll() is None or sent < 20:
            resp = b.client.post("/tick", json={"id": live, "event": "view"})
            assert resp.status_code == 202, resp.text  # the API never waits for the import
            sent += 1
            during += proc.poll() is None
            time.sleep(0.01)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert during > 0, "no tick was sent while the import ran"
    assert f"read {lines} lines, stored {lines}, already stored 0, rejected 0" in stderr
    views = b.tock(live)["views"]
    assert sum(views.values()) == sent  # every acknowledged tick stored, once
    assert _stored(b, item) == lines


def test_an_import_of_standard_input_and_of_a_damaged_file_store_what_they_read(
    backend: Backend, item: str, tmp_path: Path
) -> None:
    b = backend
    log = tmp_path / "access.log"
    _write_log(log, item, 5000)
    text = log.read_text()
    piped = b.server.run_cli("import", "-", env={"METRONOME_URL_RULES": RULES}, input_text=text)
    assert piped.returncode == 0, piped.stderr
    assert "read 5000 lines, stored 5000, already stored 0, rejected 0" in piped.stderr
    assert _stored(b, item) == 5000
    other = f"{item}x"
    _write_log(log, other, 5000)
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(gzip.compress(log.read_bytes())[:-4000])  # its end is missing
    damaged = b.server.run_cli("import", str(cut), env={"METRONOME_URL_RULES": RULES})
    assert damaged.returncode != 0
    assert "damaged gzip file" in damaged.stderr and "Traceback" not in damaged.stderr
    assert 0 < _stored(b, other) < 5000  # the lines before the damage are stored


def test_the_rows_the_import_writes_hold_what_each_document_says_in_its_columns() -> None:
    """``sqlite_rows`` (made in the parsing process) reads the indexed columns straight
    from each document; the plain reading, field by field from ``events/fields.py``,
    gives the same row, for log documents and for odd shapes alike."""
    import orjson

    from metronome.events import fields as F
    from metronome.events.document import Document
    from metronome.store.sqlite import sqlite_rows

    def plain(d: Document) -> tuple[Any, ...]:
        def get(field: str) -> Any:
            value: Any = d.source
            for part in field.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return value

        return (
            d.id,
            d.dataset,
            d.timestamp_ms,
            get(F.ITEM_ID),
            get(F.EVENT_ACTION),
            get(F.ITEM_FORMAT),
            get(F.REFERRER_PAGE),
            int(bool(get(F.BOT))),
            orjson.dumps(d.source).decode(),
            get(F.SITE_ID) or F.DEFAULT_SITE,
            get(F.REFERRER_SPAM),  # the rollups' spam column (booleans as 0/1)
            get(F.VISITOR_ID),  # the visitor index's column
        )

    sources: list[dict[str, Any]] = [
        {
            "event": {"action": "download", "id": "x"},
            "item": {"id": "trees", "format": "csv"},
            "referrer": {"page": "example.org/a", "domain": "example.org"},
            "bot": True,
            "site": {"id": "blog"},
            "visitor": {"id": "v1"},
        },
        {"event": {"id": "y"}, "bot": False, "visitor": {}},
        {"item": "not an object", "event": None, "referrer": [], "site": {}, "visitor": "v2"},
        {},
    ]
    documents = [Document(f"id{i}", 1_000 * i, "logs", s) for i, s in enumerate(sources)]
    assert sqlite_rows(documents) == [plain(d) for d in documents]
