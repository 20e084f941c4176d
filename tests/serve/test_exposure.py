"""Secure by default: an exposed bind needs a token (or an explicit allow_anonymous); proxy header guard."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.exposure import ProxyHeaderGuard, check_exposure, is_loopback
from serve_app.settings import Settings, SettingsError


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_binds_need_no_token(host):
    assert is_loopback(host)
    check_exposure(host, Settings())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org"])
def test_exposed_bind_without_token_refuses_to_start(host):
    with pytest.raises(SettingsError, match="api_token"):
        check_exposure(host, Settings())


def test_exposed_bind_starts_with_a_token_or_explicit_allow_anonymous():
    check_exposure("0.0.0.0", Settings(api_token="s3cret"))
    check_exposure("0.0.0.0", Settings().merged({"allow_anonymous": "true"}))


def test_cli_start_refuses_an_exposed_bind_without_token_before_starting_ray(capsys, tmp_path, monkeypatch):
    from serve_app.cli import main

    monkeypatch.delenv("TRIPOSR_SERVE_API_TOKEN", raising=False)
    assert main(["start", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 1
    assert "refusing to serve on 0.0.0.0 without api_token" in capsys.readouterr().err


def test_proxy_guard_drops_headers_that_would_disable_the_request_timeout():
    seen = {}

    async def app(scope, receive, send):
        seen["headers"] = scope["headers"]

    scope = {
        "type": "http",
        "headers": [
            (b"x-request-timeout-seconds", b"0"),
            (b"X-Request-Disconnect-Disabled", b"?1"),
            (b"a", b"b"),
        ],
    }
    asyncio.run(ProxyHeaderGuard(app)(scope, None, None))
    assert seen["headers"] == [(b"a", b"b")]
