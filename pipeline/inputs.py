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

    from pipeline.frames import VideoLimits

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
# Central directory bytes allowed per member: 46 fixed + name + extra + comment. Real names are < 1 KB; a zip
# whose directory is larger than members x this is refused before Python's zipfile walks it.
CD_BYTES_PER_MEMBER = 1024
_EOCD = b"PK\x05\x06"  # end of central directory record (22 bytes + comment of up to 65535)
_ZIP64_LOCATOR = b"PK\x06\x07"  # 20 bytes, right before the EOCD of a zip64 archive
_ZIP64_EOCD = b"PK\x06\x06"


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


def detect_kind(
    path: Path, *, video_limits: VideoLimits | None = None, archive_limits: ArchiveLimits | None = None
) -> MediaKind:
    """Kind of the file at `path`, from its content; raise InvalidInput/UnsupportedMedia with the reason.

    A video's header is checked against `video_limits` and one frame decoded (VideoTooLarge,
    VideoDecodeError); a zip's member list is checked against `archive_limits` (UnsafeArchive) without
    reading any member. Both are cheap, so the ingress can refuse bad input before a job exists.
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

        probe_video(path, video_limits)  # VideoTooLarge / VideoDecodeError when unusable
    elif kind is MediaKind.ARCHIVE:
        check_archive(path, archive_limits or ArchiveLimits())
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


def _declared_members(path: Path) -> tuple[int, int]:
    """(member count, central directory bytes) from the zip's end records, reading only the file's tail.

    Python's zipfile parses the whole central directory when it opens an archive; a 1M-member zip costs
    seconds and hundreds of MB there, so the count is read from the end record (zip64 too) first.
    """
    import struct

    size = path.stat().st_size
    with path.open("rb") as f:
        tail_start = max(0, size - (22 + 65535))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            raise InvalidInput(f"archive {path.name!r} is not a readable zip: no end of central directory")
        _, _, _, _, count, cd_size, _, _ = struct.unpack_from("<4sHHHHIIH", tail, at)
        if count == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the real numbers are in the zip64 end record
            loc = at - 20
            if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR:
                raise InvalidInput(f"archive {path.name!r} is not a readable zip: bad zip64 end record")
            (record_at,) = struct.unpack_from("<Q", tail, loc + 8)
            f.seek(record_at)
            record = f.read(56)
            if len(record) < 56 or record[:4] != _ZIP64_EOCD:
                raise InvalidInput(f"archive {path.name!r} is not a readable zip: bad zip64 end record")
            count, _, cd_size = struct.unpack_from("<QQQ", record, 24)
    return int(count), int(cd_size)


def check_archive(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[zipfile.ZipInfo]:
    """The zip's members after every safety check (count from the end record first, then the member list).

    Raises UnsafeArchive for too many members, traversal, links, encryption, too large members or total;
    InvalidInput for a file that is not a zip. Reads no member data.
    """
    path = Path(path)
    count, cd_size = _declared_members(path)
    if count > limits.max_members or cd_size > limits.max_members * CD_BYTES_PER_MEMBER:
        raise UnsafeArchive(
            f"archive declares {count} members ({cd_size} bytes of directory); at most "
            f"{limits.max_members} are allowed"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"archive {path.name!r} is not a readable zip: {exc}") from None
    _check_members(infos, limits)
    return infos


def _check_members(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> None:
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
        raise UnsafeArchive(f"archive expands to {total} bytes; at most {limits.max_total_bytes} are allowed")


def iter_archive_images(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[tuple[str, bytes]]:
    """Yield (member name, bytes) for each image in the zip at `path`, in name order, never touching the disk.

    The whole member list is checked before anything is yielded: any absolute or `..` path, symbolic link,
    encrypted member, or too many / too large members raises UnsafeArchive; an archive with no image raises
    InvalidInput. Non-image members (detected from their bytes) are skipped and logged.
    """
    check_archive(path, limits)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidInput(f"archive {Path(path).name!r} is not a readable zip: {exc}") from None
    with zf:
        infos = zf.infolist()
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
