"""What the user sent: detect a video, an image or a zip of images from the bytes, and open images safely.

Detection reads the first bytes (magic numbers), never the file name: a text file renamed `.mp4` is refused, a
video uploaded as `clip.bin` is accepted. Videos are confirmed by `pipeline.frames.probe_video` (PyAV). Images
are opened with Pillow behind a pixel-count guard (decompression bombs) and a minimum size; zips are read in
memory member by member, refusing path traversal, links, encryption and oversized or too many members.
Decoding video frames lives in `pipeline/frames.py`.
"""

from __future__ import annotations

import io
import logging
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pipeline.errors import ImageTooLarge, InvalidInput, UnsafeArchive, UnsupportedMedia

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

HEAD_BYTES = 64  # enough for every signature below

# 8K (7680x4320) is 33 Mpx and the largest phone sensors about 200 Mpx; 120 Mpx RGBA is ~480 MB decoded.
MAX_IMAGE_PIXELS = 120_000_000
MIN_IMAGE_SIDE = 32  # smaller images carry no usable object (and 1x1 "images" are usually tracking pixels)
IMAGE_FORMATS = frozenset(
    {"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF"}
)  # MPO: multi-picture JPEG from phones

MAX_ARCHIVE_MEMBERS = 1000
MAX_MEMBER_BYTES = 64 * 1024**2  # one uncompressed image
MAX_ARCHIVE_BYTES = 1024**3  # all members together, uncompressed


# ISO BMFF brands of still HEIF/AVIF images (iPhone photos are HEIC): the box layout of MP4, not a video.
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)


class MediaKind(str, Enum):
    VIDEO = "video"
    IMAGE = "image"
    ARCHIVE = "archive"


def sniff(head: bytes) -> MediaKind | None:
    """Kind of content from its first bytes (magic numbers), or None when no known signature matches."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # local file header / empty archive
        return MediaKind.ARCHIVE
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    ):
        return MediaKind.IMAGE
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):  # ISO BMFF / QuickTime atoms
        return MediaKind.VIDEO
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, WebM
        return MediaKind.VIDEO
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return MediaKind.VIDEO
    return None


def detect_kind(path: Path) -> MediaKind:
    """Kind of the file at `path`, from its content; raise InvalidInput/UnsupportedMedia with the reason.

    A video is probed with PyAV too, so a file that only starts like a video raises VideoDecodeError here.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"input {path.name!r} is not a readable file")
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput(f"input {path.name!r} is empty (0 bytes)")
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        raise UnsupportedMedia(
            f"input {path.name!r} is a HEIC/AVIF photo, which is not supported; send JPEG or PNG "
            "(on an iPhone: Settings > Camera > Formats > Most Compatible)"
        )
    kind = sniff(head)
    if kind is None:
        raise UnsupportedMedia(
            f"input {path.name!r} ({size} bytes) is not a video (mp4, mov, mkv, webm), an image "
            f"(png, jpg, webp) or a zip of images; its first bytes are {head[:12]!r}"
        )
    if kind is MediaKind.VIDEO:
        from pipeline.frames import probe_video

        probe_video(path)  # raises VideoDecodeError when the container or its video stream is unusable
    return kind


def open_image(
    data: bytes | Path,
    name: str,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> Image:
    """Decode one image fully, upright (EXIF orientation applied), as RGB or RGBA.

    Raises ImageTooLarge when the header announces more than `max_pixels` (checked before any pixel is
    decoded), InvalidInput for a corrupt/truncated file, an unsupported format or a side below `min_side`.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    source = io.BytesIO(data) if isinstance(data, bytes) else Path(data)
    try:
        # Pillow warns above its own global MAX_IMAGE_PIXELS and raises above twice that; we apply our own
        # limit below instead of changing its global, so its warning is silenced and its error translated.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image {name!r} is too large: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"image {name!r} cannot be read: {exc}") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image {name!r} announces {width}x{height} = {width * height} pixels, more than the "
                f"{max_pixels} allowed (decompression-bomb guard)"
            )
        if min(width, height) < min_side:
            raise InvalidInput(
                f"image {name!r} is {width}x{height} pixels; at least {min_side} per side is needed"
            )
        if im.format not in IMAGE_FORMATS:
            raise InvalidInput(f"image {name!r} has unsupported format {im.format}; use png, jpg or webp")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                upright = ImageOps.exif_transpose(im)
        except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt pixel data
            raise InvalidInput(f"image {name!r} is corrupt or truncated: {exc}") from None
        has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
            upright.mode == "P" and "transparency" in upright.info
        )
        return upright.convert("RGBA" if has_alpha else "RGB")


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = MAX_ARCHIVE_MEMBERS
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_total_bytes: int = MAX_ARCHIVE_BYTES


def _unsafe_name(name: str) -> bool:
    if "\x00" in name:
        return True
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or (
        len(normalised) > 1 and normalised[1] == ":"
    ):  # absolute or drive letter
        return True
    return ".." in PurePosixPath(normalised).parts


def _skipped_name(name: str) -> bool:
    """Folders and OS clutter (macOS resource forks, hidden files) that are not user images."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.endswith("/") or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def iter_archive_images(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) for each image in the zip at `path`, in name order, never touching the disk.

    The whole member list is checked before anything is yielded: any absolute or `..` path, symbolic link,
    encrypted member, or too many / too large members raises UnsafeArchive; an archive with no image raises
    InvalidInput. Non-image members (detected from their bytes) are skipped and logged.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"archive {Path(path).name!r} is not a readable zip: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UnsafeArchive(f"archive has {len(infos)} members; at most {limits.max_members} are allowed")
        total = 0
        for info in infos:
            if _unsafe_name(info.filename):
                raise UnsafeArchive(
                    f"archive member {info.filename!r} points outside the archive (path traversal)"
                )
            if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchive(f"archive member {info.filename!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise UnsafeArchive(f"archive member {info.filename!r} is encrypted")
            if info.file_size > limits.max_member_bytes:
                raise UnsafeArchive(
                    f"archive member {info.filename!r} is {info.file_size} bytes uncompressed; "
                    f"at most {limits.max_member_bytes} are allowed"
                )
            total += info.file_size
        if total > limits.max_total_bytes:
            raise UnsafeArchive(
                f"archive expands to {total} bytes; at most {limits.max_total_bytes} are allowed"
            )

        names = sorted(i.filename for i in infos if not _skipped_name(i.filename))
        found = 0
        for name in names:
            try:
                with zf.open(name) as member:
                    # The declared size was checked above; read one byte more to catch a header that lies.
                    data = member.read(limits.max_member_bytes + 1)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise InvalidInput(f"archive member {name!r} cannot be read: {exc}") from None
            if len(data) > limits.max_member_bytes:
                raise UnsafeArchive(f"archive member {name!r} expands beyond {limits.max_member_bytes} bytes")
            if sniff(data[:HEAD_BYTES]) is not MediaKind.IMAGE:
                logger.info("skipping archive member %r: not an image", name)
                continue
            found += 1
            yield name, data
        if not found:
            shown = ", ".join(repr(n) for n in names[:5]) or "nothing"
            raise InvalidInput(
                f"archive {Path(path).name!r} contains no images (png, jpg, webp); found {shown}"
            )
