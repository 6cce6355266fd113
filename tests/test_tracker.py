"""The browser tracker and the pixel: a real headless Chromium on a page of another origin,
``GET /metronome.js`` caching, and ``GET /tick.gif`` over plain HTTP.

Ticks are read back from the store itself (:func:`read_ticks`) and through ``POST /query``.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from metronome.api.tracker import tracker_source
from tests.support.backends import wait_for_drain
from tests.support.es_server import free_port
from tests.support.metronome_server import MetronomeServer

GIF_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00"
    b"\x02\x02D\x01\x00;"
)


@pytest.fixture(scope="module")
def page_port() -> int:
    """The port of the web site whose pages carry the tracker."""
    return free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, page_port: int) -> Iterator[MetronomeServer]:
    """A Metronome of its own (embedded store) with one site, ``demo``, that takes ticks
    from the pages' origin, and a key to read its reports (``server.query_key``): every
    stored tick is one this module sent."""
    srv = MetronomeServer(
        {"METRONOME_SITES_CACHE_S": "1"}, data_dir=tmp_path_factory.mktemp("data-tracker")
    )
    made = srv.run_cli(
        "sites",
        "create",
        "--id",
        "demo",
        "--name",
        "Parks",
        "--origin",
        f"http://127.0.0.1:{page_port}",
    )
    assert made.returncode == 0, made.stderr
    key = srv.run_cli("keys", "create", "--site", "demo", "--scope", "query", "--json")
    assert key.returncode == 0, key.stderr
    srv.query_key = json.loads(key.stdout)["secret"]  # type: ignore[attr-defined]
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


def read_ticks(server: MetronomeServer) -> list[dict[str, Any]]:
    """Every stored tick document, oldest first, read from the embedded store itself."""
    wait_for_drain(server)
    with sqlite3.connect(server.data_dir / "metronome.sqlite3") as conn:
        rows = conn.execute(
            "SELECT doc FROM events WHERE dataset = 'ticks' ORDER BY ts, id"
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


def summary(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What a tick says: (event, item id, format, url, referrer, free parameters)."""
    return (
        doc["event"]["action"],
        doc["item"]["id"],
        doc["item"].get("format"),
        doc.get("url", {}).get("original"),
        doc.get("http", {}).get("request", {}).get("referrer"),
        doc["params"],
    )


def test_post_tick_takes_json_sent_as_text_plain_with_a_site_parameter(
    server: MetronomeServer, page_port: int
) -> None:
    """What navigator.sendBeacon sends: a JSON string as text/plain, to /tick?site=..."""
    resp = httpx.post(
        f"{server.url}/tick?site=demo",
        content='{"id": "beacon-1", "plan": "pro"}',
        headers={
            "Content-Type": "text/plain;charset=UTF-8",
            "Origin": f"http://127.0.0.1:{page_port}",
        },
    )
    assert resp.status_code == 202, resp.text
    (doc,) = [d for d in read_ticks(server) if d["item"]["id"] == "beacon-1"]
    assert doc["params"] == {"plan": "pro"}  # the site is not a free parameter


