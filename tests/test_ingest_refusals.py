"""What the ingest routes refuse, and that every refusal is counted: the pixel's origin
check by ``Referer``, ``HEAD`` on the pixel, and ``metronome_events_rejected_total`` for
whole requests refused before their ticks are looked at."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from metronome.api.guard import referer_origin
from tests.support.site_world import ORIGIN, SiteWorld, rejected_counts, site_world

TS = "2026-03-01T12:00:00Z"


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SiteWorld]:
    env = {
        "METRONOME_MAX_BATCH_TICKS": "5",
        "METRONOME_MAX_BATCH_BYTES": "2000",
        "METRONOME_MAX_BODY_BYTES": "1024",
    }
    with site_world(request, tmp_path_factory, env=env) as started:
        yield started


def _error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert resp.json()["error"] == code, resp.text


def test_referer_origin_is_scheme_host_and_port_of_the_page() -> None:
    assert referer_origin("https://Shop.example/a/b?c=d#e") == "https://shop.example"
    assert referer_origin("http://shop.example:8080/") == "http://shop.example:8080"
    assert referer_origin("https://[::1]:8443/x") == "https://[::1]:8443"
    assert referer_origin("android-app://com.example.mail/") == "android-app://com.example.mail/"
    assert referer_origin("http://[bad") == "http://[bad"


def test_pixel_checks_the_referer_origin_when_a_page_sends_one(world: SiteWorld, item: str) -> None:
    client = world.client
    params = {"id": item, "site": world.site, "ts": TS}
    ok = client.get("/tick.gif", params=params, headers={"Referer": f"{ORIGIN}/newsletter"})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/gif", ok.text
    assert "access-control-allow-origin" not in ok.headers  # a Referer is not CORS

    _error(
        client.get("/tick.gif", params=params, headers={"Referer": "https://evil.example/x"}),
        403,
        "origin_forbidden",
    )
    _error(
        client.get("/tick.gif", params=params, headers={"Referer": "android-app://mail/"}),
        403,
        "origin_forbidden",
    )
    # an Origin, when one is sent, is what is checked
    _error(
        client.get(
            "/tick.gif",
            params=params,
            headers={"Origin": "https://evil.example", "Referer": f"{ORIGIN}/"},
        ),
        403,
        "origin_forbidden",
    )
    # no Referer (an e-mail client, Referrer-Policy: no-referrer): cannot be verified, taken
    blind = client.get("/tick.gif", params=params)
    assert blind.status_code == 200 and blind.content[:6] == b"GIF89a", blind.text
    # a key decides the site whatever the page
    keyed = client.get(
        "/tick.gif",
        params={"id": item, "ts": TS},
        headers={"Referer": "https://evil.example/", "Authorization": f"Bearer {world.ingest}"},
    )
    assert keyed.status_code == 200, keyed.text

    stored = world.backend.find(item)
    assert len(stored) == 3, stored
    assert {doc["url"]["original"] for doc in stored if "url" in doc} == {
        f"{ORIGIN}/newsletter",
        "https://evil.example/",
    }


def test_head_on_the_pixel_answers_the_image_headers_and_records_nothing(
    world: SiteWorld, item: str
) -> None:
    params = {"id": item, "site": world.site, "ts": TS}
    before = _pixels_accepted(world.client)
    for _ in range(3):
        resp = world.client.head("/tick.gif", params=params, headers={"Referer": f"{ORIGIN}/"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "image/gif"
        assert resp.headers["content-length"] == "43"
        assert "no-store" in resp.headers["cache-control"]
        assert resp.content == b""
    got = world.client.get("/tick.gif", params=params, headers={"Referer": f"{ORIGIN}/"})
    assert got.status_code == 200 and len(got.content) == 43
    assert len(world.backend.find(item)) == 1  # the GET only
    assert _pixels_accepted(world.client) == before + 1


def _pixels_accepted(client: httpx.Client) -> float:
    """``metronome_events_accepted_total{route="/tick.gif"}`` from ``/metrics``."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('metronome_events_accepted_total{route="/tick.gif"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _post(world: SiteWorld, path: str, body: bytes, **headers: str) -> httpx.Response:
    return world.client.post(
        path,
        content=body,
        params={"site": world.site},
        headers={"Content-Type": "application/json", "Origin": ORIGIN, **headers},
    )


def test_every_refused_event_is_counted_once_by_reason(world: SiteWorld) -> None:
    """Whole requests refused before their ticks are looked at count their ticks (one
    for a request refused before its body is read) under the error's code."""
    ndjson = b"\n".join(json.dumps({"id": f"t{n}"}).encode() for n in range(7))
    cases: list[tuple[str, bytes, dict[str, str], int, str, int]] = [
        # path, body, headers, status, reason, events counted
        ("/ticks", ndjson, {}, 400, "limit_exceeded", 7),  # over METRONOME_MAX_BATCH_TICKS
        ("/ticks", b"[" + b'{"id":"x"},' * 300 + b"{}]", {}, 413, "payload_too_large", 1),
        (
            "/ticks",
            b'[{"id":"a"}]',
            {"Content-Type": "image/png"},
            415,
            "unsupported_media_type",
            1,
        ),
        (
            "/ticks",
            b'[{"id":"a"},{"id":"b"}]',
            {"Origin": "https://evil.example"},
            403,
            "origin_forbidden",
            1,  # refused before the body is read (cost before work)
        ),
        (
            "/ticks",
            b'[{"id":"a"},{"id":"b"},{"id":"c"}]',
            {"Authorization": "Bearer mk_nope"},
            401,
            "invalid_key",
            1,  # refused before the body is read (cost before work)
        ),
        ("/ticks", b"[{", {}, 400, "invalid_json", 1),
        ("/ticks", b"[]", {}, 400, "bad_request", 1),
        ("/tick", b'{"id":"a"}', {"Content-Type": "image/png"}, 415, "unsupported_media_type", 1),
        ("/tick", b'{"id":"a"}', {"Origin": "https://evil.example"}, 403, "origin_forbidden", 1),
        ("/tick", b'{"id":"' + b"x" * 2000 + b'"}', {}, 413, "payload_too_large", 1),
        ("/tick/", b'{"id":"a"}', {"Content-Type": "text/csv"}, 415, "unsupported_media_type", 1),
        (
            "/ticks",
            b'[{"id":"a"}]',
            {"Authorization": f"Bearer {world.query}"},
            403,
            "scope_forbidden",
            1,
        ),
    ]
    for path, body, headers, status, reason, events in cases:
        before = rejected_counts(world.client)
        _error(_post(world, path, body, **headers), status, reason)
        after = rejected_counts(world.client)
        assert after - before == Counter({reason: events}), (path, headers, after - before)

    # a pixel refused for its page, and a batch with one bad tick: counted per event
    before = rejected_counts(world.client)
    _error(
        world.client.get(
            "/tick.gif",
            params={"id": "p", "site": world.site},
            headers={"Referer": "https://evil.example/"},
        ),
        403,
        "origin_forbidden",
    )
    mixed = _post(world, "/ticks", b'[{"id":"ok"},{"event":"no id"}]')
    assert mixed.status_code == 202 and mixed.json()["accepted"] == 1, mixed.text
    assert rejected_counts(world.client) - before == Counter(
        {"origin_forbidden": 1, "invalid_field": 1}
    )
