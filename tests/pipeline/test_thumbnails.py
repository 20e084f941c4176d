"""JPEG previews of candidate frames (pipeline/thumbnails.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.thumbnails import jpeg_thumbnail
from tests.media import RING_COLOUR, ring_image


def test_thumbnail_keeps_aspect_and_colour_within_the_long_side():
    data = jpeg_thumbnail(ring_image(640, 480), max_side=160)
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG" and im.size == (160, 120)
    # left of the centre, on the ring's band, away from the white marker drawn at angle 0
    centre_of_ring_band = np.asarray(im.convert("RGB"))[60, 80 - 28]
    assert np.abs(centre_of_ring_band.astype(int) - RING_COLOUR).max() < 80


def test_small_images_are_not_enlarged():
    im = Image.open(io.BytesIO(jpeg_thumbnail(ring_image(64, 48))))
    assert im.size == (64, 48)


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3))]
)
def test_non_rgb_uint8_is_refused(bad):
    with pytest.raises(ValueError, match="uint8"):
        jpeg_thumbnail(bad)
