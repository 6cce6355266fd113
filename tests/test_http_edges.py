"""The edges of HTTP: every answer is JSON in the one error shape, uvicorn's own included,
``HEAD`` works wherever ``GET`` does, and a WebSocket handshake to a route without one is
refused cleanly. All against a real ``metronome serve``.
"""

from __future__ import annotations

import json
import socket
import string
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.fuzz import fuzz
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
    return _raw_answer(data)


def _raw_answer(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("path", ["/healthz", "/tick", "/tock/x", "/nowhere/at/all"])
def test_a_websocket_handshake_to_a_route_without_one_is_refused_with_json(
    server: MetronomeServer, path: str
) -> None:
    resp = httpx.get(f"{server.url}{path}", headers=UPGRADE, timeout=10)
    assert resp.status_code in (404, 405), resp.text
    _error(resp, resp.status_code, "not_found" if resp.status_code == 404 else "method_not_allowed")
    assert "WebSocket" in resp.json()["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Connection": "Upgrade", "Upgrade": "websocket"},  # no key, no version
        {**UPGRADE, "Sec-WebSocket-Version": "99"},
        {**UPGRADE, "Sec-WebSocket-Key": "short"},
    ],
    ids=["no-key", "bad-version", "bad-key"],
)
def test_a_websocket_handshake_uvicorn_cannot_take_is_refused_with_json(
    server: MetronomeServer, headers: dict[str, str]
) -> None:
    resp = httpx.get(f"{server.url}/healthz", headers=headers, timeout=10)
    _error(resp, 400, "bad_request")


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
            varies = path in ("/metrics", "/tick.gif")  # their bodies change between calls

            def alike(get: httpx.Response, head: httpx.Response, varies: bool = varies) -> bool:
                return (
                    head.status_code == get.status_code
                    and head.headers["content-type"] == get.headers["content-type"]
                    and head.content == b""
                    and (varies or head.headers["content-length"] == get.headers["content-length"])
                )

            for _ in range(2):  # once more if a transient answer (a busy store) came between
                get = client.get(path, params=params.get(path))
                head = client.head(path, params=params.get(path))
                if alike(get, head):
                    break
            assert alike(get, head), (path, head.status_code, dict(head.headers), get.text[:300])


def test_head_on_a_route_without_get_is_405_json(server: MetronomeServer) -> None:
    resp = httpx.head(f"{server.url}/query", timeout=10)
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/json"


@pytest.mark.parametrize("size", [70_000, 65_536, 1_000_000])
def test_a_url_over_the_limit_gets_414_json(server: MetronomeServer, size: int) -> None:
    query = "a=" + "x" * (size - len("/healthz?a="))
    request = f"GET /healthz?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    started = time.monotonic()
    status, headers, body = _raw(server, request)
    assert time.monotonic() - started < 5
    assert status == 414
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"] == "uri_too_long" and answer["details"] == {"limit": 65_535}


def test_a_url_just_under_the_limit_is_answered_by_the_app(server: MetronomeServer) -> None:
    path = "/healthz?a=" + "x" * (65_535 - len("/healthz?a="))
    status, _, body = _raw(
        server, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    assert status == 200 and json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [
        "X-Big: " + "a" * 200_000 + "\r\n",
        "".join(f"X-{i}: {'a' * 100}\r\n" for i in range(2_000)),
        "X-Endless: " + "a" * 5_000_000,  # never ends: refused while it arrives
    ],
    ids=["one-huge-header", "many-headers", "endless-header"],
)
def test_headers_over_the_limit_get_431_json(server: MetronomeServer, headers: str) -> None:
    started = time.monotonic()
    status, answer_headers, body = _raw(
        server, f"GET /healthz HTTP/1.1\r\nHost: t\r\n{headers}".encode()
    )
    assert time.monotonic() - started < 5
    assert status == 431 and answer_headers["content-type"] == "application/json"
    assert json.loads(body)["details"] == {"limit": 98_304}


def test_headers_under_the_limit_and_a_big_body_in_the_same_packets_are_taken(
    server: MetronomeServer,
) -> None:
    headers = "".join(f"X-{i}: {'a' * 100}\r\n" for i in range(600))  # about 64 KB
    status, _, body = _raw(
        server, f"GET /healthz HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode()
    )
    assert status == 200, body
    ticks = json.dumps([{"id": f"big-{i}", "pad": "x" * 200} for i in range(900)]).encode()
    request = (
        b"POST /ticks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(ticks)
    ) + ticks
    status, _, body = _raw(server, request)
    assert status == 202, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"G@T /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["header-without-colon", "bad-method", "bad-version", "negative-length", "tls"],
)
def test_a_request_uvicorn_cannot_parse_gets_400_json(
    server: MetronomeServer, request_bytes: bytes
) -> None:
    status, headers, body = _raw(server, request_bytes)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "bad_request"


