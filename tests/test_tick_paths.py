"""``POST /tick`` and ``POST /tick/`` answer alike, byte for byte.

``/tick`` is answered by the fast path in front of Falcon (:mod:`metronome.api.fastpath`),
``/tick/`` by Falcon's route; both run :meth:`metronome.api.ticks.Tick.accept`. The same
table of good and bad requests goes through both paths of one real server, and the
answers are compared: status, headers (all but ``Date``) and body. A new event's id is
different in each answer, so for a ``202`` the body is compared by its shape instead.
Generated requests (hypothesis) then go through both paths of the ASGI app itself, called
in this process as uvicorn calls it.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.app import create_app
from metronome.config import Settings
from tests.support.asgi import post_scope
from tests.support.fuzz import fuzz
from tests.support.metronome_server import MetronomeServer

PATHS = ("/tick", "/tick/")
ORIGIN = "https://a.example"
EVENT_ID = re.compile(r"[0-9a-f]{32}")
MAX_BODY_BYTES = 1024
_addresses = count(1)


@dataclass(frozen=True)
class Case:
    """One request: sent once to each path, from its own client address."""

    name: str
    status: int
    error: str | None = None
    method: str = "POST"
    body: Any = b'{"id": "paths"}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    params: dict[str, str | list[str]] = field(default_factory=dict)
    times: int = 1  # sent this many times from the same address; the last answer counts


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _answer(status: int, headers: list[tuple[str, str]], body: bytes) -> Answer:
    kept = sorted((name.lower(), value) for name, value in headers if name.lower() != "date")
    return Answer(status, kept, body)


def _send(server: MetronomeServer, case: Case, path: str) -> Answer:
    headers = {**case.headers, "X-Forwarded-For": f"198.51.100.{next(_addresses) % 250 + 1}"}
    content = case.body() if callable(case.body) else case.body
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(case.times):
            resp = client.request(
                case.method, path, content=content, headers=headers, params=case.params
            )
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers.raw]
    return _answer(resp.status_code, raw, resp.content)


def _compare(case: Case, fast: Answer, falcon: Answer) -> None:
    """The two answers are the same, and the one ``case`` expects."""
    assert fast.status == falcon.status == case.status, (case.name, fast, falcon)
    assert fast.headers == falcon.headers, case.name
    if fast.status == 202:
        ids = [json.loads(a.body) for a in (fast, falcon)]
        assert [list(i) for i in ids] == [["id"], ["id"]], (case.name, ids)
        assert all(EVENT_ID.fullmatch(i["id"]) for i in ids), (case.name, ids)
        assert ids[0]["id"] != ids[1]["id"]
    else:
        assert fast.body == falcon.body, (case.name, fast.body, falcon.body)
    if case.error is not None:
        assert json.loads(fast.body)["error"] == case.error, (case.name, fast.body)


def _chunked_large_body() -> Iterator[bytes]:
    """A body sent without Content-Length, over the limit only once it has arrived."""
    yield b'{"id": "paths", "big": "'
    yield b"x" * (MAX_BODY_BYTES + 100)
    yield b'"}'


def _run(server: MetronomeServer, case: Case) -> None:
    fast, falcon = (_send(server, case, path) for path in PATHS)
    _compare(case, fast, falcon)


def _stopped(server: MetronomeServer) -> None:
    code = server.stop()
    assert code == 0, f"metronome serve did not exit cleanly:\n{server.log_tail()}"
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(80)


def _server(tmp_path: Path, env: dict[str, str]) -> MetronomeServer:
    return MetronomeServer(
        {
            "METRONOME_TRUSTED_PROXIES": "127.0.0.0/8",
            "METRONOME_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "METRONOME_BODY_TIMEOUT_S": "1",
            "METRONOME_SITES_CACHE_S": "1",
            **env,
        },
        data_dir=tmp_path / "data",
        workers=1,
        args=("--no-shipper",),
    )


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    """A server with no sites: anyone may send ticks, as on one machine by default."""
    server = _server(tmp_path_factory.mktemp("open"), {})
    server.start()
    try:
        yield server
    finally:
        _stopped(server)


@dataclass(frozen=True)
class Sites:
    server: MetronomeServer
    site: str
    key: str
    other_key: str


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    """A server with a site taking ticks from ``ORIGIN``, another site, and a key for each;
    one tick a second per client address (bursts of one)."""
    server = _server(
        tmp_path_factory.mktemp("sites"),
        {"METRONOME_RATE_LIMIT_PER_IP": "1", "METRONOME_RATE_LIMIT_PER_IP_BURST": "1"},
    )
    server.start()
    try:

        def cli(*args: str) -> Any:
            result = server.run_cli(*args, "--json", timeout_s=60)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)

        site = cli("sites", "create", "--name", "A", "--origin", ORIGIN)["id"]
        other = cli("sites", "create", "--name", "B")["id"]
        key = cli("keys", "create", "--site", site, "--scope", "ingest")["secret"]
        other_key = cli("keys", "create", "--site", other, "--scope", "ingest")["secret"]
        deadline = time.monotonic() + 10  # the worker's cache sees the sites
        while httpx.post(server.url + "/tick", json={"id": "x"}).status_code != 401:
            assert time.monotonic() < deadline, "sites not enforced"
            time.sleep(0.2)
        yield Sites(server, site, key, other_key)
    finally:
        _stopped(server)


JSON = {"Content-Type": "application/json"}
OPEN_CASES = [
    Case("good tick", 202),
    Case(
        "good tick with every field",
        202,
        body=json.dumps(
            {
                "id": "paths",
                "event": "download",
                "format": "CSV",
                "url": "https://a.example/x?q=1",
                "referrer": "https://www.b.example/list/",
                "ts": "2026-03-01T12:00:00Z",
                "n": 3,
            }
        ).encode(),
    ),
    Case(
        "good tick with a browser's headers",
        202,
        headers={
            **JSON,
            "Origin": ORIGIN,
            "Referer": ORIGIN + "/page",
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        },
    ),
    Case("text/plain beacon", 202, headers={"Content-Type": "text/plain;charset=UTF-8"}),
    Case(
        "JSON with parameters in its type",
        202,
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    ),
    Case("bad JSON", 400, "invalid_json", body=b'{"id": '),
    Case(
        "bad JSON from a page", 400, "invalid_json", body=b"{", headers={**JSON, "Origin": ORIGIN}
    ),
    Case("empty body", 400, "invalid_json", body=b""),
    Case("not an object", 400, "invalid_field", body=b'["paths"]'),
    Case("missing id", 400, "invalid_field", body=b'{"event": "view"}'),
    Case("id of the wrong type", 400, "invalid_field", body=b'{"id": 7}'),
    Case("time far ahead", 400, "invalid_field", body=b'{"id": "p", "ts": "2999-01-01"}'),
    Case("a parameter that is an object", 400, "invalid_field", body=b'{"id": "p", "o": {}}'),
    Case(
        "wrong content type",
        415,
        "unsupported_media_type",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Case("no content type", 415, "unsupported_media_type", headers={}),
    Case(
        "too large, by Content-Length",
        413,
        "payload_too_large",
        body=json.dumps({"id": "paths", "big": "x" * MAX_BODY_BYTES}).encode(),
    ),
    Case("too large, chunked", 413, "payload_too_large", body=_chunked_large_body),
    Case("unknown site", 400, "unknown_site", params={"site": "nope"}),
    Case("site given twice", 400, "invalid_parameter", params={"site": ["a", "b"]}),
    Case("the default site", 202, params={"site": "default"}),
    Case(
        "preflight",
        204,
        method="OPTIONS",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        body=b"",
    ),
    Case("OPTIONS without Origin", 200, method="OPTIONS", headers={}, body=b""),
    Case("GET", 405, "method_not_allowed", method="GET", headers={}, body=b""),
]


@pytest.mark.parametrize("case", OPEN_CASES, ids=[c.name for c in OPEN_CASES])
def test_both_tick_paths_answer_alike_without_sites(
    open_server: MetronomeServer, case: Case
) -> None:
    _run(open_server, case)


def _site_cases(world: Sites) -> list[Case]:
    page = {**JSON, "Origin": ORIGIN}
    site = {"site": world.site}
    return [
        Case("from an allowed page", 202, headers=page, params=site),
        Case(
            "beacon from an allowed page",
            202,
            headers={"Content-Type": "text/plain", "Origin": ORIGIN},
            params=site,
        ),
        Case(
            "from a page elsewhere",
            403,
            "origin_forbidden",
            headers={**JSON, "Origin": "https://evil.example"},
            params=site,
        ),
        Case("unknown site", 400, "unknown_site", headers=page, params={"site": "nope"}),
        Case("no site named", 401, "key_required", headers=page),
        Case("no key and no Origin", 401, "key_required", params=site),
        Case("with the site's key", 202, headers={**JSON, "Authorization": f"Bearer {world.key}"}),
        Case(
            "a key for another site",
            403,
            "site_forbidden",
            headers={**JSON, "Authorization": f"Bearer {world.other_key}"},
            params=site,
        ),
        Case(
            "an unknown key",
            401,
            "invalid_key",
            headers={**JSON, "Authorization": "Bearer mk_nope"},
        ),
        Case(
            "not a bearer key", 401, "invalid_key", headers={**JSON, "Authorization": "Basic eDp5"}
        ),
        Case("over the rate limit", 429, "rate_limited", headers=page, params=site, times=2),
        Case(
            "preflight from an allowed page",
            204,
            method="OPTIONS",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
            params=site,
            body=b"",
        ),
        Case(
            "preflight from a page elsewhere",
            403,
            "origin_forbidden",
            method="OPTIONS",
            headers={"Origin": "https://evil.example"},
            body=b"",
        ),
    ]


def test_both_tick_paths_answer_alike_with_sites(sites: Sites) -> None:
    for case in _site_cases(sites):
        _run(sites.server, case)


def _raw_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 answer read off ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines]
    length = int(dict((k.lower(), v) for k, v in headers)["content-length"])
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, body
        body += chunk
    return _answer(int(status_line.split()[1]), headers, body)  # type: ignore[arg-type]


def test_a_body_that_comes_too_slowly_gets_the_same_408_on_both_paths(
    open_server: MetronomeServer,
) -> None:
    answers = []
    for path in PATHS:
        with socket.create_connection(("127.0.0.1", open_server.port), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                'Content-Length: 40\r\n\r\n{"id"'.encode()
            )
            started = time.monotonic()
            answers.append(_raw_answer(sock))
            assert time.monotonic() - started < 5
    _compare(Case("slow body", 408, "request_timeout"), *answers)


# --------------------------------------------------------------------------- generated


class _App:
    """``create_app`` on the embedded store, started through its lifespan, on its own
    event loop; :meth:`request` calls it as uvicorn would."""

    def __init__(self, data_dir: Path) -> None:
        env = {
            "METRONOME_DATA_DIR": str(data_dir),
            "METRONOME_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "METRONOME_LOG_LEVEL": "warning",
        }
        self.app = create_app(Settings.from_env(env))
        self.loop = asyncio.new_event_loop()
        self._events: asyncio.Queue[dict[str, Any]] | None = None
        self._answers: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def _lifespan(self, event: str) -> None:
        if self._task is None:
            self._events, self._answers = asyncio.Queue(), asyncio.Queue()
            scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
            self._task = asyncio.create_task(self.app(scope, self._events.get, self._answers.put))
        assert self._events is not None and self._answers is not None
        await self._events.put({"type": f"lifespan.{event}"})
        answer = await self._answers.get()
        assert answer["type"] == f"lifespan.{event}.complete", answer
        if event == "shutdown":
            await self._task

    def start(self) -> None:
        self.loop.run_until_complete(self._lifespan("startup"))

    def stop(self) -> None:
        try:
            self.loop.run_until_complete(self._lifespan("shutdown"))
        finally:
            self.loop.close()

    def request(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
    ) -> Answer:
        return self.loop.run_until_complete(self._request(path, query, headers, chunks))

    async def _request(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
    ) -> Answer:
        messages = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks or [b""])
        ]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = post_scope(
            path,
            [(b"host", b"127.0.0.1"), *headers],
            query=query,
            client=("203.0.113.9", 40000),
        )
        await self.app(scope, receive, send)
        start = sent[0]
        assert start["type"] == "http.response.start", sent
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
        return _answer(start["status"], raw, b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_App]:
    started = _App(tmp_path_factory.mktemp("app"))
    started.start()
    try:
        yield started
    finally:
        started.stop()


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT)
_TICKS = st.dictionaries(
    st.sampled_from(["id", "event", "format", "url", "referrer", "ts", "site", "n", "o"]) | _TEXT,
    _VALUES | st.lists(_VALUES, max_size=2) | st.dictionaries(_TEXT, _VALUES, max_size=2),
    max_size=6,
)
_BODIES = st.one_of(
    _TICKS.map(lambda t: json.dumps(t).encode()),
    _TICKS.map(lambda t: json.dumps({"id": "gen", **t}).encode()),
    st.binary(max_size=MAX_BODY_BYTES + 200),
    st.integers(MAX_BODY_BYTES - 30, MAX_BODY_BYTES + 30).map(
        lambda n: b'{"id": "gen", "p": "' + b"x" * (n - 21) + b'"}'
    ),
)
_CONTENT_TYPES = st.sampled_from(
    [
        None,
        b"application/json",
        b"text/plain",
        b"text/plain;charset=UTF-8",
        b" Application/JSON ; charset=utf-8",
        b"application/x-www-form-urlencoded",
        b"application/x-ndjson",
        b"",
    ]
)
_QUERIES = st.sampled_from([b"", b"site=default", b"site=nope", b"site=a&site=b", b"site=", b"x"])
_OPTIONAL = st.none() | st.sampled_from([b"https://a.example", b"null", b"\xff"])


@fuzz(150)
@given(
    body=_BODIES,
    cuts=st.lists(st.integers(0, MAX_BODY_BYTES + 200), max_size=3),
    declare_length=st.booleans(),
    content_type=_CONTENT_TYPES,
    query=_QUERIES,
    origin=_OPTIONAL,
    user_agent=_OPTIONAL | st.sampled_from([b"Mozilla/5.0 (compatible; Googlebot/2.1)"]),
)
def test_both_tick_paths_answer_generated_requests_alike(
    app: _App,
    body: bytes,
    cuts: list[int],
    declare_length: bool,
    content_type: bytes | None,
    query: bytes,
    origin: bytes | None,
    user_agent: bytes | None,
) -> None:
    headers = [
        (name, value)
        for name, value in (
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode() if declare_length else None),
            (b"origin", origin),
            (b"user-agent", user_agent),
        )
        if value is not None
    ]
    bounds = sorted({0, *(c for c in cuts if c < len(body)), len(body)})
    chunks = [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    fast, falcon = (app.request(path, query, headers, chunks) for path in PATHS)
    assert fast.status == falcon.status, (fast, falcon)
    assert fast.headers == falcon.headers, (fast, falcon)
    if fast.status == 202:
        ids = [json.loads(a.body) for a in (fast, falcon)]
        assert all(list(i) == ["id"] and EVENT_ID.fullmatch(i["id"]) for i in ids), ids
    else:
        assert fast.body == falcon.body
