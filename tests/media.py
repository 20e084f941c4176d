"""Synthetic test media, generated on the fly: a coloured ring with a marker turning on a plain background.

Reusable by any test (pipeline, service, batch): everything here writes small files with PyAV, Pillow and the
standard library and returns plain values, so nothing binary has to live in git.

    from tests.media import make_ring_video, ring_image, png_bytes, make_zip, bomb_png, object_bbox

    info = make_ring_video(tmp_path / "ring.mp4", duration_s=4.0, fps=24, blurred_every=3)
    info.num_frames, info.blurred_indices, info.ring_bbox   # ground truth for assertions

Geometry: the ring's centre is at `centre` (fractions of width/height, default the image centre), its outer
radius is `radius` times the shorter image side, its inner radius 0.55 of that. A white marker dot on the ring
turns once per `period_s` seconds, so consecutive frames differ (the near-duplicate filter must not reject
them) while a frozen video (`period_s=None`) yields identical frames.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BACKGROUND = (222, 226, 230)  # light plain grey-white, like a studio sweep
RING_COLOUR = (200, 30, 30)  # saturated red
MARKER_COLOUR = (255, 255, 255)
GREY_LEVEL = 128  # background of a framed frame: 0.5 * 255, rounded


@dataclass(frozen=True)
class RingVideo:
    """What `make_ring_video` wrote: ground truth for assertions."""

    path: Path
    width: int
    height: int
    fps: int
    num_frames: int
    duration_s: float
    blurred_indices: frozenset[int] = field(default_factory=frozenset)
    ring_bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (exclusive) in pixels


def ring_bbox(
    width: int, height: int, *, radius: float = 0.3, centre: tuple[float, float] = (0.5, 0.5)
) -> tuple[int, int, int, int]:
    """Pixel bounding box (x0, y0, x1, y1 exclusive) of the ring `ring_image` draws with these arguments."""
    cx, cy = centre[0] * width, centre[1] * height
    r = radius * min(width, height)
    # Pixel (x, y) is inside when its centre (x + 0.5, y + 0.5) lies within r of (cx, cy).
    x0, x1 = int(np.ceil(cx - r - 0.5)), int(np.floor(cx + r - 0.5)) + 1
    y0, y1 = int(np.ceil(cy - r - 0.5)), int(np.floor(cy + r - 0.5)) + 1
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


class _RingCanvas:
    """Per-size geometry of the ring, computed once so a video's frames only redraw the marker."""

    def __init__(
        self,
        width: int,
        height: int,
        radius: float,
        centre: tuple[float, float],
        background: tuple[int, int, int],
    ) -> None:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        self.cx, self.cy = centre[0] * width, centre[1] * height
        self.r_out = radius * min(width, height)
        self.r_in = 0.55 * self.r_out
        dist = np.hypot(xs - self.cx, ys - self.cy)
        self.ring = (dist <= self.r_out) & (dist >= self.r_in)
        self.xs, self.ys = xs, ys
        base = np.empty((height, width, 3), np.uint8)
        base[:] = background
        base[self.ring] = RING_COLOUR
        # A tread-like pattern gives the ring texture, so the sharpness measure has edges to see.
        sector = np.floor(np.arctan2(ys - self.cy, xs - self.cx) / (2 * np.pi) * 48) % 2
        base[(sector == 1) & self.ring] = (150, 20, 20)
        self.base = base

    def draw(self, angle: float, blur_sigma: float, alpha: bool) -> np.ndarray:
        mid = 0.5 * (self.r_in + self.r_out)
        mx, my = self.cx + mid * np.cos(angle), self.cy + mid * np.sin(angle)
        rm = 0.35 * (self.r_out - self.r_in)
        rgb = self.base.copy()
        # Only the marker's neighbourhood needs the distance test.
        h, w = self.ring.shape
        y0, y1 = max(int(my - rm) - 1, 0), min(int(my + rm) + 2, h)
        x0, x1 = max(int(mx - rm) - 1, 0), min(int(mx + rm) + 2, w)
        win = (slice(y0, y1), slice(x0, x1))
        marker = (np.hypot(self.xs[win] - mx, self.ys[win] - my) <= rm) & self.ring[win]
        rgb[win][marker] = MARKER_COLOUR
        if blur_sigma > 0:
            from PIL import Image, ImageFilter

            rgb = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(blur_sigma)))
        if not alpha:
            return rgb
        return np.dstack([rgb, np.where(self.ring, 255, 0).astype(np.uint8)])


