"""Every route that reads a body gives it ``METRONOME_BODY_TIMEOUT_S`` to arrive: a client
trickling bytes gets ``408 request_timeout`` on time, and holds nothing else up meanwhile."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.metronome_server import MetronomeServer

TIMEOUT_S = 1
TRICKLE_S = 8
BODY_ROUTES = ("/query", "/tick", "/ticks")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    running = MetronomeServer(
        {"METRONOME_BODY_TIMEOUT_S": str(TIMEOUT_S)},
        data_dir=tmp_path_factory.mktemp("body-timeouts"),
        workers=1,
    )
    running.start()
    try:
        yield running
    finally:
        code = running.stop()
    assert code == 0, running.log_tail()
    assert "Traceback" not in running.log_path.read_text(), running.log_tail(80)


def _answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, body
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_trickled_slower_than_the_timeout_gets_408_while_others_are_served(
    server: MetronomeServer, path: str
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 4000\r\n\r\n{".encode()
        )
        started = time.monotonic()
        # while that body hangs, the same (single) worker answers other requests at once
        with httpx.Client(base_url=server.url, timeout=5) as client:
            for _ in range(3):
                asked = time.monotonic()
                assert client.get("/healthz").status_code == 200
                assert time.monotonic() - asked < 0.5
                resp = client.post("/query", json={"metrics": ["ticks"]})
                assert resp.status_code in (200, 400), resp.text
        # a byte every 0.2 s is not enough to keep the request alive: keep trickling for
        # up to TRICKLE_S, stopping as soon as the answer is there to read
        while time.monotonic() - started < TRICKLE_S:
            answered, _, _ = select.select([sock], [], [], 0.2)
            if answered:
                break
            try:
                sock.sendall(b" ")
            except OSError:
                break
        status, body = _answer(sock)
        took = time.monotonic() - started
    assert status == 408, body
    assert body["error"] == "request_timeout"
    # on time, with room for a busy machine, and long before the trickle would have ended
    assert TIMEOUT_S - 0.1 < took < TIMEOUT_S + 2.5 < TRICKLE_S, took
