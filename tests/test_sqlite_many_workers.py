"""Many server processes spooling at once, one shipper: nothing lost, nothing doubled."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

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
        stored = [row[0] for row in conn.execute("SELECT id FROM events")]
    assert sorted(stored) == sorted(acknowledged)
    assert sum(views.values()) == 20 + 20 * 25
