"""Input images for `TripoSR.encode`: conversion to float RGB and upstream's resize (tsr/utils.py
ImagePreprocessor).

Background removal and framing are not here (that is `pipeline/`); only the alpha compositing that upstream's
examples use, so RGBA files can be fed to the command line as they are.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImageLike = np.ndarray | Image.Image

GREY = 0.5  # TripoSR was trained on objects over 50% grey


def composite_on_grey(image: ImageLike) -> np.ndarray:
    """Composite an image with alpha over 0.5 grey as upstream's run.py does -> HxWx3 uint8.

    rgb * alpha + 0.5 * (1 - alpha) in float, then truncated to uint8 (so the background becomes 127, as
    upstream). Images without alpha are returned as RGB uint8 unchanged.
    """
    if isinstance(image, Image.Image):
        has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
        image = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 or HxWx4 image, got shape {arr.shape}")
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr.astype(np.uint8, copy=False))
    rgba = arr.astype(np.float32) / 255.0
    rgb = rgba[:, :, :3] * rgba[:, :, 3:4] + GREY * (1.0 - rgba[:, :, 3:4])
    return (rgb * 255.0).astype(np.uint8)


def to_float_rgb(image: ImageLike) -> torch.Tensor:
    """One image -> (H, W, 3) float32 tensor in [0, 1]: uint8 / 255, float arrays as they are (like upstream).

    Raises ValueError for images with alpha or a wrong shape: composite them first (`composite_on_grey`).
    """
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            raise ValueError(
                f"image has an alpha channel (mode {image.mode}); composite it first, "
                "e.g. triposr.images.composite_on_grey(image)"
            )
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or PIL image, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 RGB image, got shape {image.shape}"
            + ("; composite RGBA onto grey first" if image.ndim == 3 and image.shape[2] == 4 else "")
        )
    if image.dtype == np.uint8:
        return torch.from_numpy(image.astype(np.float32) / 255.0)
    if image.dtype in (np.float32, np.float64):
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    raise ValueError(f"expected uint8 or float pixels, got {image.dtype}")


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W, 3) -> (3, size, size): antialiased bilinear, align_corners=False, aspect ratio not kept
    (upstream)."""
    chw = image.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W)
    out = F.interpolate(chw, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0]
