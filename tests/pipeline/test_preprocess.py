"""pipeline/preprocess.py: every input kind end to end (real u2netp rembg), the report, and clear failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import (
    ImageTooLarge,
    InvalidInput,
    InvalidParameter,
    NoUsableFrames,
    PipelineError,
    UnsafeArchive,
    UnsupportedMedia,
    VideoDecodeError,
)
from pipeline.preprocess import preprocess_input
from tests.media import bomb_png, make_ring_video, make_zip, object_bbox, png_bytes, ring_image


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_video_with_real_rembg_gives_framed_sharp_frames_spread_over_time(tmp_path, remover):
    video = make_ring_video(tmp_path / "tyre.mp4", blurred_every=2, centre=(0.42, 0.55))
    result = preprocess_input(video.path, num_frames=4, remover=remover)

    assert result.kind == "video"
    assert result.frames.shape == (4, 512, 512, 3) and result.frames.dtype == np.uint8
    assert len(result.reports) == 4 and all(r.chosen for r in result.reports)
    times = [r.timestamp_s for r in result.reports]
    assert times == sorted(times)
    for b, report in enumerate(result.reports):
        assert report.index not in video.blurred_indices
        assert b <= report.timestamp_s < b + 1  # 4 s cut into 4 buckets
        assert report.reason is None and report.sharpness > 0
        assert 0.1 < report.foreground_fraction < 0.3
    for frame in result.frames:
        x0, y0, x1, y1 = object_bbox(frame)
        assert max(x1 - x0, y1 - y0) == pytest.approx(0.85 * 512, abs=8)
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((256, 256), abs=4)
    assert len(result.scores) == 4 and max(result.scores) == 1.0 and min(result.scores) > 0
    json.dumps([r.to_dict() for r in result.reports])  # the report is JSON-able
    assert result.info["mode"] == "sequential"


@pytest.fixture
def no_default_remover(monkeypatch):
    """Make any attempt to build the default rembg model fail loudly (it would download u2net)."""

    def refuse(*args, **kwargs):
        raise AssertionError("rembg must not be needed here")

    monkeypatch.setattr("pipeline.preprocess.BackgroundRemover", refuse)


def test_images_with_alpha_skip_rembg(tmp_path, no_default_remover):
    paths = [write(tmp_path / f"{i}.png", png_bytes(ring_image(alpha=True, angle=i))) for i in range(3)]
    result = preprocess_input(paths, num_frames=8, remover=None, foreground_ratio=0.7)
    assert result.kind == "images"
    assert [r.source for r in result.reports] == ["0.png", "1.png", "2.png"]
    assert [r.timestamp_s for r in result.reports] == [None] * 3
    x0, y0, x1, y1 = object_bbox(result.frames[0])
    assert max(x1 - x0, y1 - y0) == pytest.approx(0.7 * 512, abs=2)


def test_remove_background_false_frames_the_whole_picture(tmp_path, no_default_remover):
    path = write(tmp_path / "framed.jpg", png_bytes(ring_image(320, 240), "JPEG"))
    result = preprocess_input(path, num_frames=1, remove_background=False, remover=None)
    assert result.frames.shape == (1, 512, 512, 3)
    assert result.reports[0].foreground_fraction is None
    assert (result.frames[0, :50] == 128).all()  # padded to a square with grey, not cropped


def test_folder_of_photos_with_real_rembg(tmp_path, remover):
    write(tmp_path / "b.png", png_bytes(ring_image(angle=2.0)))
    write(tmp_path / "a.webp", png_bytes(ring_image(angle=0.5), "WEBP"))
    write(tmp_path / "notes.txt", b"not a photo")
    result = preprocess_input(tmp_path, num_frames=8, remover=remover)
    assert [r.source for r in result.reports] == ["a.webp", "b.png"]
    assert all(r.chosen for r in result.reports)


def test_zip_of_images(tmp_path, no_default_remover):
    members = {f"shots/{i:02d}.png": png_bytes(ring_image(alpha=True, angle=i)) for i in range(2)}
    members["readme.txt"] = b"hello"
    path = make_zip(tmp_path / "upload", members)
    result = preprocess_input(path, num_frames=8, remover=None)
    assert result.kind == "archive"
    assert [r.source for r in result.reports] == ["shots/00.png", "shots/01.png"]


def test_more_images_than_num_frames_keeps_the_sharpest_of_each_group(tmp_path, no_default_remover):
    paths = []
    for i in range(6):
        blur = 4.0 if i % 2 == 0 else 0.0  # groups of two: (0, 1), (2, 3), (4, 5); the first one blurred
        rgba = ring_image(alpha=True, angle=i, blur_sigma=blur)
        rgba[..., 3] = ring_image(alpha=True, angle=i)[..., 3]
        paths.append(write(tmp_path / f"{i}.png", png_bytes(rgba)))
    result = preprocess_input(paths, num_frames=3, remover=None)
    assert [r.reason for r in result.reports] == ["surplus", None, "surplus", None, "surplus", None]
    assert result.frames.shape[0] == 3
    # a preview per report entry; surplus images were never held, so they have none
    assert [t is not None for t in result.thumbnails] == [False, True, False, True, False, True]


def test_repeated_photo_is_a_duplicate(tmp_path, no_default_remover):
    data = png_bytes(ring_image(alpha=True))
    paths = [write(tmp_path / "a.png", data), write(tmp_path / "b.png", data)]
    result = preprocess_input(paths, num_frames=4, remover=None)
    assert [r.reason for r in result.reports] == [None, "duplicate"]
    assert result.frames.shape[0] == 1
    assert all(t[:2] == b"\xff\xd8" for t in result.thumbnails)  # rejected frames get a JPEG preview too


def test_no_usable_frame_fails_with_every_reason_when_strict(tmp_path, no_default_remover):
    tiny = png_bytes(ring_image(alpha=True, radius=0.04))
    cut = png_bytes(ring_image(alpha=True, centre=(0.02, 0.5)))
    paths = [write(tmp_path / "tiny.png", tiny), write(tmp_path / "cut.png", cut)]
    with pytest.raises(NoUsableFrames) as err:
        preprocess_input(paths, num_frames=4, remover=None, strict=True)
    message = str(err.value)
    assert "no usable frame among 2 candidates" in message
    assert "too small" in message and "runs out of the picture" in message


def test_photos_that_all_fail_framing_use_the_best_one_with_a_warning(tmp_path, no_default_remover):
    """A user whose only photo has the object filling (and leaving) the picture still gets a mesh."""
    tiny = png_bytes(ring_image(alpha=True, radius=0.04))
    cut = png_bytes(ring_image(alpha=True, centre=(0.02, 0.5)))
    paths = [write(tmp_path / "tiny.png", tiny), write(tmp_path / "cut.png", cut)]
    result = preprocess_input(paths, num_frames=4, remover=None)
    assert result.frames.shape == (1, 512, 512, 3)
    # A cut object is preferred to a tiny one: it holds more of the object's pixels.
    assert [(r.source, r.chosen, r.reason, r.warning) for r in result.reports] == [
        ("tiny.png", False, "tiny_foreground", None),
        ("cut.png", True, None, "cut_by_border"),
    ]
    (warning,) = result.warnings
    assert warning["code"] == "cut_by_border"
    assert "'cut.png'" in warning["message"] and "step back" in warning["message"]
    assert "strict=true" in warning["message"]


def test_a_clean_photo_wins_over_a_cut_one_without_warnings(tmp_path, no_default_remover):
    cut = png_bytes(ring_image(alpha=True, centre=(0.02, 0.5)))
    clean = png_bytes(ring_image(alpha=True))
    paths = [write(tmp_path / "cut.png", cut), write(tmp_path / "clean.png", clean)]
    result = preprocess_input(paths, num_frames=4, remover=None)
    assert [(r.chosen, r.reason) for r in result.reports] == [(False, "cut_by_border"), (True, None)]
    assert result.warnings == [] and result.frames.shape[0] == 1


def test_an_empty_foreground_still_fails(tmp_path, no_default_remover):
    blank = np.random.default_rng(0).integers(0, 256, (200, 200, 4), dtype=np.uint8)
    blank[..., 3] = 0  # a sharp picture, but nothing in it is object
    path = write(tmp_path / "blank.png", png_bytes(blank))
    with pytest.raises(NoUsableFrames, match="no object found"):
        preprocess_input(path, num_frames=2, remover=None)


def test_frozen_video_uses_one_frame(tmp_path, remover):
    video = make_ring_video(tmp_path / "still.mp4", period_s=None, duration_s=1.0)
    result = preprocess_input(video.path, num_frames=3, remover=remover)
    assert [r.reason for r in result.reports] == [None, "duplicate", "duplicate"]
    assert result.frames.shape[0] == 1


@pytest.mark.parametrize(
    ("name", "make", "error"),
    [
        ("zero.mp4", lambda v: b"", InvalidInput),
        ("notes.mp4", lambda v: b"meeting notes, definitely not a video\n" * 20, UnsupportedMedia),
        ("cut.mp4", lambda v: v[: len(v) // 3], VideoDecodeError),
        ("pixel.png", lambda v: png_bytes(np.zeros((1, 1, 3), np.uint8)), InvalidInput),
        ("bomb.png", lambda v: bomb_png(20000, 20000), ImageTooLarge),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, ring_video, name, make, error):
    path = write(tmp_path / name, make(ring_video.path.read_bytes()))
    with pytest.raises(error) as err:
        preprocess_input(path, num_frames=4, remover=None)
    assert isinstance(err.value, PipelineError) and name in str(err.value)


def test_zip_with_path_traversal_or_no_images_is_refused(tmp_path):
    evil = make_zip(tmp_path / "evil.zip", {"../../etc/cron.d/x.png": png_bytes(ring_image())})
    with pytest.raises(UnsafeArchive):
        preprocess_input(evil, num_frames=4, remover=None)
    empty = make_zip(tmp_path / "docs.zip", {"a.txt": b"text"})
    with pytest.raises(InvalidInput, match="contains no images"):
        preprocess_input(empty, num_frames=4, remover=None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"num_frames": 0}, "num_frames"), ({"num_frames": 4, "foreground_ratio": 1.5}, "foreground_ratio")],
)
def test_out_of_range_parameters(ring_video, kwargs, field):
    with pytest.raises(InvalidParameter) as err:
        preprocess_input(ring_video.path, remover=None, **kwargs)
    assert err.value.field == field
