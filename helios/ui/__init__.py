"""The web UI's static files (``static/``), loaded once into memory and served by ``helios.api.ui``.

Layout of ``static/``::

    index.html        the one page; every UI path answers it. ``__TAG__`` in it becomes the asset tag
    favicon.svg
    css/app.css
    js/main.js        boot; js/router.js says how a page module is written and registered
    js/…              ES modules, loaded by the browser as they are (no bundler, no Node)
    vendor/uplot/     uPlot, vendored unchanged at a pinned version (VERSION, LICENSE)

Assets are served under ``/ui/<tag>/<path>`` where the tag is a digest of
every file: an asset's URL changes whenever any file changes, so assets are
cached for a year (``immutable``) and a new release is never mixed with an
old one. The files are read once, at the first request; only names found
under ``static/`` are ever served (no path from a request touches the disk).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONTENT_TYPES", "STATIC_DIR", "Asset", "Assets", "load"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_FILES = 500  # a bound on what is loaded: the UI has a few dozen files
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
TEXT_PLAIN = "text/plain; charset=utf-8"  # LICENSE, VERSION and other files without a known suffix
TAG_MARK = b"__TAG__"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Assets:
    tag: str  # 12 hex digits of a digest over every file's name and bytes
    index: bytes  # index.html with the tag in its asset URLs
    files: dict[str, Asset]  # by path relative to static/, with "/" separators

    def get(self, name: str) -> Asset | None:
        return self.files.get(name)


def load(root: Path = STATIC_DIR) -> Assets:
    """Read every file under ``root`` (at most ``MAX_FILES``); the tag is their combined digest."""
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    if not paths or len(paths) > MAX_FILES:
        raise RuntimeError(f"the web UI's files are missing or too many under {root} ({len(paths)} files)")
    digest = hashlib.sha256()
    files: dict[str, Asset] = {}
    for path in paths:
        name = path.relative_to(root).as_posix()
        body = path.read_bytes()
        digest.update(name.encode() + b"\0" + len(body).to_bytes(8, "big") + body)
        files[name] = Asset(body, CONTENT_TYPES.get(path.suffix, TEXT_PLAIN))
    if "index.html" not in files:
        raise RuntimeError(f"the web UI has no index.html under {root}")
    tag = digest.hexdigest()[:12]
    return Assets(tag=tag, index=files["index.html"].body.replace(TAG_MARK, tag.encode()), files=files)
