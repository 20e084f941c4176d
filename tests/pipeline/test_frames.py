"""pipeline/frames.py: decoding, sharpest-per-bucket selection, duplicates, rotation, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.errors import VideoDecodeError
from pipeline.frames import probe_video, select_frames, sharpness
from tests.conftest import ROOT
from tests.media import make_ring_video, ring_image


@pytest.fixture(scope="module")
def blurry_video(tmp_path_factory):
    """4 s at 24 fps with every second frame strongly blurred."""
    return make_ring_video(tmp_path_factory.mktemp("v") / "blurry.mp4", blurred_every=2)


def test_sharpness_ranks_blurred_below_sharp():
    sharp = ring_image().mean(axis=2)
    blurred = ring_image(blur_sigma=3).mean(axis=2)
    assert sharpness(sharp) > 5 * sharpness(blurred)


def test_probe_reports_size_duration_and_rate(ring_video):
    info = probe_video(ring_video.path)
    assert (info.width, info.height) == (ring_video.width, ring_video.height)
    assert info.duration_s == pytest.approx(ring_video.duration_s, abs=0.1)
    assert info.fps == pytest.approx(ring_video.fps)


@pytest.mark.parametrize("mode", ["sequential", "seek"])
def test_selection_avoids_blurred_frames_and_spreads_over_time(blurry_video, mode):
    n = 4
    sel = select_frames(blurry_video.path, n, mode=mode)
    assert sel.mode == mode
    assert len(sel.candidates) == n
    bucket = blurry_video.duration_s / n
    for b, cand in enumerate(sel.candidates):
        assert cand.index not in blurry_video.blurred_indices
        assert b * bucket <= cand.timestamp_s < (b + 1) * bucket  # one frame per time bucket
        assert cand.reason is None
        assert cand.image.shape == (blurry_video.height, blurry_video.width, 3)
        assert cand.image.dtype == np.uint8
    indices = [c.index for c in sel.candidates]
    assert indices == sorted(indices)
    # Timestamps agree with frame numbers.
    for cand in sel.candidates:
        assert cand.timestamp_s == pytest.approx(cand.index / blurry_video.fps, abs=1e-3)


def test_bucket_with_only_blurred_frames_is_reported_blurred(tmp_path):
    # 8 buckets of 12 frames; frames 24..47 (buckets 2 and 3) are all blurred.
    video = make_ring_video(tmp_path / "b.mp4", blurred=range(24, 48))
    sel = select_frames(video.path, 8)
    reasons = [c.reason for c in sel.candidates]
    assert reasons == [None, None, "blurred", "blurred", None, None, None, None]


def test_frozen_video_keeps_one_frame_and_reports_duplicates(tmp_path):
    video = make_ring_video(tmp_path / "still.mp4", period_s=None, duration_s=2.0)
    sel = select_frames(video.path, 4)
    assert [c.reason for c in sel.candidates] == [None, "duplicate", "duplicate", "duplicate"]


def test_turning_ring_is_not_taken_for_duplicates(ring_video):
    sel = select_frames(ring_video.path, 8)
    assert [c.reason for c in sel.candidates] == [None] * 8


def test_portrait_phone_video_is_turned_upright(tmp_path):
    # Ring left of centre in the stored 320x240 picture; a +90 degree display rotation (counter-clockwise)
    # turns it into a 240x320 portrait picture with the ring below the centre.
    video = make_ring_video(tmp_path / "portrait.mp4", centre=(0.3, 0.5), rotation=90, duration_s=1.0)
    info = probe_video(video.path)
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    cand = select_frames(video.path, 1).candidates[0]
    assert cand.image.shape == (320, 240, 3)
    red = (cand.image[..., 0] > 120) & (cand.image[..., 1] < 80)
    ys, xs = np.nonzero(red)
    assert ys.mean() > 0.6 * 320
    assert xs.mean() == pytest.approx(120, abs=4)


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("r.webm", "libvpx", "yuv420p"),  # browser recordings
        ("r.mov", "mpeg4", "yuv420p"),
        ("iphone.mov", "libx265", "yuv420p10le"),  # 10-bit HEVC, as iPhones record
    ],
)
def test_other_containers_and_codecs_decode(tmp_path, name, codec, pix_fmt):
    video = make_ring_video(tmp_path / name, codec=codec, pix_fmt=pix_fmt, duration_s=1.0)
    sel = select_frames(video.path, 2)
    assert [c.reason for c in sel.candidates] == [None, None]
    ring = sel.candidates[0].image[120, 160 - 60]  # on the ring, left of centre
    assert ring[0] > 120 and ring[1] < 80  # red survives the colour conversion


def test_auto_mode_seeks_long_videos_and_decodes_less(tmp_path):
    video = make_ring_video(
        tmp_path / "long.mp4", width=160, height=120, fps=12, duration_s=20.0, period_s=7.0
    )
    seq = select_frames(video.path, 4, mode="sequential")
    auto = select_frames(video.path, 4)  # 4 x (1 s keyframe interval + 1 s window) < 20 s
    assert (seq.mode, auto.mode) == ("sequential", "seek")
    assert seq.decoded_frames == video.num_frames
    assert auto.keyframe_interval_s == pytest.approx(1.0)
    assert auto.decoded_frames < seq.decoded_frames / 2
    bucket = video.duration_s / 4
    for b, cand in enumerate(auto.candidates):
        assert b * bucket <= cand.timestamp_s < (b + 1) * bucket


_RSS_PROBE = """
import resource, sys
from pipeline.frames import select_frames
path, mode = sys.argv[1], sys.argv[2]
select_frames(path, 1, mode=mode)  # warm-up: libraries, decoder and scaler pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
select_frames(path, 4, mode=mode)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.fixture(scope="module")
def vga_video(tmp_path_factory):
    """8 s of 640x480 at 24 fps: 192 frames, 177 MB if all were held as RGB."""
    return make_ring_video(tmp_path_factory.mktemp("v") / "vga.mp4", width=640, height=480, duration_s=8.0)


