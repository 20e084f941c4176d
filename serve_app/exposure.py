"""Secure by default: who may reach the service, checked once before it starts.

`check_exposure(host, settings)` is called by `triposr-serve start` and by the Serve app builder: a service
bound to an address other than loopback must have `api_token`, unless `allow_anonymous: true` says the
operator wants an open service (e.g. a private network with its own gate). The Serve proxy headers that
would let a client change its own request timeout are stripped by `ProxyHeaderGuard`, installed in the
proxy through Ray's `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` hook (`proxy_middlewares`).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from serve_app.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

# Ray Serve 2.60's proxy reads these before the request reaches the app: a non-positive
# `x-request-timeout-seconds` disables `request_timeout_s` for that request, `x-request-disconnect-disabled`
# keeps a request running after its client left (ray/serve/_private/http_util.py).
STRIPPED_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serve_app.exposure:proxy_middlewares"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; every other address (0.0.0.0 included) is exposed."""
    if host.strip().lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it resolves to something reachable from outside


def check_exposure(host: str, settings: Settings) -> None:
    """Refuse (SettingsError) a non-loopback bind without `api_token` unless `allow_anonymous` is set."""
    if is_loopback(host) or settings.api_token:
        return
    if settings.allow_anonymous:
        logger.warning("serving on %s without a token (allow_anonymous): every client has full access", host)
        return
    raise SettingsError(
        f"refusing to serve on {host} without api_token: anyone who can reach it could list, download and "
        "cancel every job. Set TRIPOSR_SERVE_API_TOKEN (or api_token in the app args), bind 127.0.0.1, or "
        "set allow_anonymous: true to accept an open service"
    )


def serve_http_host() -> str | None:
    """The address Serve's HTTP proxies bind, when a Serve controller is reachable from here; else None."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return None if client is None else str(client.http_config.host)
    except Exception:  # no controller yet, an older Ray: the CLI's own check still applies
        logger.debug("cannot read Serve's HTTP host", exc_info=True)
        return None


class ProxyHeaderGuard:
    """ASGI middleware for the Serve proxy: drop the headers that let a client change Serve's limits."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            headers = scope.get("headers") or []
            if any(name.lower() in STRIPPED_HEADERS for name, _ in headers):
                kept = [(n, v) for n, v in headers if n.lower() not in STRIPPED_HEADERS]
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list:
    """Ray's proxy callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): the middlewares it installs."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyHeaderGuard)]
