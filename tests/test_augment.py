"""Augmentations: seeded, deterministic, bounded sizes, and the formula stays visible."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from texocr.data.augment import (
    MAX_SIDE,
    MIN_SIDE,
    augment,
    jpeg,
    printed,
    remap,
    rescale,
)


def _formula() -> Image.Image:
    im = Image.new("RGB", (220, 48), "white")
    d = ImageDraw.Draw(im)
    d.text((4, 10), "x^2 + y_1 = (a + b) / c", fill="black")
    d.line((4, 40, 200, 40), fill="black", width=2)
    return im


def _ink(img: Image.Image) -> float:
    """Fraction of pixels clearly darker than the paper (the median)."""
    g = np.asarray(img.convert("L"), dtype=np.float32)
    return float((g < np.median(g) - 60).mean())


@pytest.mark.parametrize("style", ["printed", "handwritten"])
def test_deterministic_and_legible(style: str) -> None:
    src = _formula()
    for seed in range(25):
        a = augment(src, random.Random(seed), style)
        b = augment(src, random.Random(seed), style)
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert a.mode == "RGB"
        assert MIN_SIDE <= min(a.size) and max(a.size) <= MAX_SIDE
        assert 0.5 * src.width <= a.width <= 3 * src.width
        assert _ink(a) > 0.002, f"seed {seed}: no ink left"
    assert not np.array_equal(np.asarray(augment(src, random.Random(1), style)),
                              np.asarray(augment(src, random.Random(2), style)))


def test_strength_zero_only_pads() -> None:
    src = _formula()
    out = printed(src, random.Random(3), strength=0.0)
    assert out.width >= src.width and out.height >= src.height
    assert set(np.unique(np.asarray(out.convert("L")))) <= set(np.unique(np.asarray(src.convert("L"))))


def test_rescale_bounds_and_remap_identity() -> None:
    src = _formula()
    assert max(rescale(src, 100).size) <= MAX_SIDE
    assert min(rescale(src, 0.001).size) >= MIN_SIDE
    zero = np.zeros((src.height, src.width), np.float32)
    assert np.array_equal(np.asarray(remap(src, zero, zero)), np.asarray(src))
    shifted = np.asarray(remap(src, zero + 3, zero))  # reading 3 px to the right moves the ink left
    assert np.array_equal(shifted[:, :-3], np.asarray(src)[:, 3:])


def test_jpeg_changes_pixels_keeps_size() -> None:
    src = _formula()
    out = jpeg(src, 30)
    assert out.size == src.size and not np.array_equal(np.asarray(out), np.asarray(src))
