"""The dashboard's Journeys view in a real headless Chromium (Debian's, through Playwright)
against ``metronome serve`` on each store (one server per store for the module, no sites:
the page opens without a key), with a hand-built journey sent through ``POST /ticks`` on
2022-08-16 (no other test of the module writes there), and the numbers a user reads.

Visits by hand (UTC), which every figure below is worked out from:

    V1  /a 10:00 -> /b 10:02 -> /c 10:05   300,000 ms  3 pages  (an error on /c)
    V2  /a 11:00 -> /b 11:04               240,000 ms  2 pages  (the same error on /b)
    V3  /b 12:00                                 0 ms  1 page   (a bounce)

So: 3 visits, bounce rate 33%, median visit duration 4m 0s, 2 views per visit; entry pages
/a 2 and /b 1; exit pages /b 2 and /c 1; /b came from /a (2, 67%) or was entered on (1,
33%) and went to exit (2) or /c (1); /a is related to /b (2 visits hold both; /c only one,
under the minimum support of 2); the funnel /a -> /b -> /c converts 50%. The README's
example journey, sent today, shows on a phone.

Screenshots go with the run's artifacts (``<pytest basetemp>/artifacts/dashboard/``, or
``METRONOME_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.support.backends import Backend, running_backend

README = Path(__file__).resolve().parents[1] / "README.md"
DAY = "2022-08-16"
SITE = "https://journey.example"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0.0.0 Safari/537.36"
)
STACK = (
    "TypeError: Cannot read properties of undefined (reading 'x')\n"
    "    at draw (https://journey.example/app.js:{line}:5)"
)


def _view(page: str, at: str) -> dict[str, Any]:
    return {"id": page, "url": SITE + page, "ts": f"{DAY}T{at}:00Z"}


def _error(page: str, at: str, number: int) -> dict[str, Any]:
    return {
        **_view(page, at),
        "event": "error",
        "type": "TypeError",
        "message": f"Cannot read properties of undefined (reading 'x') in item {number}",
        "stack": STACK.format(line=10 + number),
    }


# (address, user agent, ticks): one visitor each
JOURNEY = [
    (
        "10.25.0.1",
        FIREFOX,
        [
            _view("/a", "10:00"),
            _view("/b", "10:02"),
            _view("/c", "10:05"),
            _error("/c", "10:05", 42),
        ],
    ),
    ("10.25.0.2", CHROME, [_view("/a", "11:00"), _view("/b", "11:04"), _error("/b", "11:04", 7)]),
    ("10.25.0.3", FIREFOX, [_view("/b", "12:00")]),
]


@pytest.fixture(scope="module", params=["sqlite", "elasticsearch"])
def journey(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """A server on one store, holding the journey above."""
    with running_backend(request, tmp_path_factory, request.param, {}) as started:
        for address, agent, ticks in JOURNEY:
            resp = started.client.post(
                "/ticks", json=ticks, headers={"User-Agent": agent, "X-Forwarded-For": address}
            )
            assert resp.status_code == 202, resp.text
        started.settle()
        yield started


def _value(page: Page, selector: str, expected: str, timeout_ms: float = 20_000) -> None:
    expect(page.locator(selector)).to_have_attribute("data-value", expected, timeout=timeout_ms)


def _rows(page: Page, panel: str) -> list[list[str]]:
    """A table's rows as the user reads them: the row's name, then each cell's figure
    (without the previous period's, which ``compare`` adds below it)."""
    return page.locator(f"#panel-{panel} tbody tr").evaluate_all(
        "(rows) => rows.map((r) => [...r.children].map((c) => c.firstChild.textContent.trim()))"
    )


def test_journeys_view_shows_visits_pages_transitions_related_items_errors_and_a_funnel(
    journey: Backend, browser: Browser, artifacts: Path
) -> None:
    context = browser.new_context(
        viewport={"width": 1280, "height": 1400}, timezone_id="UTC", locale="en-US"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{journey.server.url}/dashboard?range=custom&from={DAY}&to={DAY}&compare=1")
    expect(page.locator("#board")).to_be_visible()  # no sites: no key to give
    page.get_by_role("link", name="Journeys").click()
    expect(page.locator("#journeys")).to_be_visible()
    expect(page.get_by_role("link", name="Journeys")).to_have_attribute("aria-current", "page")

    # the tiles, as numbers and as the text shown, with the previous day beside them
    _value(page, "#total-visits", "3")
    expect(page.locator("#total-visits")).to_have_text("3")
    expect(page.locator("#total-bounce-rate")).to_have_text("33%")
    expect(page.locator("#total-visit-duration")).to_have_text("4m 0s")
    _value(page, "#total-visit-duration", "240000")
    expect(page.locator("#total-views-per-visit")).to_have_text("2")
    expect(page.locator("#panel-visit-totals .previous").first).to_have_text("previous 0")

    assert _rows(page, "entry-pages") == [["/a", "2", "0%"], ["/b", "1", "100%"]]
    assert _rows(page, "exit-pages") == [["/b", "2", "1.5"], ["/c", "1", "3"]]
    groups = page.locator("#panel-error-groups tbody tr[data-fingerprint]")
    expect(groups).to_have_count(1)
    group = groups.first
    expect(group.locator("th")).to_contain_text("Cannot read properties of undefined")
    assert [c.get_attribute("data-value") for c in group.locator("td").all()] == [
        "2",
        "2",
        f"{DAY}T10:05:00.000+00:00",
        f"{DAY}T11:04:00.000+00:00",
    ]
    group.get_by_role("button").click()  # the pages and browsers it was seen on
    details = page.locator("#panel-error-groups tr.details")
    expect(details.locator(".pages")).to_have_text(re.compile(r"^Pages: /[bc] 1, /[bc] 1$"))
    expect(details.locator(".browsers")).to_contain_text("Firefox 1")
    expect(details.locator(".browsers")).to_contain_text("Chrome 1")

    # a page picked from the exit pages: its transitions and related items
    page.locator("#panel-exit-pages").get_by_role("button", name="/b", exact=True).click()
    expect(page.locator("#panel-came-from h2")).to_have_text("Came to /b from")
    expect(page.locator("#panel-came-from tbody tr")).to_have_count(2)
    assert _rows(page, "came-from") == [["/a", "2", "67%"], ["(entry)", "1", "33%"]]
    assert _rows(page, "went-to") == [["(exit)", "2", "67%"], ["/c", "1", "33%"]]
    expect(page.locator("#panel-related tbody tr")).to_have_count(1)
    related = _rows(page, "related")
    assert related[0][0] == "/a" and related[0][2] == "2"
    assert parse_qs(urlsplit(page.url).query)["page"] == ["/b"]
    page.screenshot(path=artifacts / f"journeys-{journey.name}.png", full_page=True)

    # the funnel builder: two steps, one more added, then shown
    page.get_by_label("Step 1", exact=True).fill("/a")
    page.get_by_label("Step 2", exact=True).fill("/b")
    page.get_by_role("button", name="Add step").click()
    page.get_by_label("Step 3", exact=True).fill("/c")
    page.get_by_role("button", name="Show funnel").click()
    _value(page, "#funnel-conversion", "0.5")
    expect(page.locator("#funnel-conversion")).to_have_text(
        "50% of the 2 visits that reached /a went on to /c."
    )
    assert page.locator("#funnel-table tbody tr").evaluate_all(
        "(rows) => rows.map((r) => [...r.children].map((c) => c.textContent))"
    ) == [
        ["1. /a", "2", "100%", "100%", "–", "–"],
        ["2. /b", "2", "100%", "100%", "3m 0s", "–"],
        ["3. /c", "1", "50%", "50%", "3m 0s", "exit 1"],
    ]
    assert parse_qs(urlsplit(page.url).query)["step"] == ["e:/a", "e:/b", "e:/c"]

    # a step removed, and one that must come right after the previous: nobody went
    # from /a straight to /c; both went to /b instead
    page.get_by_role("button", name="Remove step 2").click()
    page.get_by_label("right after step 1").check()
    page.get_by_role("button", name="Show funnel").click()
    _value(page, "#funnel-conversion", "0")
    expect(page.locator("#funnel-table tbody tr").nth(1).locator("td").last).to_have_text("/b 2")
    assert parse_qs(urlsplit(page.url).query)["step"] == ["e:/a", "n:/c"]
    page.go_back()  # the previous funnel, as the address had it
    _value(page, "#funnel-conversion", "0.5")
    expect(page.get_by_label("Step 3", exact=True)).to_have_value("/c")

    # the address holds the whole view: a new tab opens it as it was
    shared = context.new_page()
    shared.goto(page.url)
    _value(shared, "#funnel-conversion", "0.5")
    expect(shared.get_by_label("Step 3", exact=True)).to_have_value("/c")
    expect(shared.locator("#panel-came-from tbody tr")).to_have_count(2)
    shared.get_by_role("link", name="Overview").click()
    expect(shared.locator("#panels")).to_be_visible()
    expect(shared.locator("#journeys")).to_be_hidden()
    assert "view=" not in shared.url

    # a browser chip from the overview filters the visits: V1 and V3 used Firefox
    shared.locator("#panel-browsers").get_by_role("button", name="Firefox").click()
    expect(shared.locator("#chips .chip")).to_have_text(["browser: Firefox ×"])
    shared.get_by_role("link", name="Journeys").click()
    _value(shared, "#total-visits", "2")
    expect(shared.locator("#total-bounce-rate")).to_have_text("50%")
    expect(shared.locator("#journey-note")).to_contain_text("by browser, os, device, country")
    assert not errors, errors
    context.close()


def _readme_journey() -> list[dict[str, Any]]:
    """The ticks of the README's example journey, as a new user would send them."""
    section = README.read_text().split("## Journeys:", 1)[1]
    found = re.search(r"localhost:8080/ticks .*? -d '(\[.*?\])'", section, re.S)
    assert found, "the README's Journeys section sends no ticks"
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_the_readme_journey_on_a_phone_with_every_control_labelled(
    journey: Backend, browser: Browser, artifacts: Path
) -> None:
    resp = journey.client.post("/ticks", json=_readme_journey())  # today, one visitor
    assert resp.status_code == 202, resp.text
    journey.settle()
    context = browser.new_context(
        viewport={"width": 375, "height": 740}, is_mobile=True, timezone_id="UTC", locale="en-US"
    )
    page = context.new_page()
    page.goto(
        f"{journey.server.url}/dashboard?view=journeys&range=today"
        "&page=/pricing&step=e:/home&step=e:/signup"
    )
    _value(page, "#total-visits", "1")
    expect(page.locator("#total-bounce-rate")).to_have_text("0%")
    expect(page.locator("#total-views-per-visit")).to_have_text("3")
    assert _rows(page, "entry-pages") == [["/home", "1", "0%"]]
    assert _rows(page, "came-from") == [["/home", "1", "100%"]]
    assert _rows(page, "went-to") == [["/signup", "1", "100%"]]
    _value(page, "#funnel-conversion", "1")
    expect(page.locator("#panel-error-groups")).to_contain_text("No errors in this range.")
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= 375, f"the Journeys view scrolls sideways on a phone ({width} px)"
    unlabelled = page.evaluate(
        "[...document.querySelectorAll('input, select')]"
        ".filter((e) => !e.labels || !e.labels.length).map((e) => e.id || e.className)"
    )
    assert unlabelled == []
    page.screenshot(path=artifacts / f"journeys-phone-{journey.name}.png", full_page=True)
    context.close()
