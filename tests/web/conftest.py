"""Browser fixtures: the real service on the session's Ray cluster, Debian's chromium driven by Playwright.

One service for the module, deployed under a route prefix (so the page's relative URLs are tested too) with a
bearer token (so every page works through the token path: SSE over fetch, downloads, thumbnails). Chromium
draws WebGL with SwiftShader (software), so the 3D view renders on machines without a GPU.

Screenshots go to `$TRIPOSR_WEB_SCREENSHOTS` when set, else to a pytest temp folder; the path is printed.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from serve_app.settings import Settings

CHROMIUM = Path(os.environ.get("TRIPOSR_WEB_CHROMIUM", "/usr/bin/chromium"))
APP = "triposr-web"
PREFIX = "/triposr"
TOKEN = "web-test-token"
# Software WebGL: headless chromium has no GPU here; SwiftShader through ANGLE draws WebGL 2.
CHROMIUM_ARGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--no-sandbox",  # CI runs as root
]
# A failed request a test provoked on purpose is logged by chromium as a console error; nothing else may be.
RESOURCE_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")


def pytest_collection_modifyitems(items):
    reason = None
    if not CHROMIUM.is_file():
        reason = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[test]')"
    if reason:
        for item in items:
            if "tests/web/" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    wanted = os.environ.get("TRIPOSR_WEB_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory, tiny_model_dir, rembg_dir):
    """(base URL of the page, httpx client with the token, settings) of a freshly deployed app."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from serve_app.application import build

    base = tmp_path_factory.mktemp("web")
    settings = Settings().merged(
        {
            "data_dir": str(base / "data"),
            "model_source": str(tiny_model_dir),
            "model_device": "cpu",
            "rembg_model": "u2netp",
            "rembg_dir": str(rembg_dir),
            "upload_limit_bytes": 5_000_000,
            "api_token": TOKEN,
            "default_mc_resolution": 32,
            "default_num_frames": 4,
        }
    )
    serve.run(build(settings), name=APP, route_prefix=PREFIX)
    url = f"http://127.0.0.1:{_get_global_client().http_config.port}{PREFIX}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service not ready"
            time.sleep(0.5)
        yield url, client, settings
    serve.delete(APP)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Console:
    """Console errors and uncaught page errors of one page; `check(allowed_statuses)` fails on any other."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))

    def _console(self, message) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def check(self, allowed_statuses: set[int] = frozenset()) -> None:
        unexpected = []
        for text in self.errors:
            m = RESOURCE_ERROR.match(text.removeprefix("error: "))
            if not (m and int(m.group(1)) in allowed_statuses):
                unexpected.append(text)
        assert not unexpected, unexpected


@pytest.fixture
def page(browser, service):
    """A fresh tab at 1280x800 with the token already in its sessionStorage (as after the dialog)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(f"sessionStorage.setItem('triposr-serve.token', {TOKEN!r})")
    tab = context.new_page()
    tab.console_log = Console(tab)
    yield tab
    context.close()


@pytest.fixture
def bare_page(browser, service):
    """A fresh tab without a token."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.console_log = Console(tab)
    yield tab
    context.close()
