"""Many server processes spooling at once, one shipper: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from metronome.store.sqlite import connect
from tests.support.backends import wait_for_drain
from tests.support.metronome_server import MetronomeServer


def test_many_workers_writing_at_once_store_every_acknowledged_tick_once_sqlite(
    tmp_path: Path,
) -> None:
    server = MetronomeServer({}, data_dir=tmp_path / "data", workers=4)
    server.start()
    try:

        def send(worker: int) -> list[str]:
            ids: list[str] = []
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for n in range(40):
                    if n % 2:
                        resp = client.post("/tick", json={"id": f"w{worker}", "n": n})
                        assert resp.status_code == 202, resp.text
                        ids.append(resp.json()["id"])
                    else:
                        batch = [{"id": f"w{worker}", "n": n, "i": i} for i in range(25)]
                        resp = client.post("/ticks", json=batch)
                        assert resp.status_code == 202, resp.text
                        ids.extend(resp.json()["ids"])
            return ids

        with ThreadPoolExecutor(max_workers=12) as pool:
            acknowledged = [i for ids in pool.map(send, range(12)) for i in ids]
        wait_for_drain(server)
        with httpx.Client(base_url=server.url) as client:
            views = client.get("/tock/w3", params={"bots": "include"}).json()["views"]
    finally:
        assert server.stop() == 0, server.log_tail()

    assert len(acknowledged) == 12 * (20 + 20 * 25)
    assert len(set(acknowledged)) == len(acknowledged)
    with sqlite3.connect(tmp_path / "data" / "metronome.sqlite3") as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM events WHERE dataset != 'visits'")]
    assert sorted(stored) == sorted(acknowledged)
    assert sum(views.values()) == 20 + 20 * 25


def _in_another_process(db: Path, sql: str) -> list[tuple[object, ...]]:
    """``sql``'s rows, read by a connection of another process that then closes (as
    ``metronome sites create`` or a test's own sqlite3 connection does)."""
    code = (
        "import sqlite3, sys, json\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "print(json.dumps(conn.execute(sys.argv[2]).fetchall()))\n"
        "conn.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db), sql], capture_output=True, text=True, check=True
    )
    return [tuple(row) for row in json.loads(done.stdout)]


def test_a_second_connection_in_a_process_keeps_its_writes_visible_to_other_processes_sqlite(
    tmp_path: Path,
) -> None:
    db = tmp_path / "data" / "metronome.sqlite3"
    writer = connect(db)  # the store's connection
    writer.execute("CREATE TABLE seen (n INTEGER)")
    writer.execute("INSERT INTO seen VALUES (1)")
    second = connect(db)  # the sites registry's, in the same process
    assert _in_another_process(db, "SELECT n FROM seen") == [(1,)]
    writer.execute("INSERT INTO seen VALUES (2)")  # after the other process closed
    assert _in_another_process(db, "SELECT n FROM seen ORDER BY n") == [(1,), (2,)]
    assert Path(f"{db}-wal").exists()
    assert {stat.S_IMODE(p.stat().st_mode) for p in db.parent.glob("metronome.sqlite3*")} == {0o600}
    second.close()
    writer.close()
