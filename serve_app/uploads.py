"""Streaming multipart uploads to disk with a byte cap, and the safe-path rules for JSON sources.

The body is parsed chunk by chunk with python-multipart's push parser and every file part goes straight into
the job's `input/` folder: an upload is never held whole in memory, and the cap
(`Settings.upload_limit_bytes`) is enforced on the bytes actually received (a lying or absent Content-Length
does not help). Text fields are small and kept in memory, each capped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from serve_app.errors import ForbiddenPath, InvalidInput, MalformedMultipart, PayloadTooLarge

logger = logging.getLogger(__name__)

FILE_FIELDS = ("video", "images", "archive", "file")  # `file`: a single upload of any supported kind
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class SavedFile:
    field: str
    filename: str
    path: Path
    size: int = 0


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[SavedFile] = field(default_factory=list)
    total_bytes: int = 0


def safe_filename(name: str, index: int) -> str:
    """A file name that cannot escape its folder: basename only, odd characters replaced, index prefix."""
    base = Path(name.replace("\\", "/")).name
    base = _SAFE_NAME.sub("_", base).lstrip(".")[:80] or "upload"
    return f"{index:03d}_{base}"


async def receive_multipart(
    request: Request, dest: Path, *, limit_bytes: int, max_files: int,
    file_fields: tuple[str, ...] = FILE_FIELDS,
) -> Upload:  # fmt: skip
    """Parse a multipart/form-data body into `dest`; 400/413 service errors on malformed or oversize input.
    Files are accepted in `file_fields` only."""
    content_type = request.headers.get("content-type", "")
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedMultipart("multipart body without a boundary in Content-Type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes + 64 * 1024:
        raise PayloadTooLarge(f"upload of {int(declared)} bytes exceeds the limit of {limit_bytes} bytes")

    dest.mkdir(parents=True, exist_ok=True)
    upload = Upload()
    state: dict = {
        "headers": {},
        "name": None,
        "filename": None,
        "out": None,
        "buf": bytearray(),
        "hfield": b"",
    }
    current: dict[str, BinaryIO | SavedFile | None] = {"file": None, "saved": None}
    ended = {"value": False}
    errors: list[Exception] = []

    def on_part_begin() -> None:
        state["headers"], state["name"], state["filename"] = {}, None, None
        state["buf"] = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hfield"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["hfield"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]

    def on_header_end() -> None:
        state["hfield"] = b""

    def on_headers_finished() -> None:
        disposition = state["headers"].get(b"content-disposition", b"")
        _, opts = parse_options_header(disposition)
        name = opts.get(b"name")
        if name is None:
            errors.append(MalformedMultipart("a multipart part has no name in Content-Disposition"))
            return
        state["name"] = name.decode("utf-8", "replace")
        filename = opts.get(b"filename")
        if filename is not None:
            if state["name"] not in file_fields:
                errors.append(InvalidInput(
                    f"unexpected file field {state['name']!r}; "
                    f"send the input as one of {', '.join(file_fields)}"
                ))  # fmt: skip
                return
            if len(upload.files) >= max_files:
                errors.append(InvalidInput(f"too many files (at most {max_files})"))
                return
            fname = filename.decode("utf-8", "replace")
            path = dest / safe_filename(fname, len(upload.files))
            saved = SavedFile(state["name"], fname, path)
            upload.files.append(saved)
            current["file"] = path.open("wb")
            current["saved"] = saved
        elif len(upload.fields) >= MAX_FIELDS:
            errors.append(InvalidInput(f"too many form fields (at most {MAX_FIELDS})"))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if errors:
            return
        chunk = data[start:end]
        out, saved = current["file"], current["saved"]
        if out is not None and isinstance(saved, SavedFile):
            out.write(chunk)  # type: ignore[union-attr]
            saved.size += len(chunk)
        elif state["name"] is not None:
            state["buf"] += chunk
            if len(state["buf"]) > MAX_FIELD_BYTES:
                errors.append(
                    InvalidInput(f"form field {state['name']!r} is longer than {MAX_FIELD_BYTES} bytes")
                )

    def on_part_end() -> None:
        out = current["file"]
        if out is not None:
            out.close()  # type: ignore[union-attr]
            current["file"], current["saved"] = None, None
        elif state["name"] is not None and not errors:
            upload.fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    def on_end() -> None:
        ended["value"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_end": on_end,
        },
    )  # fmt: skip
    try:
        async for chunk in request.stream():
            upload.total_bytes += len(chunk)
            if upload.total_bytes > limit_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit_bytes} bytes")
            parser.write(chunk)
            if errors:
                raise errors[0]
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedMultipart(f"malformed multipart body: {exc}") from None
    finally:
        out = current["file"]
        if out is not None:
            out.close()  # type: ignore[union-attr]
    if errors:
        raise errors[0]
    if not ended["value"]:
        raise MalformedMultipart("malformed multipart body: it ends before the closing boundary")
    return upload


def _has_dotdot(raw: str) -> bool:
    return any(part == ".." for part in Path(raw.replace("\\", "/")).parts)


def resolve_under(raw: str, roots: tuple[Path, ...], *, what: str, must_exist: bool) -> Path:
    """Resolve a client-given server path and require it to lie under one of `roots` (symlinks followed)."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput(f"{what} must be a non-empty path string")
    if "\x00" in raw:
        raise InvalidInput(f"{what} contains a NUL byte")
    if _has_dotdot(raw):
        raise ForbiddenPath(f"{what} {raw!r} may not contain '..'")
    if not roots:
        raise ForbiddenPath(f"{what} is disabled: the service has no allowed roots configured for it")
    candidate = Path(raw).expanduser()
    resolved = candidate.resolve() if candidate.is_absolute() else (roots[0] / candidate).resolve()
    for root in roots:
        real_root = Path(root).resolve()
        if resolved == real_root or real_root in resolved.parents:
            break
    else:
        allowed = ", ".join(str(r) for r in roots)
        raise ForbiddenPath(f"{what} {raw!r} is outside the allowed roots ({allowed})")
    if must_exist and not resolved.exists():
        raise InvalidInput(f"{what} {raw!r} does not exist")
    return resolved
