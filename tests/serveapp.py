"""Deploy the service into the test session's Ray the way `serve deploy serve_config.yaml` does (import path,
typed args, per-deployment overrides), so that user_config changes apply live as they do for users."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def deploy_app(
    name: str,
    args: Mapping[str, Any],
    *,
    deployments: Sequence[Mapping[str, Any]] = (),
    route_prefix: str = "/",
    env: Mapping[str, str] | None = None,
    wait_s: float | None = 300.0,
) -> str:
    """Deploy `serve_app:app` as application `name`; with `wait_s`, wait until it runs (failing the test if
    it cannot). Returns the base URL (proxy address + route prefix, no trailing slash)."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": name,
                    "route_prefix": route_prefix,
                    "import_path": "serve_app:app",
                    "runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT), **(env or {})}},
                    "args": dict(args),
                    "deployments": [dict(d) for d in deployments],
                }
            ]
        }
    )
    client = _get_global_client()
    client.deploy_apps(config)
    if wait_s is not None:
        deadline = time.monotonic() + wait_s
        while (status := serve.status().applications.get(name)) is None or status.status != "RUNNING":
            assert status is None or status.status not in ("DEPLOY_FAILED", "UNHEALTHY"), status
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    return f"http://127.0.0.1:{client.http_config.port}{route_prefix.rstrip('/')}"
