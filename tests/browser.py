"""Headless Chromium for the demo tests (import as ``from browser import ...``; TOOLCHAIN.md: offline flags)."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


def skip_without_chromium() -> None:
    """Skip the calling test when Chromium is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (run scripts/install_browser.sh)")


@contextlib.contextmanager
def open_page(url: str, profile: Path) -> Iterator[Any]:
    """A headless-Chromium page on ``url`` (skips without Chromium); the browser closes on exit."""
    skip_without_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            context.close()


@contextlib.contextmanager
def tab_page(url: str, tab: str, profile: Path) -> Iterator[Any]:
    """:func:`open_page` on the hub at ``url`` with the tab named ``tab`` opened."""
    with open_page(url, profile) as page:
        page.get_by_role("tab", name=tab).click()
        yield page


def set_numbers(page: Any, values: dict[str, str]) -> None:
    """Type each value into the number box of the element with that id (and press Enter)."""
    for elem, value in values.items():
        box = page.locator(f"#{elem} input[type=number]")
        box.fill(value)
        box.press("Enter")


def screenshot(page: Any, folder: Path, name: str) -> Path:
    """A full-page PNG ``folder/name``, also copied to ``$MEDGEN_SCREENSHOTS`` when set."""
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("MEDGEN_SCREENSHOTS"):
        Path(os.environ["MEDGEN_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["MEDGEN_SCREENSHOTS"]) / name)
    return path
