"""A real headless Chromium for the dashboard's tests, driven by Playwright.

The browser is the system's (Debian's `chromium`, found on PATH): Playwright's own
browser download is never used. Without it (or without Playwright), the tests that
need it skip, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("AREION_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"
"""Where the tests leave their screenshots for a reviewer."""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The browser's path; skips (fails under CI=true) when it or Playwright is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    else:
        found = _chromium()
        if found:
            return found
        reason = "no chromium on PATH (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser tests")
    pytest.skip(reason)


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium (a Playwright `Browser`)."""
    path = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=path, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as `ARTIFACTS/<name>.png`."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
