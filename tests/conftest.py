"""Shared fixtures: a headless Chromium driven by Playwright, a page that records what went wrong, and where
screenshots go.

The browser is Debian's ``chromium`` (``apt-get install chromium``) driven by the ``playwright`` package
(``playwright install`` is never run). Without either, a test asking for ``browser`` is skipped.
Screenshots are written to the test's tmp dir and copied to ``out/`` at the repository root when it exists.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]
OUT = Path(__file__).resolve().parents[1] / "out"

OpenPage = Callable[[str], Awaitable[tuple["Page", list[str]]]]
Screenshot = Callable[["Page", str], Awaitable[Path]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=60_000)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def open_page(browser: Browser) -> OpenPage:
    """``await open_page(base_url)`` -> (page, problems): a 1200x900 page whose console errors, page errors,
    dialogs and requests leaving ``base_url`` (other than ``data:``) are appended to ``problems``."""

    async def open_(base_url: str) -> tuple[Page, list[str]]:
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
        page.on("request", lambda r: None if r.url.startswith(base_url) or r.url.startswith("data:")
                else problems.append(f"external request: {r.url}"))
        return page, problems

    return open_


@pytest.fixture
def screenshot(tmp_path: Path) -> Screenshot:
    """``await screenshot(page, "name.png")``: the full page into tmp_path, copied to ``out/`` if it exists."""

    async def shoot(page: Page, name: str) -> Path:
        path = tmp_path / name
        await page.screenshot(path=str(path), full_page=True)
        if OUT.is_dir():
            shutil.copyfile(path, OUT / name)
        return path

    return shoot
