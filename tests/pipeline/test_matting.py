"""pipeline/matting.py: real rembg u2netp offline, model-missing errors, foreground checks, framing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.errors import InvalidParameter, ModelMissingError
from pipeline.matting import (
    BackgroundRemover,
    assess_foreground,
    frame_object,
    has_meaningful_alpha,
)
from tests.media import GREY_LEVEL, object_bbox, ring_bbox, ring_image


def test_u2netp_loads_offline_from_the_models_folder(remover, rembg_dir):
    assert remover.model_path == (rembg_dir / "u2netp.onnx").resolve()


def test_one_session_per_process(remover, rembg_dir):
    again = BackgroundRemover("u2netp", rembg_dir, download=False)
    assert again._session is remover._session


def test_rembg_own_layout_is_found(rembg_dir, tmp_path):
    nested = tmp_path / "models" / "u2netp"
    nested.mkdir(parents=True)
    shutil.copy(rembg_dir / "u2netp.onnx", nested / "u2netp.onnx")
    remover = BackgroundRemover("u2netp", tmp_path, download=False, num_threads=1)
    assert remover.model_path == nested / "u2netp.onnx"


def test_missing_model_names_file_folder_and_fetch_command(tmp_path):
    with pytest.raises(ModelMissingError) as err:
        BackgroundRemover("u2netp", tmp_path, download=False)
    message = str(err.value)
    assert "u2netp.onnx" in message
    assert str(tmp_path) in message
    assert "scripts/fetch_test_models.py" in message
    assert f"U2NET_HOME={tmp_path} rembg d u2netp" in message


def test_failed_download_is_a_model_missing_error(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)  # the downloader only; rembg itself is real
    with pytest.raises(ModelMissingError, match="download failed: network is unreachable"):
        BackgroundRemover("u2net", tmp_path)


def test_corrupt_model_file_is_reported(tmp_path):
    (tmp_path / "u2netp.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ModelMissingError, match="cannot be loaded"):
        BackgroundRemover("u2netp", tmp_path, download=False)


def test_unknown_model_name_is_invalid(tmp_path):
    with pytest.raises(InvalidParameter, match="not-a-model"):
        BackgroundRemover("not-a-model", tmp_path)


def test_real_u2netp_mask_covers_the_ring(remover):
    img = ring_image(320, 240, centre=(0.4, 0.55))
    alpha = remover.mask(img)
    assert alpha.shape == (240, 320) and alpha.dtype == np.uint8
    fg = assess_foreground(alpha)
    expected = ring_bbox(320, 240, centre=(0.4, 0.55))
    assert fg.bbox is not None
    assert np.abs(np.subtract(fg.bbox, expected)).max() <= 4
    assert not fg.cut_by_border
    assert fg.problem(alpha.shape) is None


def test_meaningful_alpha():
    assert has_meaningful_alpha(ring_image(alpha=True)[..., 3])
    assert not has_meaningful_alpha(np.full((50, 50), 255, np.uint8))
    assert has_meaningful_alpha(np.zeros((50, 50), np.uint8))  # all transparent: reported as no object
    almost = np.full((100, 100), 255, np.uint8)
    almost[0, :20] = 0  # 0.2% stray transparent pixels
    assert not has_meaningful_alpha(almost)
    assert not has_meaningful_alpha(None)


@pytest.mark.parametrize(
    ("alpha_kwargs", "reason"),
    [
        ({"radius": 0.04}, "tiny_foreground"),
        ({"centre": (0.05, 0.5)}, "cut_by_border"),
        ({"centre": (0.5, 0.7)}, None),  # grazing the bottom edge is not "cut"
    ],
)
def test_foreground_problems(alpha_kwargs, reason):
    alpha = ring_image(320, 240, alpha=True, **alpha_kwargs)[..., 3]
    fg = assess_foreground(alpha)
    assert fg.problem(alpha.shape) == reason


def test_empty_foreground():
    alpha = np.zeros((240, 320), np.uint8)
    assert assess_foreground(alpha).problem(alpha.shape) == "empty_foreground"


@pytest.mark.parametrize("ratio", [0.5, 0.85, 1.0])
@pytest.mark.parametrize("centre", [(0.5, 0.5), (0.3, 0.65)])
def test_framing_puts_the_object_bbox_at_the_ratio_centred(ratio, centre):
    rgba = ring_image(320, 240, alpha=True, centre=centre)
    framed = frame_object(rgba[..., :3], rgba[..., 3], foreground_ratio=ratio, size=512)
    assert framed.shape == (512, 512, 3) and framed.dtype == np.uint8
    x0, y0, x1, y1 = object_bbox(framed)
    assert x1 - x0 == pytest.approx(ratio * 512, abs=2)
    assert y1 - y0 == pytest.approx(ratio * 512, abs=2)
    assert (x0 + x1) / 2 == pytest.approx(256, abs=1)
    assert (y0 + y1) / 2 == pytest.approx(256, abs=1)
    if ratio < 1:
        assert tuple(framed[0, 0]) == (GREY_LEVEL,) * 3


def test_framing_a_wide_object_fits_its_long_side():
    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[:] = (20, 200, 20)
    alpha = np.zeros((300, 400), np.uint8)
    alpha[100:150, 50:250] = 255  # 200 x 50 box
    framed = frame_object(rgb, alpha, foreground_ratio=0.8, size=500)
    x0, y0, x1, y1 = object_bbox(framed)
    # Lanczos rings by a pixel at hard synthetic edges, hence the tolerance.
    assert (x1 - x0, y1 - y0) == pytest.approx((400, 100), abs=2)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((250, 250), abs=1)


def test_framing_with_the_real_rembg_mask(remover):
    img = ring_image(320, 240, centre=(0.6, 0.45))
    framed = frame_object(img, remover.mask(img), foreground_ratio=0.85, size=512)
    x0, y0, x1, y1 = object_bbox(framed)
    assert max(x1 - x0, y1 - y0) == pytest.approx(0.85 * 512, abs=8)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((256, 256), abs=4)


def test_framing_without_alpha_pads_to_a_centred_square():
    img = ring_image(320, 240)
    framed = frame_object(img, None, size=512)
    # 320x240 scaled to 512x384, grey bands of 64 rows above and below (a few rows touched by the filter).
    assert (framed[:58] == GREY_LEVEL).all() and (framed[-58:] == GREY_LEVEL).all()
    assert not (framed[70:-70] == GREY_LEVEL).all()
