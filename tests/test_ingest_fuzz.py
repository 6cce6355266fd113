"""Whatever a client sends to the ingest routes, under whichever key, a running server
answers quickly, with a 2xx or a documented 4xx, and stores exactly what it acknowledged.

Hypothesis generates ``POST /tick``, ``POST /ticks`` (JSON arrays and NDJSON) and
``GET``/``HEAD /tick.gif`` requests: ticks with good, missing and wrongly typed fields,
timestamps in and out of range, free parameters of every JSON type, a ``site`` field,
bodies that are not JSON, other content types, and pixel requests from allowed, foreign,
non-http and missing pages. Each request is sent under every key scope: no key (as a web
page of the site), an ingest key, a query key, an all-sites admin key naming the site,
and an ingest key naming another site. Each answer must come within
:data:`TIME_BOUND_S` and be a 2xx (a GIF from the pixel) or a documented 4xx of the one
JSON error shape; a query key or another site is never acknowledged; the server log has
no traceback or error line; and after draining, the store holds every acknowledged event
and nothing else. Runs are derandomized and bounded (:mod:`tests.support.fuzz`): the
same requests every run.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metronome.errors import MetronomeError, all_error_classes
from tests.support.backends import wait_for_drain
from tests.support.fuzz import fuzz
from tests.support.site_world import ORIGIN, SiteWorld, site_world

TIME_BOUND_S = 3.0
LOG_ERROR = re.compile(r"Traceback|\[ERROR\]|\[error\s*\]|\"level\": ?\"error\"")
# what the ingest routes may refuse with, by status (docs/guides/ticks.md, sites-and-keys.md)
CODES_4XX = {
    cls.code
    for cls in all_error_classes()
    if issubclass(cls, MetronomeError) and 400 <= cls.http_status < 500
}
INGEST_STATUSES = {400, 401, 403, 408, 413, 415, 429}
FUZZ = fuzz(45)
SCOPES = ("none", "ingest", "query", "admin", "other_site")

# --- what to send -----------------------------------------------------------------------

text = st.text(max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=6,
)
timestamps = st.one_of(
    st.sampled_from(
        [
            "2026-03-01T12:00:00Z",
            "2026-03-01T12:00:00.123+05:30",
            "1969-12-31T23:59:59Z",
            "9999-12-31T23:59:59Z",
            "2026-02-30T00:00:00Z",
            "yesterday",
            "",
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False),
)
known = {
    "id": st.one_of(st.text(min_size=1, max_size=30), st.integers(), st.none(), text),
    "event": st.one_of(st.sampled_from(["view", "download", "open", ""]), json_values),
    "format": st.one_of(st.sampled_from(["csv", "pdf"]), json_values),
    "url": st.one_of(st.sampled_from([f"{ORIGIN}/a?b=c", "/relative", "not a url"]), text),
    "referrer": st.one_of(st.sampled_from(["https://www.google.com/", ""]), json_values),
    "ts": timestamps,
    "site": st.one_of(st.sampled_from(["shop", "other", "nosuch", ""]), json_values),
}


@st.composite
def ticks(draw: st.DrawFn) -> Any:
    """A tick object, mostly plausible, sometimes not an object at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    tick: dict[str, Any] = {"id": "fuzz"}
    for name, values in known.items():
        if draw(st.booleans()):
            tick[name] = draw(values)
    tick.update(draw(st.dictionaries(text, json_values, max_size=4)))
    return tick


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value).encode()
    except ValueError:  # out-of-range floats
        return b"{"


content_types = st.sampled_from(
    ["application/json"] * 4
    + ["text/plain;charset=UTF-8", "application/x-ndjson", "image/png", "", "application/json; x"]
)


@dataclass
class Sent:
    method: str
    path: str
    body: bytes = b""
    content_type: str = ""
    params: dict[str, str] = field(default_factory=dict)
    referer: str | None = None


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    route = draw(st.sampled_from(["/tick", "/ticks", "/tick.gif"]))
    if route == "/tick":
        body = draw(st.one_of(ticks().map(_dumps), st.binary(max_size=64)))
        return Sent("POST", route, body, draw(content_types))
    if route == "/ticks":
        items = draw(st.lists(ticks(), max_size=8))
        if draw(st.booleans()):
            body = _dumps(items)
        else:
            body = b"\n".join(_dumps(item) for item in items)
            if draw(st.booleans()):
                body += b"\n{not json"
        if draw(st.integers(0, 9)) == 0:
            body = draw(st.binary(max_size=64))
        ctype = draw(st.one_of(content_types, st.just("application/x-ndjson")))
        return Sent("POST", route, body, ctype)
    params = draw(
        st.dictionaries(
            st.sampled_from(["id", "event", "format", "url", "ts", "x", "ümlaut", ""]),
            st.text(max_size=30),
            max_size=5,
        )
    )
    referer = draw(
        st.sampled_from(
            [None, f"{ORIGIN}/mail", "https://evil.example/", "android-app://mail/", "x"]
        )
    )
    return Sent(
        draw(st.sampled_from(["GET", "GET", "HEAD"])), route, params=params, referer=referer
    )


