"""Browser fixtures: Debian's Chromium driven by Playwright, screenshots kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def pytest_collection_modifyitems(config, items):
    if CHROMIUM.exists():
        return
    reason = (
        f"BROWSER TESTS SKIPPED: {CHROMIUM} is missing. Install Debian's Chromium "
        "(`make browser`, or `apt-get install -y chromium`) to run the widget tests in a real browser."
    )
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"BROWSER TESTS SKIPPED: {CHROMIUM} is missing (run `make browser`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


class PageWatch:
    """What a page did that it should not: requests leaving the machine, dialogs, uncaught errors."""

    def __init__(self, page, allow_hosts=()):
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        self.allow_hosts = tuple(allow_hosts)
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def block_network(self, page):
        """Abort every request that would leave the page (file:, data: and blob: stay in)."""

        def handle(route):
            url = route.request.url
            if url.startswith(("file:", "data:", "blob:")) or any(url.startswith(h) for h in self.allow_hosts):
                return route.continue_()
            self.requests.append(url)
            return route.abort()

        page.route("**/*", handle)


def _page(browser, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height})
    pg = context.new_page()
    pg.watch = PageWatch(pg)
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture()
def page(browser):
    yield from _page(browser, 1280, 900)


@pytest.fixture()
def tall_page(browser):
    """Tall enough for the whole explorer in one screenshot."""
    yield from _page(browser, 1400, 2000)


def save_screenshot(page, artifacts: Path, name: str, selector: str | None = None) -> Path:
    """A screenshot in test-artifacts/ (retried: Chromium refuses a capture while layout is changing)."""
    import time

    path = artifacts / f"{name}.png"
    for attempt in range(4):
        try:
            if selector:
                page.locator(selector).first.screenshot(path=str(path), animations="disabled")
            else:
                page.screenshot(path=str(path), full_page=True, animations="disabled")
            return path
        except Exception:
            if attempt == 3:
                raise
            time.sleep(0.5)
    return path


def publish_docs_screenshot(src: Path, *, preferred: bool = False) -> bool:
    """Copy a screenshot to docs/explorer.png (the README's picture).

    Screenshots differ byte for byte from run to run, so a test run leaves a committed
    picture alone: it writes one where none exists, or where `preferred` (the toy-model
    picture) and NW_UPDATE_DOCS_SCREENSHOT=1 is set.
    """
    target = REPO / "docs" / "explorer.png"
    if target.exists() and not (preferred and os.environ.get("NW_UPDATE_DOCS_SCREENSHOT") == "1"):
        return False
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, target)
    return True