@pytest.mark.parametrize("mode", ["sequential", "seek"])
def test_memory_stays_bounded_by_num_frames_not_video_length(vga_video, mode):
    # Peak RSS in a fresh process (ru_maxrss is per process); holding the 192 decoded VGA frames would add 177
    # MB, the selection holds one frame per bucket plus a challenger (< 5 MB here).
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(vga_video.path), mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    growth = int(out.stdout.strip())
    assert growth < 40e6, f"peak RSS grew by {growth / 1e6:.1f} MB"


def test_damaged_stretch_is_skipped_and_the_rest_still_used(tmp_path):
    video = make_ring_video(tmp_path / "ok.mkv", duration_s=4.0)  # Matroska: frames can follow damage
    data = bytearray(video.path.read_bytes())
    third = len(data) // 3
    data[third : third + 3000] = np.random.default_rng(1).bytes(3000)
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(bytes(data))
    sel = select_frames(damaged, 4, mode="sequential")
    assert len(sel.candidates) == 4  # frames after the damage were decoded too
    assert sel.decoded_frames < video.num_frames
    for cand in sel.candidates:
        assert cand.index == round(cand.timestamp_s * video.fps)


def test_truncated_streamable_video_keeps_the_frames_before_the_cut(tmp_path):
    video = make_ring_video(tmp_path / "ok.mkv", duration_s=4.0)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(video.path.read_bytes()[: video.path.stat().st_size // 2])
    sel = select_frames(cut, 4, mode="sequential")
    assert 1 <= len(sel.candidates) < 4
    assert all(c.timestamp_s < 2.5 for c in sel.candidates)


def test_garbage_is_a_decode_error(tmp_path):
    path = tmp_path / "x.mkv"
    path.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 1000)
    with pytest.raises(VideoDecodeError, match=r"x\.mkv"):
        select_frames(path, 4)
    with pytest.raises(VideoDecodeError):
        probe_video(path)
