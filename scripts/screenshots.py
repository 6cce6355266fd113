"""Make the dashboard screenshots the README and docs/guides/dashboard.md show.

Starts ``metronome serve`` (embedded store, no sites: the page opens without a key) in a
temporary directory, sends a month of generated ticks from a few browsers, and photographs
``/dashboard`` in Debian's headless Chromium (through Playwright, as the tests do): on a
desktop screen and on a phone's, and its Journeys view (with a page and a funnel chosen).
Writes ``docs/images/dashboard.png``, ``docs/images/dashboard-phone.png`` and
``docs/images/dashboard-journeys.png``.

    python -m scripts.screenshots
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from tests.support.browser import CHROMIUM_ARGS, ensure_chromium
from tests.support.metronome_server import MetronomeServer

OUT = Path(__file__).resolve().parent.parent / "docs" / "images"
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like"
    " Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.5 Safari/605.1.15",
]
ITEMS = ["parks", "trees", "bike-lanes", "schools", "air-quality", "libraries", "bus-stops"]
REFERRERS = [
    "https://www.arcgis.com/home",
    "https://www.google.com/",
    "https://news.example/story",
    "https://data.gov/",
    None,
]
FORMATS = ["csv", "geojson", "pdf", "shp"]
NEXT = {"parks": "trees", "trees": "schools", "bike-lanes": "bus-stops"}
ERRORS = [
    "Cannot read properties of undefined (reading 'rows')",
    "Failed to fetch https://data.example.org/api/items/42",
]
JOURNEYS = "view=journeys&compare=1&page=trees&step=e:parks&step=e:trees&step=e:schools"


def _send_month(url: str, rng: random.Random) -> int:
    now_ms = int(time.time() * 1000)
    sent = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for day in reversed(range(30)):  # oldest first, as they would arrive
            for agent in AGENTS:
                ticks = []
                item, at = ITEMS[0], 0
                for _ in range(rng.randint(5, 25) + (30 - day)):
                    if not at or rng.random() < 0.3:  # a new visit: a popular item, any time
                        item = rng.choice(ITEMS[: rng.randint(1, len(ITEMS))])
                        at = now_ms - day * 86_400_000 - rng.randint(0, 80_000_000)
                    else:  # the visit goes on, often along a common path
                        at += rng.randint(10_000, 240_000)
                        common = NEXT.get(item)
                        item = common if common and rng.random() < 0.5 else rng.choice(ITEMS)
                    tick: dict[str, object] = {
                        "id": item,
                        "url": f"https://data.example.org/{item}",
                        "ts": min(at, now_ms - 60_000),
                    }
                    if rng.random() < 0.2:
                        tick["event"] = "download"
                        tick["format"] = rng.choice(FORMATS)
                    elif rng.random() < 0.03:
                        tick["event"] = "error"
                        tick["type"] = "TypeError"
                        tick["message"] = rng.choice(ERRORS)
                    referrer = rng.choice(REFERRERS)
                    if referrer:
                        tick["referrer"] = referrer
                    ticks.append(tick)
                resp = client.post("/ticks", json=ticks, headers={"User-Agent": agent})
                resp.raise_for_status()
                sent += len(ticks)
        for agent in AGENTS[:3]:  # and a few now, for the live panel
            ticks = [{"id": rng.choice(ITEMS), "url": "https://data.example.org/"}] * 4
            client.post("/ticks", json=ticks, headers={"User-Agent": agent}).raise_for_status()
            sent += len(ticks)
    return sent


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    server = MetronomeServer({}, data_dir=Path(tempfile.mkdtemp(prefix="metronome-shots-")))
    server.start()
    try:
        sent = _send_month(server.url, random.Random(21))
        time.sleep(3)  # shipped into the store
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(ensure_chromium()), args=CHROMIUM_ARGS, headless=True
            )
            for name, viewport, query in [
                ("dashboard.png", {"width": 1280, "height": 1000}, "compare=1"),
                ("dashboard-phone.png", {"width": 390, "height": 844}, "compare=1"),
                ("dashboard-journeys.png", {"width": 1280, "height": 1000}, JOURNEYS),
            ]:
                page = browser.new_page(viewport=viewport)
                page.goto(f"{server.url}/dashboard?{query}")
                page.wait_for_selector("#board[data-loaded]")
                page.wait_for_function(
                    "document.querySelector('#now-events_1min')?.dataset.value !== undefined"
                )
                page.screenshot(path=str(OUT / name), full_page="phone" not in name)
                page.close()
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
    print(
        f"{sent} ticks; wrote dashboard.png, dashboard-phone.png, dashboard-journeys.png in {OUT}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
