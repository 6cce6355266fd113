"""metronome.client against a running Metronome: batched, in the background, never blocking."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from metronome.client import Client, TickHandler
from tests.support.backends import Backend
from tests.support.es_server import free_port


def test_client_sends_ticks_in_background_batches(backend: Backend, item: str) -> None:
    with Client(backend.server.url, batch_size=100, flush_interval_s=0.2) as client:
        started = time.perf_counter()
        for n in range(1000):
            client.tick(
                item,
                event="download" if n % 10 == 0 else "view",
                format="csv",
                n=n,
                ts="2026-08-08T12:00:00Z",
            )
        assert time.perf_counter() - started < 1.0, "tick() must not wait for the network"
        client.tick(item, bad={"nested": 1})  # refused by the server, counted, not retried
        assert client.flush(30)
        assert client.stats.sent == 1000 and client.stats.rejected == 1
    report = backend.tock(item, **{"from": "2026-08-08", "to": "2026-08-08"})
    assert report["views"] == {"2026-08-08": 900}
    assert report["downloads"] == {"csv": 100}


def test_client_keeps_retrying_until_the_server_is_back(tmp_path: Path) -> None:
    from tests.support.metronome_server import MetronomeServer

    server = MetronomeServer({}, data_dir=tmp_path / "data")
    server.port = free_port()
    server.url = f"http://127.0.0.1:{server.port}"
    server.env["METRONOME_PORT"] = str(server.port)
    client = Client(server.url, flush_interval_s=0.1, max_backoff_s=0.5)
    try:
        client.tick("later", n=1)
        client.tick("later", n=2)
        deadline = time.monotonic() + 30
        while client.stats.retries < 1:  # nobody listens yet: the batch is retried
            assert time.monotonic() < deadline, "the client never retried"
            time.sleep(0.05)
        assert client.stats.sent == 0
        server.start()
        assert client.flush(30)
        assert client.stats.sent == 2
    finally:
        client.close()
        assert server.stop() == 0


def test_logging_handler_turns_records_into_ticks(backend: Backend, item: str) -> None:
    client = Client(backend.server.url, flush_interval_s=0.1)
    logger = logging.getLogger(f"app.{item}")
    logger.propagate = False
    logger.addHandler(TickHandler(client, item))
    logger.setLevel(logging.INFO)
    logger.info("user %s signed up", "ada", extra={"metronome": {"plan": "pro", "x": [1]}})
    logger.error("payment failed")
    assert client.flush(30)
    client.close()
    assert client.stats.sent == 2
    docs = {doc["event"]["action"]: doc for doc in backend.find(item)}
    info, error = docs["log"], docs["error"]
    assert info["params"] == {
        "level": "INFO",
        "logger": f"app.{item}",
        "message": "user ada signed up",
        "plan": "pro",
    }
    # an error tick's message is the error's (grouped in the error-groups report)
    assert error["error"]["message"] == "payment failed"
    assert error["params"]["level"] == "ERROR"
