"""Decoding an image file: a cap on its pixels, checked on the header before the pixels
are decoded, so that a small file declaring a huge image costs neither memory nor time."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from support.images import huge_png_header

from ray_fer.data.formats.base import (
    MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    DatasetFormatError,
    decode_image,
    max_image_pixels,
)


def test_an_image_declaring_more_pixels_than_the_cap_is_refused_by_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png_header())
    assert path.stat().st_size < 100_000
    with pytest.raises(DatasetFormatError, match=rf"{path}: more than [\d,]+ pixels, above "
                       r"the limit of 50,000,000 per image; .*--max-pixels"):
        decode_image(path)


def test_the_cap_is_exact_and_configurable(tmp_path, monkeypatch):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.full((40, 50), 90, np.uint8))
    assert max_image_pixels() == MAX_IMAGE_PIXELS
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    assert decode_image(path).shape == (40, 50)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
    with pytest.raises(DatasetFormatError, match="50 x 40 pixels, above the limit of 1,999"):
        decode_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(DatasetFormatError, match=f"{MAX_PIXELS_ENV}='lots'"):
        decode_image(path)