def test_past_the_connection_limit_the_answer_is_503_json(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    srv = MetronomeServer(
        {"METRONOME_MAX_CONNECTIONS": "2"}, data_dir=tmp_path_factory.mktemp("busy"), workers=1
    )
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10) as held:
            assert held.get("/healthz").status_code == 200  # one kept-alive connection
            resp = httpx.get(f"{srv.url}/healthz", timeout=10)
            body = _error(resp, 503, "server_busy")
            assert resp.headers["retry-after"] == "1"
            assert "METRONOME_MAX_CONNECTIONS" in body["message"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.url}/healthz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "still busy once the held connection closed"
            time.sleep(0.1)
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_path.read_text()


# Requests as bytes, as a client that is not a browser sends them: any method token, odd
# targets (long, non-ASCII, absolute, '*'), odd versions, and header lines that upgrade,
# contradict or break the framing. Each answer must come fast, and be a 2xx/3xx or an
# error in the one JSON shape; never a 500, plain text, or silence.
ROUTES = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/tick",
    "/ticks",
    "/tick.gif",
    "/tock/x",
    "/tock",
    "/query",
    "/reports",
    "/reports/top-items",
    "/metronome.js",
]
METHODS = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get"]
) | st.text(alphabet=string.ascii_letters + "-_@!", min_size=1, max_size=10)
TARGETS = (
    st.sampled_from(ROUTES)
    | st.sampled_from(["*", "http://t/healthz", "//", "/%", "/%ff", "/a/../healthz", ""])
    | st.text(alphabet=string.printable.strip() + "éü\x7f", max_size=40).map(lambda t: "/" + t)
    | st.integers(65_000, 70_000).map(lambda n: "/healthz?a=" + "x" * n)
)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "HTTP/0.9", ""])
WEBSOCKET = "".join(f"{k}: {v}\r\n" for k, v in UPGRADE.items())
EXTRAS = st.sampled_from(
    [
        ("", b""),
        (WEBSOCKET, b""),
        ("Connection: Upgrade\r\nUpgrade: websocket\r\n", b""),  # no key, no version
        (WEBSOCKET.replace("13", "99"), b""),
        ("Connection: Upgrade\r\nUpgrade: h2c\r\n", b""),
        ("Transfer-Encoding: chunked\r\n", b"zz\r\n"),
        ("Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        ("Content-Length: -1\r\n", b""),
        ("Content-Length: abc\r\n", b""),
        ("Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"),
        ("Content-Type: application/json\r\nContent-Length: 2\r\n", b"{}"),
        ("Expect: 100-continue\r\nContent-Length: 0\r\n", b""),
        ("no colon here\r\n", b""),
        ("X: a\x00b\r\n", b""),
        (" folded: line\r\n", b""),
        ("Authorization: Bearer nope\r\n", b""),
        ("Origin: https://elsewhere.example\r\n", b""),
        ("X-Big: " + "a" * 100_000 + "\r\n", b""),
    ]
)


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@given(method=METHODS, target=TARGETS, version=VERSIONS, extra=EXTRAS)
@fuzz(150)
def test_any_request_gets_a_quick_answer_in_json_never_a_500(
    server: MetronomeServer, method: str, target: str, version: str, extra: tuple[str, bytes]
) -> None:
    headers, body = extra
    line = f"{method} {target} {version}".rstrip()
    request = f"{line}\r\nHost: t\r\n{headers}Connection: close\r\n\r\n".encode() + body
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    assert time.monotonic() - started < 5, request[:200]
    status, answer_headers, answer = _parse(data)
    assert status < 500, (request[:200], data[:300])
    if status >= 400:
        assert answer_headers.get("content-type") == "application/json", (request[:200], data)
        if method != "HEAD":
            error = json.loads(answer)
            assert isinstance(error["error"], str) and error["message"], error


def test_slow_headers_get_408_json_and_silent_connections_are_closed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A client dribbling its headers (a byte every 0.2 s, as slowloris does), or
    connecting and sending nothing, does not hold a connection past the timeout."""
    srv = MetronomeServer(
        {"METRONOME_BODY_TIMEOUT_S": "1"}, data_dir=tmp_path_factory.mktemp("slow"), workers=1
    )
    srv.start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as conn:
            started = time.monotonic()
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            data = b""
            conn.settimeout(0.2)
            while time.monotonic() - started < 5:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    conn.sendall(b"a")
                    continue
                if not chunk:
                    break
                data += chunk
            assert 0.9 < time.monotonic() - started < 3
        status, headers, body = _raw_answer(data)
        assert status == 408 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"] == "request_timeout"

        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as silent:
            started = time.monotonic()
            assert silent.recv(100) == b""  # closed, with nothing to answer
            assert 0.9 < time.monotonic() - started < 3

        assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 200
    finally:
        srv.stop()
    log = srv.log_path.read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log
