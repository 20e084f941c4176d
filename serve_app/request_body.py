"""Strict JSON request bodies, parsed once for every route that takes JSON (submit, compare)."""

from __future__ import annotations

import json
from typing import Any

from serve_app import errors as se

MAX_JSON_CONTAINERS = 256  # arrays/objects in one body: a job request has one; keeps json.loads shallow


def parse_json_body(body: bytes) -> Any:
    """A JSON body, strictly: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting (400 otherwise)."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"key {key!r} appears twice")
            out[key] = value
        return out

    if body.count(b"[") + body.count(b"{") > MAX_JSON_CONTAINERS:
        raise se.MalformedJSON(f"JSON body has more than {MAX_JSON_CONTAINERS} arrays/objects")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise se.MalformedJSON("request body is not UTF-8") from None
    except RecursionError:
        raise se.MalformedJSON("JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError, as are the hooks' refusals
        raise se.MalformedJSON(f"request body is not valid JSON: {exc}") from None
