"""The one way files are written: a fresh temp name in the destination folder, fsync, rename.

`write_atomic(path, data)` and `copy_atomic(src, dest)` never leave a partial file at `path`, and never follow
a symbolic link: the temp file is created with O_CREAT | O_EXCL | O_NOFOLLOW under a random name (a planted
`X.part` link cannot redirect the write), the folder is opened with O_NOFOLLOW | O_DIRECTORY and every step
is relative to it, and the final rename replaces a link at `path` instead of writing through it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
COPY_CHUNK = 1024 * 1024


def write_with(path: Path, fill: Callable[[BinaryIO], None], *, mode: int = 0o644) -> Path:
    """Create `path` atomically from what `fill(f)` writes into a binary file object; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, _DIR_FLAGS)
    tmp = f".{path.name[:64]}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, _FILE_FLAGS, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink_quietly(tmp, dir_fd)
            raise
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return path


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Replace `path` with `data` (str is written as UTF-8) atomically; no link is followed."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return write_with(path, lambda f: f.write(raw), mode=mode)


def copy_atomic(src: Path, dest: Path, *, mode: int = 0o644) -> Path:
    """Copy `src` to `dest` atomically, in chunks (bounded memory); no link at `dest` is followed."""

    def fill(out: BinaryIO) -> None:
        with Path(src).open("rb") as f:
            while chunk := f.read(COPY_CHUNK):
                out.write(chunk)

    return write_with(dest, fill, mode=mode)


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