def test_tracker_script_is_small_cached_by_etag_and_gzipped(server: MetronomeServer) -> None:
    source = tracker_source()
    with httpx.Client(base_url=server.url) as client:
        with client.stream("GET", "/metronome.js", headers={"Accept-Encoding": "gzip, br"}) as resp:
            zipped = b"".join(resp.iter_raw())
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/javascript; charset=utf-8"
        assert resp.headers["content-encoding"] == "gzip"
        assert resp.headers["cache-control"] == "public, max-age=3600"
        assert resp.headers["vary"] == "Accept-Encoding"
        assert gzip.decompress(zipped) == source
        assert len(zipped) < 2048, f"the tracker is {len(zipped)} bytes gzipped; goal < 2 KB"
        etag = resp.headers["etag"]
        assert etag.startswith('"') and etag.endswith('-gz"')

        plain = client.get("/metronome.js", headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200 and plain.content == source
        assert "content-encoding" not in plain.headers
        assert plain.headers["etag"] != etag  # one strong tag per encoding

        again = client.get(
            "/metronome.js", headers={"Accept-Encoding": "gzip", "If-None-Match": etag}
        )
        assert again.status_code == 304 and again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=3600"
        stale = client.get("/metronome.js", headers={"If-None-Match": '"older-version"'})
        assert stale.status_code == 200 and stale.content == source


def test_pixel_stores_a_tick_from_query_parameters_and_answers_a_gif(
    server: MetronomeServer, page_port: int
) -> None:
    page = f"http://127.0.0.1:{page_port}/newsletter"  # the Referer's origin must be allowed
    resp = httpx.get(
        f"{server.url}/tick.gif",
        params={"id": "newsletter-7", "event": "open", "campaign": "nov", "site": "demo"},
        headers={"Referer": page},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/gif"
    assert "no-store" in resp.headers["cache-control"]
    assert resp.content == GIF_1X1
    (doc,) = [d for d in read_ticks(server) if d["item"]["id"] == "newsletter-7"]
    assert summary(doc) == (
        "open",
        "newsletter-7",
        None,
        page,
        None,
        {"campaign": "nov"},
    )

    missing = httpx.get(f"{server.url}/tick.gif", params={"event": "open", "site": "demo"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_field" and "'id'" in missing.json()["message"]
    twice = httpx.get(f"{server.url}/tick.gif?id=a&id=b")
    assert twice.status_code == 400
    assert twice.json()["error"] == "invalid_parameter"
    assert twice.json()["details"] == {"parameter": "id"}


# ------------------------------------------------------------------ the real browser

_STUB = (
    "window.metronome=window.metronome||function(){(metronome.q=metronome.q||[]).push(arguments)};"
)


class _Pages(ThreadingHTTPServer):
    daemon_threads = True
    pages: dict[str, tuple[str, bytes, dict[str, str]]]


class _PageHandler(BaseHTTPRequestHandler):
    server: _Pages

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        page = self.server.pages.get(self.path.split("?", 1)[0])
        if page is None:
            self.send_error(404)
            return
        content_type, body, headers = page
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site(server: MetronomeServer, page_port: int) -> Iterator[str]:
    """A web site on another origin (port) than Metronome, with the tracker on its pages."""
    port = page_port
    origin = f"http://127.0.0.1:{port}"
    tag = f'<script src="{server.url}/metronome.js" data-site="demo" defer></script>'
    html = "text/html; charset=utf-8"
    main = f"""<!doctype html><title>Parks</title>
<script>{_STUB}metronome('event', 'signup', {{plan: 'pro'}});</script>{tag}
<a id="dl" href="/files/parks.csv">parks (CSV)</a>
<a id="out" href="http://localhost:{port}/elsewhere">a site on another host</a>
<a id="spa" href="/page/two">an in-app link (no request)</a>
<img id="px" alt="" src="{server.url}/tick.gif?id=newsletter&amp;event=open&amp;site=demo">
"""
    dnt = f"""<!doctype html><title>Private</title>
<script>{_STUB}metronome('event', 'signup', {{plan: 'pro'}});</script>
<script src="{server.url}/metronome.js" data-site="demo" data-respect-dnt="true" defer></script>
<a id="dl" href="/files/parks.csv">parks (CSV)</a>
"""
    fallback = f"""<!doctype html><title>Old browser</title>
<script src="{server.url}/metronome.js" data-site="demo" data-id="fallback-page" defer>
</script>
"""
    errors = f"""<!doctype html><title>Broken</title>
<script>function fail(m) {{ setTimeout(function () {{ throw new TypeError(m); }}); }}</script>
<script src="{server.url}/metronome.js" data-site="demo" data-id="broken" data-errors
 data-errors-max="3" defer></script>
"""
    pages = _Pages(("127.0.0.1", port), _PageHandler)
    pages.pages = {
        "/errors": (html, errors.encode(), {}),
        "/page": (html, main.encode(), {}),
        "/dnt": (html, dnt.encode(), {}),
        "/fallback": (html, fallback.encode(), {}),
        "/elsewhere": (html, b"<!doctype html><title>Elsewhere</title>", {}),
        "/files/parks.csv": (
            "text/csv",
            b"name\nGreen Park\n",
            {"Content-Disposition": 'attachment; filename="parks.csv"'},
        ),
    }
    thread = threading.Thread(target=pages.serve_forever, daemon=True)
    thread.start()
    yield origin
    pages.shutdown()
    pages.server_close()


def _wait_for(
    server: MetronomeServer, page: Page, site: str, count: int, timeout_s: float = 30
) -> list[dict]:
    """The stored ticks once ``count`` have arrived and then a marker that ``page`` sends
    after them (a view of ``/fallback?marker=...``, itself left out): anything the browser
    sent twice, or late, is stored by then."""
    deadline = time.monotonic() + timeout_s
    while len(read_ticks(server)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    marker = f"{site}/fallback?marker={uuid.uuid4().hex}"
    page.goto(marker)
    while True:
        docs = read_ticks(server)
        if any(d.get("url", {}).get("original") == marker for d in docs):
            return [d for d in docs if d.get("url", {}).get("original") != marker]
        assert time.monotonic() < deadline, f"the marker tick never arrived: {marker}"
        time.sleep(0.1)


def test_browser_counts_views_spa_navigation_events_downloads_and_outbound_links(
    server: MetronomeServer, site: str, browser: Browser
) -> None:
    """A visitor arrives from a search, navigates inside the app, signs up, downloads a CSV and
    leaves through an outbound link. Their browser sends Global Privacy Control; the page that
    asks (data-respect-dnt) sends nothing, the page that does not ask counts as usual.
    Chromium has no GPC setting, so an init script gives navigator.globalPrivacyControl the
    value a browser that sends it (Firefox, Brave) has."""
    before = {d["event"]["id"] for d in read_ticks(server)}
    context = browser.new_context()
    context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"
    )
    page = context.new_page()
    tick_requests: list[str] = []
    page.on("request", lambda r: tick_requests.append(r.url) if "/tick" in r.url else None)
    loaded = "() => window.metronome && !window.metronome.q"

    page.goto(f"{site}/dnt")
    page.wait_for_function(loaded)
    with page.expect_download():
        page.click("#dl")

    page.goto(f"{site}/page", referer="https://search.example/?q=parks")
    page.wait_for_function(loaded)
    page.wait_for_function("() => document.getElementById('px').complete")
    assert page.evaluate("document.getElementById('px').naturalWidth") == 1
    page.evaluate("""() => {
        history.pushState({}, '', '/page/two');
        history.replaceState({tab: 1}, '', '/page/two?tab=1');  // same path: no new view
        history.pushState({}, '', '/page/two#details');
    }""")
    with page.expect_download() as download:
        page.click("#dl")
    assert download.value.suggested_filename == "parks.csv"
    with page.expect_navigation():
        page.click("#out")
    assert page.url == site.replace("127.0.0.1", "localhost") + "/elsewhere"

    docs = [
        d for d in _wait_for(server, page, site, len(before) + 6) if d["event"]["id"] not in before
    ]
    context.close()
    on = site + "/page"
    outbound = site.replace("127.0.0.1", "localhost") + "/elsewhere"
    now = on + "/two#details"  # where the visitor was when they clicked
    expected = [
        ("view", "/page", None, on, "https://search.example/?q=parks", {}),
        ("signup", "/page", None, on, None, {"plan": "pro"}),
        ("open", "newsletter", None, site + "/", None, {}),  # the image's Referer: the origin
        ("view", "/page/two", None, on + "/two", on, {}),
        ("download", "/files/parks.csv", "csv", site + "/files/parks.csv", now, {}),
        ("outbound", outbound, None, outbound, now, {}),
    ]
    assert sorted(map(summary, docs), key=repr) == sorted(expected, key=repr)
    assert all(d["user_agent"]["name"] == "HeadlessChrome" for d in docs)
    # the same ticks, as an analyst reads them: through POST /query
    answer = httpx.post(
        f"{server.url}/query",
        headers={"Authorization": f"Bearer {server.query_key}"},
        json={  # type: ignore[attr-defined]
            "source": "ticks",
            "range": "today",
            "limit": 100,
            "dimensions": [
                "event",
                "item",
                "format",
                "url.original",
                "http.request.referrer",
                "params.plan",
            ],
            "filters": [["is", "event.id", [d["event"]["id"] for d in docs]]],
        },
    ).json()
    queried = [
        (
            *r["dimensions"][:5],
            {"plan": r["dimensions"][5]} if r["dimensions"][5] else {},
            *r["metrics"],
        )
        for r in answer["results"]
    ]
    assert sorted(queried, key=repr) == sorted([(*e, 1) for e in expected], key=repr)
    beacons = [u for u in tick_requests if "/tick.gif" not in u]
    assert beacons and all(u == f"{server.url}/tick?site=demo" for u in beacons), beacons


def test_browser_without_send_beacon_sends_with_fetch_keepalive(
    server: MetronomeServer, site: str, browser: Browser
) -> None:
    """Where navigator.sendBeacon is missing (removed here by an init script), the tracker
    falls back to fetch(keepalive, no-cors): no CORS preflight, the tick still arrives."""
    before = {d["event"]["id"] for d in read_ticks(server)}
    context = browser.new_context()
    context.add_init_script("delete Navigator.prototype.sendBeacon")
    page = context.new_page()
    page.goto(f"{site}/fallback")
    page.wait_for_function("() => typeof window.metronome === 'function'")
    docs = [
        d for d in _wait_for(server, page, site, len(before) + 1) if d["event"]["id"] not in before
    ]
    assert page.evaluate("typeof navigator.sendBeacon") == "undefined"
    context.close()
    assert [summary(d) for d in docs] == [
        ("view", "fallback-page", None, f"{site}/fallback", None, {})
    ]


def test_browser_reports_errors_once_each_and_at_most_the_page_limit(
    server: MetronomeServer, site: str, browser: Browser
) -> None:
    """With data-errors, uncaught errors and unhandled rejections are sent as error ticks:
    the same error thrown three times is sent once, and past data-errors-max (3) nothing
    more is sent from the page. A page without data-errors sends no errors."""
    before = {d["event"]["id"] for d in read_ticks(server)}
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{site}/fallback")  # no data-errors: an error here is not sent
    page.wait_for_function("() => typeof window.metronome === 'function'")
    page.evaluate("() => setTimeout(() => { throw new Error('not reported'); })")
    page.goto(f"{site}/errors")
    page.wait_for_function("() => typeof window.metronome === 'function'")
    for script in (
        "() => fail('Item 42 is missing')",
        "() => fail('Item 42 is missing')",
        "() => fail('Item 42 is missing')",  # the same error again: sent once
        "() => { Promise.reject(new RangeError('page 9 is out of range')); }",
        "() => { Promise.reject('offline'); }",
        "() => fail('Item 43 is missing')",  # the fourth distinct error: over the limit
    ):
        page.evaluate(script)
        page.wait_for_timeout(0)  # let the error fire before the next one
    docs = [
        d for d in _wait_for(server, page, site, len(before) + 5) if d["event"]["id"] not in before
    ]
    context.close()
    views = [d["url"]["original"] for d in docs if d["event"]["action"] == "view"]
    assert views == [f"{site}/fallback", f"{site}/errors"]
    # each error is its own request, so they may arrive in any order
    order = {"Item 42 is missing": 0, "page 9 is out of range": 1, "offline": 2}
    reported = sorted(
        (d for d in docs if d["event"]["action"] == "error"),
        key=lambda d: order.get(d["error"]["message"], len(order)),
    )
    assert [(d["item"]["id"], d["error"].get("type"), d["error"]["message"]) for d in reported] == [
        ("broken", "TypeError", "Item 42 is missing"),
        ("broken", "RangeError", "page 9 is out of range"),
        ("broken", None, "offline"),
    ]
    first, second, third = (d["error"] for d in reported)
    assert first["source"] == f"{site}/errors" and first["line"] == 2 and first["column"] > 0
    assert "TypeError: Item 42 is missing" in first["stack_trace"]
    assert first["group"] == "TypeError: Item <n> is missing at /errors:<anonymous>"
    assert "page 9 is out of range" in second["stack_trace"]
    assert "stack_trace" not in third and "source" not in third
    assert all(d["url"]["original"] == f"{site}/errors" for d in reported)
