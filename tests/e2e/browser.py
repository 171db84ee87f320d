"""A real browser for the dashboard's tests: Debian's Chromium driven by Playwright (its own browsers are never
downloaded: `make browser` installs the system one), a page that records every console error, and screenshots.

Test modules take the `browser` fixture from here (`from e2e.browser import browser`): one browser per module, so
Playwright's own event loop lives only as long as the sync tests that use it.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Where the tests leave a screenshot of each page (git-ignored); docs/images/dashboard/ holds copies.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"
# A response the test provokes on purpose (a refused deploy, a revoked key) is logged by Chromium as
# "Failed to load resource: the server responded with a status of 409 (Conflict)": allowed by status.
_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no Chromium on this machine: `make browser` (run by `make test`) installs Debian's")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox will not start.
        launched = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


class Console:
    """Every console error and uncaught exception of a page, for a test to assert there were none."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def unexpected(self, *allowed_statuses: int) -> list[str]:
        def allowed(text: str) -> bool:
            match = _FAILED_LOAD.search(text)
            return match is not None and int(match[1]) in allowed_statuses

        return [e for e in self.errors if not allowed(e)]


def shoot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
