"""`/openapi.json` stays in step with the routes: every Starlette route is documented, and nothing else."""

from __future__ import annotations

from serve_app.ingress import build_app
from serve_app.openapi import OPERATIONS, route_methods


def test_every_route_is_documented_and_every_documented_operation_has_a_route(settings):
    app = build_app(settings, workers=None)  # routes only; the lifespan (and so the workers) never runs
    served = route_methods(app.routes)
    assert served == set(OPERATIONS), {
        "undocumented": served - set(OPERATIONS),
        "no route": set(OPERATIONS) - served,
    }


def test_openapi_json_is_served_and_every_error_response_is_the_envelope(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["schemas"]["Error"]["required"] == ["error"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert (
                "200" in operation["responses"]
                or "202" in operation["responses"]
                or "101" in operation["responses"]
            ), (path, method)
