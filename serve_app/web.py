"""The web page: `/` (one HTML page) and `/static/...` (its scripts, styles and vendored three.js).

The page is a small JS app without a build step. It only calls the documented HTTP API, so these routes serve
files and nothing else; they need no token (the files hold no job data), and the page asks for the token when
the API answers 401.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"
# The page itself is never cached, so a redeploy's page always loads; static files revalidate by ETag.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@lru_cache(maxsize=1)
def _page() -> str:
    return (WEB_DIR / "index.html").read_text(encoding="utf-8")


async def index(request: Request) -> Response:
    """The page, with a <base> naming the app's root: every URL in it is relative, so it also works behind a
    route prefix (`/prefix` and `/prefix/` alike)."""
    root = request.scope.get("root_path", "").rstrip("/")
    base = f'<base href="{html.escape(root, quote=True)}/">'
    return HTMLResponse(_page().replace("<head>", f"<head>\n  {base}", 1), headers=PAGE_HEADERS)


def web_routes() -> list[BaseRoute]:
    """`/` and `/static` for the app's route table."""
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=WEB_DIR / "static"), name="static"),
    ]