def ring_image(
    width: int = 320,
    height: int = 240,
    *,
    angle: float = 0.0,
    radius: float = 0.3,
    centre: tuple[float, float] = (0.5, 0.5),
    background: tuple[int, int, int] = BACKGROUND,
    alpha: bool = False,
    blur_sigma: float = 0.0,
) -> np.ndarray:
    """One frame: uint8 (height, width, 3) RGB, or (height, width, 4) RGBA with a transparent background.

    `angle` (radians) places the marker; `blur_sigma` > 0 applies a Gaussian blur (pixels) to mimic motion
    blur.
    """
    return _RingCanvas(width, height, radius, centre, background).draw(angle, blur_sigma, alpha)


def make_ring_video(
    path: Path,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 24,
    duration_s: float = 4.0,
    codec: str = "libx264",
    gop: int | None = None,
    period_s: float | None = 4.0,
    radius: float = 0.3,
    centre: tuple[float, float] = (0.5, 0.5),
    blurred_every: int = 0,
    blurred: Iterable[int] = (),
    blur_sigma: float = 6.0,
    rotation: int = 0,
    pix_fmt: str = "yuv420p",
) -> RingVideo:
    """Write a ring video with PyAV and return its ground truth.

    Parameters
    ----------
    path : output file; the container follows the suffix (.mp4, .mov, .mkv, .webm).
    width, height : frame size in pixels (even, for yuv420p).
    fps, duration_s : frame rate and length; `round(fps * duration_s)` frames are written.
    codec : PyAV encoder name ("libx264", "mpeg4", "libvpx" for .webm).
    gop : keyframe interval in frames (default: one per second).
    period_s : seconds per marker turn; None freezes the marker (every frame identical).
    blurred_every : blur every k-th frame (indices k-1, 2k-1, ...) when > 0.
    blurred : further frame indices to blur.
    rotation : display-matrix rotation in degrees (90 mimics a portrait phone video), stored as metadata only.
    pix_fmt : encoder pixel format ("yuv420p10le" with "libx265" mimics an iPhone HEVC video).
    """
    import av

    n = round(fps * duration_s)
    blur_set = set(blurred)
    if blurred_every > 0:
        blur_set |= set(range(blurred_every - 1, n, blurred_every))
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        stream.codec_context.gop_size = gop or fps
        if codec in ("libx264", "libx265"):
            stream.options = {"crf": "20", "preset": "ultrafast"}
            if codec == "libx265":
                stream.options["x265-params"] = "log-level=error"
        elif codec.startswith("libvpx"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}  # the default "good" takes seconds
        if rotation:
            stream.set_display_rotation(rotation)
        canvas = _RingCanvas(width, height, radius, centre, BACKGROUND)
        for i in range(n):
            angle = 0.0 if period_s is None else 2 * np.pi * (i / fps) / period_s
            img = canvas.draw(angle, blur_sigma if i in blur_set else 0.0, alpha=False)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return RingVideo(
        path=path,
        width=width,
        height=height,
        fps=fps,
        num_frames=n,
        duration_s=n / fps,
        blurred_indices=frozenset(i for i in blur_set if i < n),
        ring_bbox=ring_bbox(width, height, radius=radius, centre=centre),
    )


def object_bbox(framed: np.ndarray, tol: int = 24) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1 exclusive) of the object in a framed uint8 (H, W, 3) image.

    Object pixels differ from the 0.5 grey background by more than `tol` levels in some channel.
    """
    diff = np.abs(framed.astype(np.int16) - GREY_LEVEL).max(axis=2) > tol
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    if rows.size == 0:
        raise ValueError("the frame is plain grey: no object")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def png_bytes(image: np.ndarray, format: str = "PNG") -> bytes:
    """Encode a uint8 (H, W, 3|4) array as PNG (or "JPEG", "WEBP") bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=format)
    return buf.getvalue()


def make_zip(path: Path, members: Mapping[str, bytes], *, symlinks: Iterable[str] = ()) -> Path:
    """Write a zip with the given member names and contents verbatim (names are NOT sanitised, on purpose).

    Names in `symlinks` are stored as Unix symbolic links whose target is their content.
    """
    link_names = set(symlinks)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in link_names:
                info.create_system = 3  # Unix, so external_attr carries the file mode
                info.external_attr = (0o120777 << 16) & 0xFFFF0000
            zf.writestr(info, data)
    return Path(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header announces `width` x `height` RGB pixels (a decompression bomb's calling card).

    Only a few bytes of pixel data follow, so decoding it would fail anyway; a loader must refuse on the
    header.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 (RGB)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
