"""Hostile inputs made by the tests: lying video headers, zip bombs, zips with (claimed) huge member counts.

Each is small on disk; what it announces is what makes it hostile.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path


def make_huge_header_avi(path: Path, width: int, height: int) -> Path:
    """A 5-frame 64x48 rawvideo AVI whose headers (avih and the BITMAPINFOHEADER) announce width x height.

    Raw video takes its frame size from the container alone, so decoding a frame would need width x height
    x 1.5 bytes; FFmpeg itself zeroes sizes over its own limit (e.g. 100000 x 100000).
    """
    import av
    import numpy as np

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    struct.pack_into("<II", data, avih + 8 + 32, width, height)  # dwWidth, dwHeight
    strf = data.find(b"strf")
    struct.pack_into("<ii", data, strf + 8 + 4, width, height)  # biWidth, biHeight
    path.write_bytes(bytes(data))
    return path


def make_zip64_claiming(path: Path, members: int) -> Path:
    """A valid one-member zip whose zip64 end record claims `members` members (a directory never walked)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", b"a")
    data = path.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    _, _, _, _, _, cd_size, cd_offset, _ = struct.unpack_from("<4sHHHHIIH", data, eocd)
    body = data[:eocd]
    record_at = len(body)
    zip64_eocd = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, members, members, cd_size, cd_offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, record_at, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(body + zip64_eocd + locator + end)
    return path


def make_many_member_zip(path: Path, members: int) -> Path:
    """A real zip with `members` empty members (about 100 bytes each)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(members):
            zf.writestr(f"{i:x}", b"")
    return path


def make_zip_bomb(path: Path, uncompressed_bytes: int = 200 * 1024**2) -> Path:
    """One member of `uncompressed_bytes` zeros, deflated to a fraction of a MB; the header says so truly."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("bomb.png", "w") as f,
    ):
        chunk = bytes(1024**2)
        for _ in range(uncompressed_bytes // len(chunk)):
            f.write(chunk)
    return path