# --- the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SiteWorld]:
    env = {"METRONOME_RATE_LIMIT_PER_IP_BURST": "100000"}
    with site_world(request, tmp_path_factory, env=env) as started:
        # every worker parses its first user agent and builds its first answers before the
        # timed requests: a cold start is not what the time bound is about
        agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
        for _ in range(8):
            with httpx.Client(base_url=started.backend.server.url, timeout=30) as fresh:
                fresh.post(
                    "/tick",
                    json={"id": "warm-up"},
                    headers={"Authorization": f"Bearer {started.ingest}", "User-Agent": agent},
                )
        yield started


def _stored_ids(world: SiteWorld) -> set[str]:
    wait_for_drain(world.backend.server)
    with sqlite3.connect(world.backend.server.data_dir / "metronome.sqlite3") as conn:
        return {row[0] for row in conn.execute("SELECT id FROM events WHERE dataset != 'visits'")}


def _send(world: SiteWorld, sent: Sent, scope: str) -> httpx.Response:
    headers: dict[str, str] = {}
    params = dict(sent.params)
    if scope == "none":
        params.setdefault("site", world.site)
        if sent.method == "POST":
            headers["Origin"] = ORIGIN
    elif scope == "other_site":
        headers["Authorization"] = f"Bearer {world.ingest}"
        params["site"] = world.other
    else:
        key = {"ingest": world.ingest, "query": world.query, "admin": world.admin}[scope]
        headers["Authorization"] = f"Bearer {key}"
        if scope == "admin":
            params["site"] = world.site
    if sent.content_type:
        headers["Content-Type"] = sent.content_type
    if sent.referer is not None:
        headers["Referer"] = sent.referer
    return world.client.request(
        sent.method, sent.path, content=sent.body or None, headers=headers, params=params
    )


@dataclass
class Tally:
    acknowledged: set[str] = field(default_factory=set)
    pixels: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


def test_ingest_answers_fast_with_a_documented_status_and_stores_what_it_acknowledged(
    world: SiteWorld,
) -> None:
    before = _stored_ids(world)
    log_start = world.backend.server.log_path.stat().st_size
    tally = Tally()

    @FUZZ
    @given(sent=requests())
    def check(sent: Sent) -> None:
        for scope in SCOPES:
            started = time.monotonic()
            resp = _send(world, sent, scope)
            took = time.monotonic() - started
            where = (scope, sent)
            assert took < TIME_BOUND_S, (took, where)
            tally.statuses[resp.status_code] = tally.statuses.get(resp.status_code, 0) + 1
            if sent.method == "HEAD":  # the pixel's headers, nothing checked or recorded
                assert resp.status_code == 200 and resp.content == b"", where
                assert resp.headers["content-type"] == "image/gif", where
                continue
            if resp.status_code < 300:
                assert scope not in ("query", "other_site"), (resp.text, where)
                if sent.path == "/tick.gif":
                    assert resp.status_code == 200, where
                    assert resp.headers["content-type"] == "image/gif", where
                    assert sent.referer in (None, f"{ORIGIN}/mail") or scope != "none", where
                    assert resp.content[:6] == b"GIF89a"
                    tally.pixels += 1
                    continue
                assert resp.status_code == 202, (resp.text, where)
                body = resp.json()
                if sent.path == "/tick":
                    tally.acknowledged.add(body["id"])
                else:
                    ids = [i for i in body["ids"] if i is not None]
                    assert body["accepted"] == len(ids), body
                    assert len(body["rejected"]) + len(ids) == len(body["ids"]), body
                    for rejected in body["rejected"]:
                        assert rejected["error"] in CODES_4XX, body
                    tally.acknowledged.update(ids)
                continue
            assert resp.status_code in INGEST_STATUSES, (resp.status_code, resp.text, where)
            assert resp.headers["content-type"].startswith("application/json"), where
            error = resp.json()
            assert set(error) <= {"error", "message", "details"}, error
            assert error["error"] in CODES_4XX and isinstance(error["message"], str), error

    check()
    assert tally.acknowledged and tally.pixels, tally.statuses  # the run acknowledged some
    assert {400, 403, 415} <= set(tally.statuses), tally.statuses
    new = _stored_ids(world) - before
    assert tally.acknowledged <= new, len(tally.acknowledged - new)
    # nothing else: the only stored events not acknowledged by id are the pixels'
    assert len(new - tally.acknowledged) == tally.pixels, (len(new), tally)
    with open(world.backend.server.log_path, encoding="utf-8", errors="replace") as log:
        log.seek(log_start)
        written = log.read()
    assert not LOG_ERROR.search(written), written[-4000:]
