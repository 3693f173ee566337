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

from support import Record, Server

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("HELIOS_CHROMIUM") or "/usr/bin/chromium")
FIX = "apt-get install chromium"
# Screenshots for the README go to docs/screenshots when HELIOS_UI_SCREENSHOTS=1 (a normal run
# writes them under the test's tmp dir, so `make test` leaves the checkout unchanged).
SCREENSHOTS = REPO / "docs" / "screenshots"
WIDTH, HEIGHT = 1280, 860
WORD = re.compile(r"\w+")
# The Loghub records lie between 2023-11-14 22:13 and 2023-11-17 05:46 UTC (tests/support.py).
RANGE = "from=2023-11-14T00:00:00Z&to=2023-11-18T00:00:00Z"
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with browser_or_skip().sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


def _tab(browser: Any, node: Server, **size: int) -> Iterator[Browse]:
    pages = open_page(browser, node.url, **size)
    page = next(pages)
    try:
        yield page
        page.check()
    finally:
        pages.close()


@pytest.fixture
def browse(browser: Any, node: Server) -> Iterator[Browse]:
    """A fresh tab 1280 px wide; the test fails on a page error or an unexpected console error."""
    yield from _tab(browser, node)


@pytest.fixture
def phone(browser: Any, node: Server) -> Iterator[Browse]:
    """A fresh tab 390 px wide (a phone)."""
    yield from _tab(browser, node, width=390, height=800)


def make_user(node: Server, username: str, role: str, password: str = "password-123") -> str:
    reply = node.request("POST", "/api/v1/users", json={"username": username, "password": password, "role": role})
    assert reply.status_code in (201, 409), reply.text
    return password


def unique_line(records: list[Record]) -> tuple[Record, str]:
    """An OpenSSH record and a word of its message that no other record has."""
    counts: dict[str, int] = {}
    for record in records:
        for word in set(WORD.findall(record.msg.lower())):
            counts[word] = counts.get(word, 0) + 1
    for record in records:
        if record.service == "openssh" and "Failed password" in record.msg:
            words = [w for w in WORD.findall(record.msg) if counts[w.lower()] == 1]
            if words:
                return record, words[0]
    raise AssertionError("no OpenSSH line with a unique word")


OVERVIEW = {"title": "Loghub overview", "description": "Ten Loghub services, 20,000 lines", "panels": [
    {"title": "Rows by level", "type": "timechart", "query": "* | timechart 3h count() as rows by (level)",
     "dataset": "loghub"},
    {"title": "Errors", "type": "stat", "query": "level:ERROR", "dataset": "loghub"},
    {"title": "Rows per service", "type": "bar", "query": "* | stats count() as rows by (service)",
     "dataset": "loghub"},
    {"title": "Top hosts", "type": "table", "query": "* | top 5 host", "dataset": "loghub"},
    {"title": "Latest errors", "type": "logs", "query": "level:ERROR", "dataset": "loghub"},
]}


def overview(node: Server) -> str:
    reply = node.request("POST", "/api/v1/dashboards", json=OVERVIEW)
    assert reply.status_code == 201, reply.text
    return reply.json()["id"]
