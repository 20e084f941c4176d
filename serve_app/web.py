"""The web page: `/` (one HTML page) and `/static/...` (its scripts, styles and vendored three.js).

The page is a small JS app without a build step. It only calls the documented HTTP API, so these routes serve
files and nothing else; they need no token (the files hold no job data), and the page asks for the token when
the API answers 401.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"
# The page itself is never cached, so a redeploy's page always loads; static files revalidate by ETag.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def index(request: Request) -> Response:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def web_routes() -> list[BaseRoute]:
    """`/` and `/static` for the app's route table."""
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=WEB_DIR / "static"), name="static"),
    ]
