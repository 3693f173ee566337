"""Browser tests of the web UI: Playwright driving Debian's chromium against real `helios serve` nodes.

Nothing is downloaded at test time: the browser is /usr/bin/chromium (``HELIOS_CHROMIUM``
overrides), installed with apt (``.ci/run`` does it in CI). Without it, outside CI, the UI
tests are one skipped line naming the fix; in CI (``CI=true``) a missing browser fails.

Every page a test opens records its page errors (uncaught exceptions) and console errors;
``Browse.check()`` fails the test on any page error and on console errors other than the
browser's own note about a failed request (an expected 4xx), and ``strict=True`` fails on
those too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("HELIOS_CHROMIUM") or "/usr/bin/chromium")
FIX = "apt-get install chromium"
# Screenshots for the README go to docs/screenshots when HELIOS_UI_SCREENSHOTS=1 (a normal run
# writes them under the test's tmp dir, so `make test` leaves the checkout unchanged).
SCREENSHOTS = REPO / "docs" / "screenshots"
WIDTH, HEIGHT = 1280, 860
FAILED_REQUEST = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


def browser_or_skip() -> Any:
    """The sync Playwright module, or one loud skip (fail in CI) when the browser or package is missing."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"no browser at {CHROMIUM}: the web UI tests need Debian's chromium ({FIX})"
    try:
        from playwright import sync_api
    except ImportError:
        problem = "the playwright package is missing: make install (it is a dev dependency)"
        sync_api = None
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the web UI tests: {problem}", pytrace=False)
        pytest.skip(f"SKIPPED THE WEB UI TESTS: {problem}", allow_module_level=True)
    return sync_api


@dataclass
class Browse:
    """One browser page with its recorded errors."""

    page: Any
    base: str
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page

    def check(self, *, strict: bool = False) -> None:
        assert not self.page_errors, f"errors in the page: {self.page_errors}"
        console = [m for m in self.console_errors if strict or not FAILED_REQUEST.match(m)]
        assert not console, f"console errors: {console}"


def open_page(browser: Any, base: str, *, width: int = WIDTH, height: int = HEIGHT) -> Iterator[Browse]:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(20_000)
    page = context.new_page()
    browse = Browse(page, base)
    page.on("pageerror", lambda error: browse.page_errors.append(str(error)))
    page.on("console", lambda message: browse.console_errors.append(message.text)
            if message.type == "error" else None)
    try:
        yield browse
    finally:
        context.close()


def login(browse: Browse, username: str, password: str, path: str = "/") -> Any:
    """Log in through the login page, then open ``path``."""
    page = browse.page
    browse.goto("/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()
    if path != "/":
        browse.goto(path)
    return page


def screenshot(page: Any, name: str, tmp_path: Path) -> Path:
    """A 1280-px-wide screenshot: docs/screenshots/<name>.png with HELIOS_UI_SCREENSHOTS=1, else tmp."""
    folder = SCREENSHOTS if os.environ.get("HELIOS_UI_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 10_000  # a drawn page, not a blank one
    return path
