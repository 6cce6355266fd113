"""The tick contract through real HTTP: what is stored, and every 4xx, on every backend."""

from __future__ import annotations

import pytest

from tests.support.backends import Backend

SECURED_CONTRACT = True  # also through TLS and auth (tests/conftest.py)
OPENSEARCH_CONTRACT = True  # and on OpenSearch

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)


def test_tick_is_stored_as_a_logstash_document_with_enrichment(backend: Backend, item: str) -> None:
    event_id = backend.tick(
        id=item,
        event="download",
        format=".SHP",
        url="https://maps.example.org/d/1?x=2",
        referer="https://www.news.example.com/story/?utm=1",
        ts="2026-02-03T04:05:06.789+01:00",
        plan="pro",
        load_ms=412.5,
        count=7,
        beta=True,
        note=None,
        city="Zürich",
    )
    doc = backend.fetch(event_id)
    assert doc["@timestamp"] == "2026-02-03T03:05:06.789Z"
    assert doc["@version"] == "1"
    assert doc["event"]["id"] == event_id  # type: ignore[index]
    assert doc["event"]["action"] == "download"  # type: ignore[index]
    assert doc["item"] == {"id": item, "format": "shp"}
    assert doc["url"] == {
        "original": "https://maps.example.org/d/1?x=2",
        "domain": "maps.example.org",
        "path": "/d/1",
    }
    assert doc["http"] == {"request": {"referrer": "https://www.news.example.com/story/?utm=1"}}
    assert doc["referrer"] == {"domain": "news.example.com", "page": "news.example.com/story"}
    assert doc["params"] == {
        "plan": "pro",
        "load_ms": 412.5,
        "count": 7,
        "beta": True,
        "note": None,
        "city": "Zürich",
    }
    assert doc["bot"] is False


def test_server_adds_client_address_and_parsed_user_agent(backend: Backend, item: str) -> None:
    resp = backend.client.post(
        "/tick",
        json={"id": item},
        headers={"User-Agent": CHROME, "X-Forwarded-For": "198.51.100.7, 203.0.113.9"},
    )
    assert resp.status_code == 202
    doc = backend.fetch(resp.json()["id"])
    # the test servers trust 127.0.0.0/8 as a proxy; 203.0.113.9 is the first untrusted hop
    assert doc["client"] == {"ip": "203.0.113.9"}
    assert doc["user_agent"] == {
        "original": CHROME,
        "name": "Chrome",
        "version": "120.0.0",
        "os": {"name": "Windows", "version": "10"},
    }


def test_repeated_forwarded_for_lines_read_as_one_list(backend: Backend, item: str) -> None:
    """Proxies may each add their own X-Forwarded-For line: they join in order, so the
    last untrusted hop is still the client (not whichever line came last)."""
    resp = backend.client.post(
        "/tick",
        json={"id": item},
        headers=[
            ("X-Forwarded-For", "198.51.100.7, 203.0.113.9"),
            ("X-Forwarded-For", "127.0.0.2"),
        ],
    )
    assert resp.status_code == 202
    assert backend.fetch(resp.json()["id"])["client"] == {"ip": "203.0.113.9"}


def test_client_country_comes_from_the_bundled_offline_database(
    backend: Backend, item: str
) -> None:
    uk = backend.client.post("/tick", json={"id": item}, headers={"X-Forwarded-For": "81.2.69.160"})
    private = backend.client.post(
        "/tick", json={"id": item}, headers={"X-Forwarded-For": "10.1.2.3"}
    )
    assert backend.fetch(uk.json()["id"])["client"] == {
        "ip": "81.2.69.160",
        "geo": {"country_iso_code": "GB"},
    }
    assert backend.fetch(private.json()["id"])["client"] == {"ip": "10.1.2.3"}


