"""The OpenAPI 3 document of the HTTP API, served at `/openapi.json`.

One table, `OPERATIONS`, describes every route: (path, method) -> operation. `tests/serve/test_openapi.py`
fails when a Starlette route is missing here or an entry has no route, so a new route (`POST /compare`, the
web page at `/`) is added in two places side by side: `build_app`'s route list and this table. Every error is
the one envelope (`Error`), listed as each operation's `default` response.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

VERSION = "0.1.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
}
# One Server-Sent Event as parsed from the stream (`id:`, `event:`, `data:` lines; data is the event JSON).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string"},  # state, progress, cancel; more kinds may come
        "data": {"type": "string"},
    },
}
ERROR = _json(_ref("Error"), "an error: {error: {code, message}}")
AUTH_NOTE = "Needs `Authorization: Bearer <token>` when the service has an api_token."

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "JobParams": {
        "type": "object",
        "properties": {
            "num_frames": {"type": "integer", "minimum": 1, "maximum": 32},
            "mc_resolution": {"type": "integer", "minimum": 32, "maximum": 512},
            "foreground_ratio": {"type": "number", "minimum": 0.5, "maximum": 1.0},
            "remove_background": {"type": "boolean"},
            "merge": {"type": "string", "enum": ["fused", "best", "all"]},
            "format": {"type": "string", "enum": ["glb", "obj", "ply"]},
            "object_size_m": {"type": ["number", "null"], "minimum": 0.001, "maximum": 100},
            "target_faces": {"type": ["integer", "null"], "minimum": 100, "maximum": 10_000_000},
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["job_id", "state", "status_url", "result_url", "events_url", "ws_url"],
        "properties": {
            "job_id": {"type": "string"},
            "state": {"type": "string"},
            "status_url": {"type": "string"},
            "result_url": {"type": "string"},
            "events_url": {"type": "string"},
            "ws_url": {"type": "string"},
        },
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "state", "stage", "progress"],
        "properties": {
            "job_id": {"type": "string"},
            "state": {
                "type": "string",
                "enum": [
                    "queued",
                    "preprocessing",
                    "reconstructing",
                    "merging",
                    "succeeded",
                    "failed",
                    "cancelled",
                ],
            },
            "stage": {"type": "string"},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "params": {"type": "object"},
            "frames": {"type": "object"},
            "timings": {"type": "object"},
            "report": {"type": "object"},
            "error": {"type": ["object", "null"]},
            "result_url": {"type": ["string", "null"]},
        },
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "total", "limit", "offset", "next_offset"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("Job")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]},
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["job_id", "state", "cancel_requested"],
        "properties": {
            "job_id": {"type": "string"},
            "state": {"type": "string"},
            "cancel_requested": {"type": "boolean"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Ready": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
            "running_here": {"type": "integer"},
        },
    },
}

_SUBMIT_FORM = {
    "type": "object",
    "properties": {
        "video": {"type": "string", "format": "binary"},
        "archive": {"type": "string", "format": "binary"},
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "file": {"type": "string", "format": "binary"},
        **SCHEMAS["JobParams"]["properties"],
        "output_glb_path": {"type": "string"},
    },
}
_SUBMIT_JSON = {
    "type": "object",
    "properties": {
        "source": {"type": "string"},
        "preprocessing_output_dir": {"type": "string"},
        "output_glb_path": {"type": "string"},
        **SCHEMAS["JobParams"]["properties"],
    },
}

_COMPARE_FIELDS = {
    "object_size_m": {"type": ["number", "null"]},
    "threshold_mm": {"type": "number"},
}
_COMPARE_JSON = {
    "type": "object",
    "required": ["reference", "candidate"],
    "properties": {"reference": {"type": "string"}, "candidate": {"type": "string"}, **_COMPARE_FIELDS},
}
_COMPARE_FORM = {
    "type": "object",
    "properties": {
        "reference": {"type": "string", "format": "binary"},
        "candidate": {"type": "string", "format": "binary"},
        **_COMPARE_FIELDS,
    },
}

# (path, method) -> operation. Paths use Starlette's `{name}` placeholders, so they compare with the routes.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/reconstruct", "post"): {
        "summary": "Submit a reconstruction job (upload, or a server path as JSON)",
        "description": AUTH_NOTE,
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _SUBMIT_FORM},
                "application/json": {"schema": _SUBMIT_JSON},
            },
        },
        "responses": {"202": _json(_ref("Accepted"), "job queued (or replayed)"), "default": ERROR},
    },
    ("/compare", "post"): {
        "summary": "Compare two meshes: two succeeded job ids (JSON) or two uploaded GLB/OBJ/PLY files",
        "description": AUTH_NOTE,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _COMPARE_JSON},
                "multipart/form-data": {"schema": _COMPARE_FORM},
            },
        },
        "responses": {"202": _json(_ref("Accepted"), "compare job queued"), "default": ERROR},
    },
    ("/reconstruct/status/{job_id}", "get"): {
        "summary": "A job's status document",
        "parameters": [JOB_ID],
        "responses": {"200": _json(_ref("Job"), "the job"), "default": ERROR},
    },
    ("/reconstruct/result/{job_id}", "get"): {
        "summary": "The result mesh of a succeeded job (compare jobs: `part=report|chart`)",
        "parameters": [
            JOB_ID,
            {"name": "part", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "the mesh",
                "content": {
                    "model/gltf-binary": {"schema": {"type": "string", "format": "binary"}},
                    "model/obj": {"schema": {"type": "string", "format": "binary"}},
                    "application/ply": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            },
            "default": ERROR,
        },
    },
    ("/reconstruct/events/{job_id}", "get"): {
        "summary": "Server-Sent Events until the job ends (Last-Event-ID resumes)",
        "parameters": [
            JOB_ID,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
            },
        ],
        "responses": {
            "200": {
                "description": "event stream",
                "content": {"text/event-stream": {"schema": SSE_EVENT}},
            },
            "default": ERROR,
        },
    },
    ("/reconstruct/ws/{job_id}", "get"): {
        "summary": "WebSocket: the same events as JSON messages (upgrade only; plain HTTP gets 404)",
        "parameters": [JOB_ID],
        "responses": {"101": {"description": "switching protocols"}, "default": ERROR},
    },
    ("/jobs", "get"): {
        "summary": "Jobs, newest first",
        "parameters": [
            {"name": "state", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "kind", "in": "query", "required": False, "schema": {"type": "string"}},
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 500},
            },
            {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
        ],
        "responses": {"200": _json(_ref("JobList"), "a page of jobs"), "default": ERROR},
    },
    ("/jobs/{job_id}", "get"): {
        "summary": "A job's status document (same as /reconstruct/status/{job_id})",
        "parameters": [JOB_ID],
        "responses": {"200": _json(_ref("Job"), "the job"), "default": ERROR},
    },
    ("/jobs/{job_id}", "delete"): {
        "summary": "Cancel a job",
        "parameters": [JOB_ID],
        "responses": {
            "200": _json(_ref("Cancelled"), "cancelled at once (it was queued)"),
            "202": _json(_ref("Cancelled"), "cancel requested (it is running)"),
            "default": ERROR,
        },
    },
    ("/healthz", "get"): {
        "summary": "Liveness",
        "security": [],
        "responses": {"200": _json(_ref("Health"), "alive")},
    },
    ("/readyz", "get"): {
        "summary": "Readiness; job counts only with a valid token",
        "security": [],
        "responses": {"200": _json(_ref("Ready"), "ready"), "default": ERROR},
    },
    ("/reconstruct/frames/{job_id}/{n}", "get"): {
        "summary": "JPEG preview of the n-th entry of the status's frames.report",
        "parameters": [JOB_ID, {"name": "n", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "preview", "content": {"image/jpeg": {"schema": {"type": "string"}}}},
            "default": ERROR,
        },
    },
    ("/params", "get"): {
        "summary": "Every job parameter: type, min/max, choices, this service's default, help",
        "responses": {"200": _json({"type": "object"}, "the parameters"), "default": ERROR},
    },
    ("/", "get"): {
        "summary": "The web page",
        "security": [],
        "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {}}}}},
    },
    ("/static/{path}", "get"): {
        "summary": "The web page's scripts, styles and vendored libraries",
        "security": [],
        "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "a static file"}, "default": {"description": "not found"}},
    },
    ("/openapi.json", "get"): {
        "summary": "This document",
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
    },
}


def route_methods(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(path, method) pairs the app serves (HEAD, added by Starlette to GET routes, left out)."""
    pairs: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):  # static files: one templated GET per mount
            pairs.add((f"{route.path}/{{path}}", "get"))
        elif isinstance(route, WebSocketRoute):
            pairs.add((route.path, "get"))
        elif isinstance(route, Route):
            pairs.update((route.path, m.lower()) for m in (route.methods or ()) if m != "HEAD")
    return pairs


def document(operations: dict[tuple[str, str], dict[str, Any]] = OPERATIONS) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), operation in sorted(operations.items()):
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "triposr-serve",
            "version": VERSION,
            "description": "TripoSR reconstruction service: video or photos in, one mesh out.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }


def openapi_route() -> Route:
    """`GET /openapi.json`; the document is built once, when the app is."""
    doc = document()

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(doc)

    return Route("/openapi.json", openapi, methods=["GET"])
