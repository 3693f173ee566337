"""The web UI on the node's own port: its pages answer ``index.html``, its files come from ``helios.ui``.

    /  /login  /dashboards[/<id>]  /monitors[/<id>]  /admin[/<section>]  /cluster
        → index.html (the browser's router draws the page), ``Cache-Control: no-cache``
    /ui/<tag>/<path>
        → a file of helios/ui/static; cached for a year when <tag> is the current one
          (the tag changes with any file), revalidated otherwise

No page needs a token: the pages are the same for everyone and hold no data;
the data comes from ``/api/…``, which checks the caller on every request.
Every answer here carries ``CSP`` (no inline script or style, nothing from
another origin, no framing, no plugins, no ``<base>``, and Trusted Types
required for the DOM's HTML sinks, so ``innerHTML`` with a string throws);
``helios.api.guard`` adds ``nosniff`` and the other headers. Other paths
keep the API's JSON 404.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, current_app

from helios import log
from helios.errors import NotFound, Unavailable
from helios.ui import Assets, load

__all__ = ["CSP", "PAGES", "bp"]

bp = Blueprint("ui", __name__)
_KEY = "helios.ui"
_log = log.get("helios.ui")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'; "
       "require-trusted-types-for 'script'; trusted-types 'none'")
YEAR_S = 365 * 86_400
PAGES = ("/", "/login", "/dashboards", "/dashboards/<item>", "/monitors", "/monitors/<item>", "/admin",
         "/admin/<item>", "/cluster")


@bp.before_app_serving
async def _load_assets() -> None:
    try:
        current_app.extensions[_KEY] = await trio.to_thread.run_sync(load)
    except (OSError, RuntimeError) as exc:  # a build without the UI's files still serves the API
        _log.error("the web UI's files could not be read; the UI answers 503", exc_info=exc)
        current_app.extensions[_KEY] = None


def _assets() -> Assets:
    assets = current_app.extensions.get(_KEY)
    if assets is None:
        raise Unavailable("the web UI's files are missing from this build; the API under /api/ works")
    return assets  # type: ignore[no-any-return]


def _answer(body: bytes, content_type: str, cache: str) -> Response:
    return Response(body, content_type=content_type,
                    headers={"Content-Security-Policy": CSP, "Cache-Control": cache})


async def page(item: str | None = None) -> Response:
    """Every UI path: the one page (``item``, the path's last part, is the browser's to read)."""
    return _answer(_assets().index, "text/html; charset=utf-8", "no-cache")


for _number, _rule in enumerate(PAGES):
    bp.add_url_rule(_rule, f"page_{_number}", page)


@bp.get("/ui/<tag>/<path:name>")
async def asset(tag: str, name: str) -> Response:
    assets = _assets()
    found = assets.get(name)
    if found is None:
        raise NotFound(f"the web UI has no file {name!r}")
    cache = f"public, max-age={YEAR_S}, immutable" if tag == assets.tag else "no-cache"
    return _answer(found.body, found.content_type, cache)
