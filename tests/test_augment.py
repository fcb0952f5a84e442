"""Augmentations: seeded, deterministic, bounded sizes, and the formula stays visible."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from texocr.data.augment import (
    IM2MARKUP_BUCKETS,
    MAX_SIDE,
    MAX_STRENGTH,
    MIN_SIDE,
    augment,
    handwriting,
    im2markup,
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


def _bar() -> Image.Image:
    """A tall vertical stroke: slant, rotation and the wandering field all widen its ink columns."""
    im = Image.new("RGB", (60, 200), "white")
    ImageDraw.Draw(im).line((30, 10, 30, 190), fill="black", width=3)
    return im


def _ink_columns(img: Image.Image) -> int:
    cols = (np.asarray(img.convert("L")) < 128).any(axis=0)
    return int(cols.sum())


def test_handwriting_strength_above_one_is_a_messier_hand() -> None:
    # the same seed draws the same random numbers at every strength; only the amplitudes scale
    widths = {s: [_ink_columns(handwriting(_bar(), random.Random(seed), s)) for seed in range(12)]
              for s in (0.0, 1.0, 1.8)}
    assert np.mean(widths[0.0]) < np.mean(widths[1.0]) < np.mean(widths[1.8])
    assert sum(b >= a for a, b in zip(widths[1.0], widths[1.8])) >= 10  # per seed, not only on average
    out = augment(_formula(), random.Random(0), "handwritten", MAX_STRENGTH)
    assert _ink(out) > 0.002  # still legible at the maximum
    for bad in (-0.1, MAX_STRENGTH + 0.5):
        with pytest.raises(ValueError, match="strength"):
            augment(_formula(), random.Random(0), "handwritten", bad)


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


def _hires_strokes() -> Image.Image:
    """A 2x render stand-in, cropped to the ink: black bars of odd widths at odd offsets, with a grey
    anti-aliased fringe (value 200) on their left side."""
    im = Image.new("L", (181, 47), 255)
    d = ImageDraw.Draw(im)
    for x in range(1, 176, 13):
        d.rectangle((x, 0, x + 4, 46), fill=0)
        d.line((x - 1, 0, x - 1, 46), fill=200)
    return im.convert("RGB")


def test_im2markup_halves_pads_buckets_and_softens_edges() -> None:
    src = _hires_strokes()
    out = im2markup(src, random.Random(0), 2, solid_p=1.0, bucket_p=1.0, resample=Image.Resampling.LANCZOS)
    # (181 + 16, 47 + 16) fits im2markup's first bucket, 240x100 before halving
    assert out.size == (120, 50) and out.size in IM2MARKUP_BUCKETS and out.mode == "RGB"
    g = np.asarray(out.convert("L"))
    cols, rows = np.nonzero((g < 128).any(0))[0], np.nonzero((g < 128).any(1))[0]
    assert 3 <= cols[0] <= 5 and 3 <= rows[0] <= 5  # the 8 px margin at 2x is 4 px
    src_cols = np.nonzero((np.asarray(src.convert("L")) < 255).any(0))[0]
    assert abs((cols[-1] - cols[0] + 1) - (src_cols[-1] - src_cols[0] + 1) / 2) <= 1  # half as wide
    assert abs((rows[-1] - rows[0] + 1) - 47 / 2) <= 2
    # the input has only 0, 200 and 255; halving 5 px bars at odd offsets leaves soft grey edges
    ink = g[g < 235]
    assert ((ink > 40) & (ink < 215)).mean() > 0.2
    assert (g[:, 100:] == 255).all()  # the bucket's white right-hand side
    # solid ink: the grey fringe counts as ink (ImageMagick's alpha dropped); without it the ink is lighter
    aa = np.asarray(im2markup(src, random.Random(0), 2, solid_p=0.0, bucket_p=1.0,
                              resample=Image.Resampling.LANCZOS).convert("L"))
    assert aa.shape == g.shape and aa.astype(int).sum() > g.astype(int).sum()


def test_im2markup_without_bucket_and_deterministic() -> None:
    src = _hires_strokes()
    out = im2markup(src, random.Random(3), 2, bucket_p=0.0)
    left, top, right, bottom = src.convert("L").point(lambda v: 255 - v).getbbox()  # im2markup crops to the ink
    assert out.size == ((right - left + 16) // 2, (bottom - top + 16) // 2)
    assert np.array_equal(np.asarray(out), np.asarray(im2markup(src, random.Random(3), 2, bucket_p=0.0)))
    big = Image.new("RGB", (1700, 30), "black")  # wider than every bucket: margins only
    assert im2markup(big, random.Random(0), 2, bucket_p=1.0).size == ((1700 + 16) // 2, (30 + 16) // 2)
