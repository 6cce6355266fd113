"""The dashboard in a real headless Chromium (Debian's, through Playwright) against
``metronome serve`` on the embedded store: sign in with a query key, send ticks, watch the
numbers become the exact expected values (the "now" panel live, the panels after it), click
a referrer to filter everything, open the URL again for the same view, an item's page, CSV
export, the Server-Sent Events fallback, and a phone's screen.

Screenshots are saved as test artifacts under the run's temporary directory
(``<pytest basetemp>/artifacts/dashboard/``), or under ``METRONOME_TEST_ARTIFACTS`` when set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from metronome.api.dashboard import ASSETS, dashboard_asset
from metronome.live.dashboard import PANELS
from tests.support.metronome_server import MetronomeServer

ARCGIS = "https://www.arcgis.com/home"
NEWS = "https://news.example/story"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetronomeServer]:
    """One site, ``demo``, with a query key (``server.query_key``) and an ingest key
    (``server.ingest_key``); every tick stored is one this module sent."""
    srv = MetronomeServer(
        {
            "METRONOME_SITES_CACHE_S": "1",
            "METRONOME_RATE_LIMIT_PER_IP": "0",
            "METRONOME_RATE_LIMIT_PER_SITE": "0",
            "METRONOME_SHIP_POLL_MS": "50",
        },
        data_dir=tmp_path_factory.mktemp("data-dashboard"),
    )

    def cli(*args: str) -> dict:
        made = srv.run_cli(*args, "--json")
        assert made.returncode == 0, made.stderr
        return json.loads(made.stdout)  # type: ignore[no-any-return]

    cli("sites", "create", "--id", "demo", "--name", "Parks")
    srv.query_key = cli("keys", "create", "--site", "demo", "--scope", "query")["secret"]  # type: ignore[attr-defined]
    srv.ingest_key = cli("keys", "create", "--site", "demo", "--scope", "ingest")["secret"]  # type: ignore[attr-defined]
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.log_tail()
    assert "Traceback" not in srv.log_path.read_text(), srv.log_tail(80)


def _send(server: MetronomeServer, ticks: list[dict]) -> None:
    resp = httpx.post(
        f"{server.url}/ticks",
        json=ticks,
        headers={"Authorization": f"Bearer {server.ingest_key}"},  # type: ignore[attr-defined]
    )
    assert resp.status_code == 202, resp.text


def _sign_in(page: Page, server: MetronomeServer, url: str) -> None:
    page.goto(url)
    expect(page.get_by_label("Key", exact=True)).to_be_visible()
    page.get_by_label("Key", exact=True).fill(server.query_key)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#board")).to_be_visible()


def _value(page: Page, selector: str, expected: str, timeout_ms: float = 20_000) -> None:
    expect(page.locator(selector)).to_have_attribute("data-value", expected, timeout=timeout_ms)


def _chart_total(page: Page) -> int:
    cells = page.locator("#data-trend tbody tr td:first-of-type")
    return sum(int(v) for v in cells.evaluate_all("(cs) => cs.map((c) => c.dataset.value)"))


def test_dashboard_counts_ticks_live_filters_by_a_referrer_and_the_url_keeps_the_view(
    server: MetronomeServer, browser: Browser, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    _sign_in(page, server, f"{server.url}/dashboard")
    _value(page, "#total-views", "0")
    expect(page.locator("#live-state")).to_have_text("live")

    _send(
        server,
        [{"id": "parks", "url": "https://data.example/parks", "referrer": ARCGIS}] * 5
        + [{"id": "trees", "url": "https://data.example/trees", "referrer": NEWS}] * 3
        + [{"id": "parks", "event": "download", "format": "csv"}] * 2
        + [{"id": "trees", "event": "download", "format": "pdf"}],
    )
    _value(page, "#now-events_1min", "11")  # pushed live, nothing reloaded
    _value(page, "#now-visitors_5min", "1")
    _value(page, "#total-views", "8")  # the panels follow the live figures
    _value(page, "#total-visitors", "1")
    referrers = page.locator("#panel-referrers tbody tr")
    expect(referrers).to_have_count(2)
    expect(referrers.nth(0).locator("th")).to_have_text("arcgis.com/home")
    expect(referrers.nth(0).locator("td").first).to_have_attribute("data-value", "5")
    formats = page.locator("#panel-formats tbody tr th")
    expect(formats).to_have_text(["csv", "pdf"])
    assert _chart_total(page) == 8
    page.screenshot(path=artifacts / "dashboard.png", full_page=True)

    page.get_by_role("button", name="arcgis.com/home").click()
    expect(page.locator("#chips .chip")).to_have_text(["referrer: arcgis.com/home ×"])
    _value(page, "#total-views", "5")
    expect(page.locator("#panel-items tbody tr th .value")).to_have_text(["parks"])
    assert _chart_total(page) == 5
    query = parse_qs(urlsplit(page.url).query)
    assert query["f"] == ["referrer:arcgis.com/home"]
    page.screenshot(path=artifacts / "dashboard-filtered.png", full_page=True)

    with page.expect_download() as download:
        page.get_by_role("button", name="Download Top items as CSV").click()
    assert Path(download.value.path()).read_text() == "item,Events,Visitors\nparks,5,1\n"

    shared = context.new_page()  # a new tab keeps no sign-in: the URL alone has the view
    _sign_in(shared, server, page.url)
    _value(shared, "#total-views", "5")
    expect(shared.locator("#chips .chip")).to_have_text(["referrer: arcgis.com/home ×"])
    shared.get_by_role("button", name="Remove filter referrer is arcgis.com/home").click()
    _value(shared, "#total-views", "8")
    assert "f=" not in shared.url

    shared.locator("#panel-items a.open", has_text="report").first.click()
    expect(shared.locator("#item-title")).to_have_text("Item parks")
    views = shared.locator("#data-item-views tbody td")
    expect(views.first).to_be_attached()
    total = sum(int(v) for v in views.evaluate_all("(cs) => cs.map((c) => c.dataset.value)"))
    assert total == 5
    expect(shared.locator("#panel-item-downloads tbody th")).to_have_text(["csv"])
    assert "item=parks" in shared.url
    shared.screenshot(path=artifacts / "dashboard-item.png", full_page=True)
    assert not errors, errors
    context.close()


def test_dashboard_falls_back_to_server_sent_events_and_fits_a_phone(
    server: MetronomeServer, browser: Browser, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    _sign_in(page, server, f"{server.url}/dashboard?live=events&range=7d&compare=1")
    expect(page.locator("#live-state")).to_have_text("live (events)")
    figure = page.locator("#now-events_1min")
    expect(figure).to_have_attribute("data-value", re.compile(r"^\d+$"))  # pushed as an event
    before = figure.get_attribute("data-value")
    _send(server, [{"id": "phone", "url": "https://data.example/phone"}])
    expect(figure).not_to_have_attribute("data-value", before or "", timeout=20_000)
    expect(page.locator("#range")).to_have_value("7d")
    expect(page.locator("#compare")).to_be_checked()
    expect(page.locator("#panel-totals .previous").first).to_be_visible()
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways on a phone ({width} px)"
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select')]"
        ".filter((e) => !e.labels || !e.labels.length).map((e) => e.id)"
    )
    assert unlabelled == []
    page.keyboard.press("Tab")  # the first control takes the keyboard focus
    assert page.evaluate("document.activeElement !== document.body")
    page.screenshot(path=artifacts / "dashboard-phone.png", full_page=True)
    context.close()


def test_dashboard_is_plain_files_served_with_its_panels_and_a_strict_policy(
    server: MetronomeServer,
) -> None:
    page = httpx.get(f"{server.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    config = re.search(r'<script type="application/json" id="config">(.*?)</script>', page.text)
    assert config is not None
    assert [p["id"] for p in json.loads(config.group(1))["panels"]] == [p["id"] for p in PANELS]
    for name in ASSETS:
        if name == "index.html":
            continue
        asset = httpx.get(f"{server.url}/dashboard/{name}")
        assert asset.status_code == 200 and asset.content == dashboard_asset(name)
        again = httpx.get(
            f"{server.url}/dashboard/{name}", headers={"If-None-Match": asset.headers["etag"]}
        )
        assert again.status_code == 304
    missing = httpx.get(f"{server.url}/dashboard/nope.js")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
