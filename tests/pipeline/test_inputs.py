"""pipeline/inputs.py: kind detection from bytes, safe image opening, safe zip reading."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageTooLarge, InvalidInput, UnsafeArchive, UnsupportedMedia, VideoDecodeError
from pipeline.inputs import ArchiveLimits, MediaKind, detect_kind, iter_archive_images, open_image
from tests.media import bomb_png, make_zip, png_bytes, ring_image


def test_video_is_detected_from_bytes_not_name(ring_video, tmp_path):
    renamed = tmp_path / "upload.bin"
    renamed.write_bytes(ring_video.path.read_bytes())
    assert detect_kind(renamed) is MediaKind.VIDEO


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_images_are_detected_from_bytes(tmp_path, fmt):
    path = tmp_path / "photo.mp4"  # a misleading name must not matter
    path.write_bytes(png_bytes(ring_image(), fmt))
    assert detect_kind(path) is MediaKind.IMAGE


def test_zip_is_detected(tmp_path):
    path = make_zip(tmp_path / "a.dat", {"a.png": png_bytes(ring_image())})
    assert detect_kind(path) is MediaKind.ARCHIVE


def test_text_file_renamed_mp4_is_unsupported(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_text("this is not a video, just some notes\n" * 10)
    with pytest.raises(UnsupportedMedia, match="is not a video"):
        detect_kind(path)


def test_heic_photo_is_unsupported_not_a_broken_video(tmp_path):
    path = tmp_path / "IMG_0001.bin"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
    with pytest.raises(UnsupportedMedia, match="HEIC"):
        detect_kind(path)


def test_audio_only_mp4_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        detect_kind(path)


def test_zero_bytes_is_invalid(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty"):
        detect_kind(path)


def test_truncated_video_is_a_decode_error(ring_video, tmp_path):
    data = ring_video.path.read_bytes()
    path = tmp_path / "cut.mp4"
    # the index (moov) is written last, so half a file cannot be read
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="cannot be decoded"):
        detect_kind(path)


def test_video_header_followed_by_garbage_is_a_decode_error(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + rng.bytes(20_000))
    with pytest.raises(VideoDecodeError):
        detect_kind(path)


def test_one_pixel_image_is_rejected_clearly():
    data = png_bytes(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InvalidInput, match="1x1 pixels"):
        open_image(data, "pixel.png")


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="pixels"):
        open_image(bomb_png(20000, 20000), "bomb.png")


def test_image_over_our_limit_but_under_pillows_is_refused_with_its_size():
    # 132 Mpx: Pillow would only warn; our guard must refuse and name the size.
    with pytest.raises(ImageTooLarge, match="12000x11000"):
        open_image(bomb_png(12000, 11000), "big.png")


def test_truncated_image_is_invalid():
    data = png_bytes(ring_image(640, 480))
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        open_image(data[: len(data) // 2], "half.png")


def test_exif_orientation_is_applied():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(ring_image(320, 240)).save(buf, format="JPEG", exif=exif)
    im = open_image(buf.getvalue(), "phone.jpg")
    assert im.size == (240, 320)


def test_alpha_is_kept_and_rgb_converted():
    assert open_image(png_bytes(ring_image(alpha=True)), "cut.png").mode == "RGBA"
    assert open_image(png_bytes(ring_image()), "plain.png").mode == "RGB"


def test_zip_yields_images_in_name_order_skipping_clutter(tmp_path):
    img = png_bytes(ring_image())
    path = make_zip(
        tmp_path / "set.zip",
        {
            "b/2.png": img,
            "a.jpg": png_bytes(ring_image(), "JPEG"),
            "notes.txt": b"hello",
            "__MACOSX/._a.jpg": b"\x00\x05\x16\x07junk",
            "b/": b"",
        },
    )
    assert [name for name, _ in iter_archive_images(path)] == ["a.jpg", "b/2.png"]


def test_zip_without_images_is_invalid(tmp_path):
    path = make_zip(tmp_path / "docs.zip", {"readme.txt": b"no pictures here"})
    with pytest.raises(InvalidInput, match="contains no images"):
        list(iter_archive_images(path))


@pytest.mark.parametrize("name", ["../evil.png", "ok/../../evil.png", "/etc/evil.png", "C:/evil.png"])
def test_zip_with_path_traversal_is_unsafe(tmp_path, name):
    path = make_zip(tmp_path / "evil.zip", {"good.png": png_bytes(ring_image()), name: b"x"})
    with pytest.raises(UnsafeArchive, match="outside the archive"):
        list(iter_archive_images(path))


def test_zip_with_symlink_is_unsafe(tmp_path):
    path = make_zip(tmp_path / "link.zip", {"passwd.png": b"/etc/passwd"}, symlinks=["passwd.png"])
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        list(iter_archive_images(path))


def test_zip_member_limits_are_enforced(tmp_path):
    img = png_bytes(ring_image())
    path = make_zip(tmp_path / "many.zip", {f"{i}.png": img for i in range(5)})
    with pytest.raises(UnsafeArchive, match="5 members"):
        list(iter_archive_images(path, ArchiveLimits(max_members=4)))
    with pytest.raises(UnsafeArchive, match="bytes uncompressed"):
        list(iter_archive_images(path, ArchiveLimits(max_member_bytes=100)))
    with pytest.raises(UnsafeArchive, match="expands to"):
        list(iter_archive_images(path, ArchiveLimits(max_total_bytes=len(img) * 4)))


def test_broken_zip_is_invalid(tmp_path):
    path = tmp_path / "broken.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", png_bytes(ring_image()))
    path.write_bytes(buf.getvalue()[:200])
    with pytest.raises(InvalidInput):
        list(iter_archive_images(path))
