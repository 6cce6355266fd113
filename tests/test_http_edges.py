"""The edges of HTTP: every answer is JSON in the one error shape, uvicorn's own included,
``HEAD`` works wherever ``GET`` does, and a WebSocket handshake to a route without one is
refused cleanly. All against a real ``metronome serve``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.metronome_server import MetronomeServer

UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    srv = MetronomeServer({}, data_dir=tmp_path_factory.mktemp("edges"))
    srv.start()
    yield srv
    srv.stop()
    log = srv.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log and "[ERROR]" not in log, log


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body: dict[str, Any] = resp.json()
    assert body["error"] == code and body["message"], body
    return body


def _raw(server: MetronomeServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is; the status, headers and body of the answer (read to EOF:
    these answers close the connection)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("path", ["/live", "/healthz", "/tick", "/tock/x", "/nowhere/at/all"])
def test_a_websocket_handshake_to_a_route_without_one_is_refused_with_json(
    server: MetronomeServer, path: str
) -> None:
    resp = httpx.get(f"{server.url}{path}", headers=UPGRADE, timeout=10)
    assert resp.status_code in (404, 405), resp.text
    _error(resp, resp.status_code, "not_found" if resp.status_code == 404 else "method_not_allowed")
    assert "WebSocket" in resp.json()["message"]


def _get_routes(server: MetronomeServer) -> list[str]:
    """Every GET route of the OpenAPI document, with its path parameters filled in."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    fill = {"{item_id}": "x", "{name}": "top-items"}
    routes = []
    for path, operations in document["paths"].items():
        if "get" in operations:
            for placeholder, value in fill.items():
                path = path.replace(placeholder, value)
            routes.append(path)
    return routes


def test_head_is_answered_wherever_get_is(server: MetronomeServer) -> None:
    routes = _get_routes(server)
    assert {"/healthz", "/readyz", "/metrics", "/openapi.json", "/tick.gif"} <= set(routes)
    params = {"/tick.gif": {"id": "head-check"}, "/tock": {"id": "x"}}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for path in routes:
            get = client.get(path, params=params.get(path))
            head = client.head(path, params=params.get(path))
            assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
            assert head.headers["content-type"] == get.headers["content-type"], path
            assert head.content == b"", path
            if path not in ("/metrics", "/tick.gif"):  # their bodies change between calls
                assert head.headers["content-length"] == get.headers["content-length"], path


def test_head_on_a_route_without_get_is_405_json(server: MetronomeServer) -> None:
    resp = httpx.head(f"{server.url}/query", timeout=10)
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/json"
