"""Small JPEG previews of candidate frames, for the per-frame report a person reads (the web page).

Pure: a uint8 RGB array in, JPEG bytes out. The preprocess stage makes one per candidate frame while the
frame's pixels are still in memory; the ingress stores them in the job folder.
"""

from __future__ import annotations

import io

import numpy as np

THUMBNAIL_SIDE = 160  # long side in pixels: enough to see blur or a cut-off object, about 5 kB as JPEG
THUMBNAIL_QUALITY = 80


def jpeg_thumbnail(
    image: np.ndarray, *, max_side: int = THUMBNAIL_SIDE, quality: int = THUMBNAIL_QUALITY
) -> bytes:
    """JPEG bytes of `image` (uint8 (H, W, 3) RGB) scaled so its long side is at most `max_side` pixels.

    The aspect ratio is kept; images already small enough are not enlarged.
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    im = Image.fromarray(image)
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
