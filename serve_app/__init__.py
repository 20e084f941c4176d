"""The Serve application: app builder, Starlette ingress, job store, settings, CLI, batch entry point.

`serve run serve_app:app` resolves `app` lazily (module `__getattr__`), so importing `serve_app.settings` or
the job store does not import Ray Serve.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from serve_app.application import app

        return app
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")
