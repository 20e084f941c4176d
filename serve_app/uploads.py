"""Streaming multipart uploads to disk with a byte cap, and the safe-path rules for JSON sources.

The body is parsed in batches with python-multipart's push parser, in a worker thread (never on the event
loop), and every file part goes straight into the job's `input/` folder: an upload is never held whole in
memory, and the cap (`Settings.upload_limit_bytes`) is enforced on the bytes actually received (a lying or
absent Content-Length does not help). Text fields are small and kept in memory, each capped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from serve_app.errors import ForbiddenPath, InvalidInput, MalformedMultipart, PayloadTooLarge

logger = logging.getLogger(__name__)

FILE_FIELDS = ("video", "images", "archive", "file")  # `file`: a single upload of any supported kind
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
MAX_HEADER_BYTES = 8 * 1024  # one part header (Content-Disposition with its file name)
MAX_PATH_CHARS = 4096  # PATH_MAX: a longer server path cannot name a file
MAX_NAME_BYTES = 255  # NAME_MAX: a longer part cannot be created (ENAMETOOLONG)
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


# RFC 2046: 1-70 characters from this set (python-multipart itself raises on > 256, outside any handler).
_BOUNDARY = re.compile(rb"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
# Bytes handed to the parser per thread hop: parsing and file writes run off the event loop, in batches
# large enough that the hop costs little, small enough that a slow upload holds little memory while it
# drips (at most this much each: 200 concurrent uploads, 12.5 MB).
PARSE_BATCH_BYTES = 64 * 1024


async def receive_multipart(
    request: Request, dest: Path, *, limit_bytes: int, max_files: int,
    file_fields: tuple[str, ...] = FILE_FIELDS,
) -> Upload:  # fmt: skip
    """Parse a multipart/form-data body into `dest`; 400/413 service errors on malformed or oversize input.

    Files are accepted in `file_fields` only. The event loop only receives bytes: parsing, file creation and
    writes run in a worker thread, a batch of up to PARSE_BATCH_BYTES at a time, so a slow or huge upload
    never stalls other requests.
    """
    content_type = request.headers.get("content-type", "")
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedMultipart("multipart body without a boundary in Content-Type")
    if not _BOUNDARY.match(boundary):
        raise MalformedMultipart("multipart boundary must be 1-70 characters of the RFC 2046 set")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes + 64 * 1024:
        raise PayloadTooLarge(f"upload of {int(declared)} bytes exceeds the limit of {limit_bytes} bytes")

    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
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
        if len(state["hfield"]) > MAX_HEADER_BYTES:
            errors.append(MalformedMultipart(f"a part header is longer than {MAX_HEADER_BYTES} bytes"))

    def on_header_value(data: bytes, start: int, end: int) -> None:
        key = state["hfield"].lower()
        state["headers"][key] = state["headers"].get(key, b"") + data[start:end]
        if len(state["headers"][key]) > MAX_HEADER_BYTES:
            errors.append(MalformedMultipart(f"a part header is longer than {MAX_HEADER_BYTES} bytes"))

    def on_header_end() -> None:
        state["hfield"] = b""

    def on_headers_finished() -> None:
        if errors:
            return
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
            current["file"] = path.open("xb")  # fresh name in a fresh folder: never an existing file
            current["saved"] = saved
        elif len(upload.fields) >= MAX_FIELDS:
            errors.append(InvalidInput(f"too many form fields (at most {MAX_FIELDS})"))
        elif state["name"] in upload.fields:
            errors.append(InvalidInput(f"form field {state['name']!r} is given twice"))

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

    def feed(data: bytes | None) -> None:
        """Runs in a worker thread: parse one batch (None: the body ended), raising the first error."""
        try:
            if data is None:
                parser.finalize()
            else:
                parser.write(data)
        except FormParserError as exc:  # MultipartParseError and its kin: the body is malformed
            raise MalformedMultipart(f"malformed multipart body: {exc}") from None
        if errors:
            raise errors[0]

    def close_open_file() -> None:
        out = current["file"]
        if out is not None:
            out.close()  # type: ignore[union-attr]

    callbacks = {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_end": on_end,
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)
    except FormParserError as exc:
        raise MalformedMultipart(f"malformed multipart boundary: {exc}") from None
    pending = bytearray()
    try:
        async for chunk in request.stream():
            upload.total_bytes += len(chunk)
            if upload.total_bytes > limit_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit_bytes} bytes")
            pending += chunk
            if len(pending) >= PARSE_BATCH_BYTES:
                data, pending = bytes(pending), bytearray()
                await asyncio.to_thread(feed, data)
        if pending:
            await asyncio.to_thread(feed, bytes(pending))
        await asyncio.to_thread(feed, None)
    finally:
        await asyncio.to_thread(close_open_file)
    if not ended["value"]:
        raise MalformedMultipart("malformed multipart body: it ends before the closing boundary")
    return upload


def sweep_orphan_uploads(jobs_dir: Path, is_job: Callable[[str], bool], older_than_s: float) -> list[str]:
    """Remove job folders with no job row, untouched for `older_than_s` (an upload killed mid-way, a crash
    between receiving and creating the row); returns the removed names. Rows' own folders are left alone."""
    removed: list[str] = []
    if not jobs_dir.is_dir():
        return removed
    cutoff = time.time() - older_than_s
    for entry in jobs_dir.iterdir():
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_mtime > cutoff:
                continue
        except OSError:
            continue
        if not is_job(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        logger.info("swept %d orphaned upload folder(s): %s", len(removed), ", ".join(removed[:10]))
    return removed


def _has_dotdot(raw: str) -> bool:
    """`..` as a path part, also spelled percent-encoded or with Unicode look-alikes (NFKC folds them)."""
    for form in (raw, unquote(raw), unicodedata.normalize("NFKC", unquote(raw))):
        if any(part == ".." for part in Path(form.replace("\\", "/")).parts):
            return True
    return False


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
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidInput(f"{what} is longer than {MAX_PATH_CHARS} characters")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in Path(raw).parts):
        raise InvalidInput(f"{what} has a path part longer than {MAX_NAME_BYTES} bytes")
    candidate = Path(raw)  # no expanduser: `~name` is a client's string, not a home folder to look up
    try:
        resolved = candidate.resolve() if candidate.is_absolute() else (roots[0] / candidate).resolve()
        for root in roots:
            real_root = Path(root).resolve()
            if resolved == real_root or real_root in resolved.parents:
                break
        else:
            raise ForbiddenPath(f"{what} {raw!r} is outside the allowed roots")
        if must_exist and not resolved.exists():
            raise InvalidInput(f"{what} {raw!r} does not exist")
    except OSError as exc:  # ENAMETOOLONG for a 256-character part, ELOOP, EACCES ...
        raise InvalidInput(f"{what} {raw!r} cannot be used: {exc.strerror or type(exc).__name__}") from None
    return resolved
