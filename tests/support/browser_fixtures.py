"""The fixtures every browser test module shares, ``browser`` and ``artifacts``: a pytest
plugin named in tests/conftest.py's ``pytest_plugins`` (so no module imports it first)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support.browser import CHROMIUM_ARGS, ensure_chromium

__all__ = ["artifacts", "browser"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (installed with apt when missing), headless, through Playwright:
    one per module."""
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``<pytest basetemp>/artifacts/dashboard/``, or under
    ``METRONOME_TEST_ARTIFACTS`` when set (CI keeps them)."""
    root = os.environ.get("METRONOME_TEST_ARTIFACTS")
    base = Path(root) if root else tmp_path_factory.getbasetemp() / "artifacts"
    path = base / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path
