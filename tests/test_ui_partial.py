"""The web UI when the node's answer is partial: Playwright on Debian's chromium, two real nodes, a store that goes away."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from support import ADMIN_PASSWORD, Record, ndjson, wait_until
from ui_support import RANGE, browser, browser_or_skip, login, open_page  # noqa: F401

expect = browser_or_skip().expect


def test_a_partial_answer_is_a_visible_warning(browser: Any, server_factory: Any, records: list[Record],
                                              tmp_path: Path) -> None:
    """Node C reads A's blocks from a shared store that goes away: C answers with what it has, and says so."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in ("control.key", "jwt.secret"):
        (secrets_dir / name).write_bytes(secrets.token_bytes(32))
        (secrets_dir / name).chmod(0o600)
    store = tmp_path / "shared"
    env = {"HELIOS_SHARED_STORE": str(store), "HELIOS_BLOCK_SYNC_SECS": "2",
           "HELIOS_CONTROL_KEY_PATH": str(secrets_dir / "control.key"),
           "HELIOS_JWT_SECRET_PATH": str(secrets_dir / "jwt.secret")}
    a = server_factory("a", **env, HELIOS_MEMTABLE_ROWS="500")
    for start in range(0, 2000, 500):
        assert a.ingest(ndjson(records[start : start + 500]), dataset="far").status_code == 200
    wait_until(lambda: a.request("GET", "/api/v1/cluster").json()["sync"]["pending_uploads"] == 0,
               what="A's blocks in the store")
    c = server_factory("c", **env, HELIOS_FETCH_DEADLINE_SECS="2")
    wait_until(lambda: c.datasets().get("far", {}).get("rows") == 2000, what="C to know A's blocks")
    hidden = store.with_name("shared-hidden")
    store.rename(hidden)  # every store operation now fails
    store.write_bytes(b"not a directory")
    pages = open_page(browser, c.url)
    browse = next(pages)
    try:
        page = login(browse, "admin", ADMIN_PASSWORD, f"/?{RANGE}&dataset=far")
        warning = page.get_by_role("alert").filter(has_text="Partial result")
        expect(warning).to_contain_text(re.compile(r"[1-9]\d* blocks could not be read"), timeout=60_000)
        browse.check()
    finally:
        pages.close()
        store.unlink()
        hidden.rename(store)
