"""Per-frame preview images of a job: stored in its folder after preprocessing, served by
`GET /reconstruct/frames/{job_id}/{n}` (n = position in the status document's `frames.report`).

Only the ingress touches the job folder; files are written through the one atomic-write helper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.atomic import write_atomic  # the project's one atomic-write helper

FOLDER = "frames"


def frame_image_path(job_dir: Path, position: int) -> Path:
    """Where the JPEG preview of the `position`-th report entry lives (it may not exist)."""
    return Path(job_dir) / FOLDER / f"{position:04d}.jpg"


def save_frame_images(job_dir: Path, images: Sequence[bytes | None] | None) -> int:
    """Store one JPEG per report entry (None entries are skipped); returns how many were written."""
    written = 0
    for position, data in enumerate(images or ()):
        if data:
            path = frame_image_path(job_dir, position)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, bytes(data))
            written += 1
    return written