def test_batch_accepts_good_ticks_and_names_each_bad_one(backend: Backend, item: str) -> None:
    body = "\n".join(
        [
            f'{{"id": "{item}", "ts": "2026-04-01T10:00:00Z"}}',
            '{"id": 42}',
            "not json at all",
            f'{{"id": "{item}", "ts": "2026-04-01T11:00:00Z", "nested": {{"a": 1}}}}',
            f'{{"id": "{item}", "ts": "2026-04-01T12:00:00Z"}}',
            "",
        ]
    )
    resp = backend.client.post(
        "/ticks", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert resp.status_code == 202
    answer = resp.json()
    assert answer["accepted"] == 2
    assert [(r["index"], r["error"]) for r in answer["rejected"]] == [
        (1, "invalid_field"),
        (2, "invalid_json"),
        (3, "invalid_field"),
    ]
    assert "nested" in answer["rejected"][2]["message"]
    assert answer["ids"][1:4] == [None, None, None] and all(answer["ids"][i] for i in (0, 4))
    report = backend.tock(item, **{"from": "2026-04-01", "to": "2026-04-01"})
    assert report["views"] == {"2026-04-01": 2}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "mentions"),
    [
        (
            "POST",
            "/tick",
            {"content": b"{nope", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
            "not valid JSON",
        ),
        ("POST", "/tick", {"json": ["a"]}, 400, "invalid_field", "JSON object"),
        ("POST", "/tick", {"json": {"event": "view"}}, 400, "invalid_field", "'id'"),
        ("POST", "/tick", {"json": {"id": "x", "tags": ["a"]}}, 400, "invalid_field", "'tags'"),
        ("POST", "/tick", {"json": {"id": "x", "ts": "yesterday"}}, 400, "invalid_field", "'ts'"),
        ("POST", "/tick", {"json": {"id": "x", "ts": 9e15}}, 400, "invalid_field", "'ts'"),
        ("POST", "/tick", {"json": {"id": "x", "a.b": 1}}, 400, "invalid_field", "'a.b'"),
        ("POST", "/tick", {"json": {"id": "x", "k" * 65: 1}}, 400, "limit_exceeded", "limit"),
        ("POST", "/tick", {"json": {"id": "x", "v": "y" * 2049}}, 400, "limit_exceeded", "2048"),
        (
            "POST",
            "/tick",
            {"json": {"id": "x", **{f"p{i}": i for i in range(101)}}},
            400,
            "limit_exceeded",
            "100",
        ),
        (
            "POST",
            "/tick",
            {
                "content": b'{"id": "' + b"x" * 70000 + b'"}',
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "payload_too_large",
            "65536",
        ),
        (
            "POST",
            "/tick",
            {
                "content": b'{"id": "x"}',
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "POST",
            "/ticks",
            {"content": b'[{"id": "x"}', "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
            "not valid JSON",
        ),
        ("POST", "/ticks", {"json": []}, 400, "bad_request", "no ticks"),
        ("POST", "/ticks", {"json": [{"id": "x"}] * 1001}, 400, "limit_exceeded", "1000"),
        ("GET", "/tock/x", {"params": {"tz": "Mars/Olympus"}}, 400, "invalid_parameter", "tz"),
        ("GET", "/tock/x", {"params": {"from": "2026-13-45"}}, 400, "invalid_parameter", "'from'"),
        (
            "GET",
            "/tock/x",
            {"params": {"from": "2026-02-02", "to": "2026-02-01"}},
            400,
            "invalid_parameter",
            "before",
        ),
        (
            "GET",
            "/tock/x",
            {"params": {"interval": "fortnight"}},
            400,
            "invalid_parameter",
            "interval",
        ),
        ("GET", "/tock/x", {"params": {"top": "0"}}, 400, "invalid_parameter", "top"),
        ("GET", "/tock/x", {"params": {"colour": "red"}}, 400, "invalid_parameter", "colour"),
        (
            "GET",
            "/tock/x",
            {"params": {"sources": "ticks,tweets"}},
            400,
            "invalid_parameter",
            "sources",
        ),
        (
            "GET",
            "/tock/x",
            {"params": {"interval": "hour", "from": "1990-01-01"}},
            400,
            "invalid_parameter",
            "interval",
        ),
        ("GET", "/tock", {}, 400, "invalid_parameter", "/tock?id="),
        ("GET", "/nowhere", {}, 404, "not_found", "/nowhere"),
        ("DELETE", "/tick", {}, 405, "method_not_allowed", "POST"),
        ("GET", "/tick", {}, 405, "method_not_allowed", "POST"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_problem(
    backend: Backend,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    code: str,
    mentions: str,
) -> None:
    resp = backend.client.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == code
    assert mentions in body["message"]


def test_health_and_readiness(backend: Backend) -> None:
    assert backend.client.get("/healthz").json() == {"status": "ok"}
    ready = backend.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "store": backend.name}
