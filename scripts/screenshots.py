"""Make the dashboard screenshots the README and docs/guides/dashboard.md show.

Starts ``metronome serve`` (embedded store, no sites: the page opens without a key) in a
temporary directory, sends a month of generated ticks from a few browsers, and photographs
``/dashboard`` in Debian's headless Chromium (through Playwright, as the tests do): on a
desktop screen and on a phone's. Writes ``docs/images/dashboard.png`` and
``docs/images/dashboard-phone.png``.

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


def _send_month(url: str, rng: random.Random) -> int:
    now_ms = int(time.time() * 1000)
    sent = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for day in range(30):
            for agent in AGENTS:
                ticks = []
                for _ in range(rng.randint(5, 25) + (30 - day)):
                    item = rng.choice(ITEMS[: rng.randint(1, len(ITEMS))])
                    tick: dict[str, object] = {
                        "id": item,
                        "url": f"https://data.example.org/{item}",
                        "ts": now_ms - day * 86_400_000 - rng.randint(0, 80_000_000),
                    }
                    if rng.random() < 0.2:
                        tick["event"] = "download"
                        tick["format"] = rng.choice(FORMATS)
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
            for name, viewport in [
                ("dashboard.png", {"width": 1280, "height": 1000}),
                ("dashboard-phone.png", {"width": 390, "height": 844}),
            ]:
                page = browser.new_page(viewport=viewport)
                page.goto(f"{server.url}/dashboard?compare=1")
                page.wait_for_selector("#board[data-loaded]")
                page.wait_for_function(
                    "document.querySelector('#now-events_1min')?.dataset.value !== undefined"
                )
                page.screenshot(path=str(OUT / name), full_page=name == "dashboard.png")
                page.close()
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
    print(f"{sent} ticks; wrote {OUT / 'dashboard.png'} and {OUT / 'dashboard-phone.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
