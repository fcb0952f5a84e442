"""load_image: every input kind, every unusual mode converted, every bad image refused with its reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from texocr.data.images import ImageError, load_image
from texocr.errors import TexocrError


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a tiny (wrong) pixel stream: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def formula_like(w: int = 60, h: int = 24) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    img.paste((0, 0, 0), (10, 8, 50, 14))
    return img


def test_inputs_path_bytes_file_and_image(tmp_path: Path) -> None:
    data = encode(formula_like())
    (tmp_path / "a.png").write_bytes(data)
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), data, bytearray(data), io.BytesIO(data),
                formula_like()):
        img = load_image(src)
        assert img.mode == "RGB" and img.size == (60, 24)
        assert img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((20, 10)) == (0, 0, 0)


def test_unseekable_file_object() -> None:
    data = encode(formula_like())

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b) -> int:  # type: ignore[override]
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert load_image(Pipe()).size == (60, 24)


@pytest.mark.parametrize(
    ("make", "fmt", "corner", "ink"),
    [
        # transparent background with opaque black ink: composited on white paper
        (lambda: _ink(Image.new("RGBA", (30, 12), (0, 0, 0, 0)), (0, 0, 0, 255)), "PNG", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("LA", (30, 12), (0, 0)), (0, 255)), "PNG", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("CMYK", (30, 12), (0, 0, 0, 0)), (0, 0, 0, 255)), "JPEG", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("1", (30, 12), 1), 0), "PNG", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("I;16", (30, 12), 65535), 0), "PNG", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("I", (30, 12), 65535), 0), "TIFF", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("F", (30, 12), 1.0), 0.0), "TIFF", (255,) * 3, (0,) * 3),
        (lambda: _palette_transparent(), "PNG", (255,) * 3, (0,) * 3),
        (lambda: _ink(Image.new("L", (30, 12), 255), 0), "GIF", (255,) * 3, (0,) * 3),
    ],
    ids=["RGBA", "LA", "CMYK", "1bit", "I;16", "I32", "F", "P+transparency", "GIF"],
)
def test_unusual_modes_become_rgb(make, fmt: str, corner: tuple, ink: tuple) -> None:
    img = load_image(encode(make(), fmt))
    assert img.mode == "RGB" and img.size == (30, 12)
    px = np.asarray(img).astype(int)
    assert np.abs(px[0, 0] - corner).max() <= 8  # JPEG is lossy
    assert np.abs(px[6, 15] - ink).max() <= 8


def _ink(img: Image.Image, value) -> Image.Image:
    img.paste(value, (5, 4, 25, 8))
    return img


def _palette_transparent() -> Image.Image:
    img = Image.new("P", (30, 12), 0)
    img.putpalette([255, 0, 0] + [0, 0, 0] + [0] * 762)  # index 0: red, fully transparent; index 1: black
    img.info["transparency"] = 0
    img.paste(1, (5, 4, 25, 8))
    return img


def test_sixteen_bit_keeps_its_contrast() -> None:
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    px = np.asarray(load_image(encode(Image.fromarray(ramp))))[:, :, 0]
    assert px.min() == 0 and px.max() == 255 and px[4, 0] in range(120, 136)


def test_missing_directory_empty_and_not_an_image(tmp_path: Path) -> None:
    cases = {
        tmp_path / "nope.png": "missing_image",
        tmp_path: "missing_image",
        b"": "not_an_image",
        b"%PDF-1.4 this is not an image": "not_an_image",
    }
    (tmp_path / "empty.png").write_bytes(b"")
    cases[tmp_path / "empty.png"] = "not_an_image"
    for src, reason in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(src)
        assert info.value.reason == reason
        assert isinstance(info.value, TexocrError) and str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_corrupt(fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    with pytest.raises(ImageError) as info:
        load_image(data[: len(data) // 2])
    assert info.value.reason == "corrupt_image" and "truncated" in str(info.value)


def test_damaged_pixel_stream_is_corrupt() -> None:
    data = bytearray(encode(formula_like()))
    start = data.index(b"IDAT") + 4
    data[start + 2 : start + 12] = b"\xff" * 10  # garbage inside the zlib stream
    with pytest.raises(ImageError) as info:
        load_image(bytes(data))
    assert info.value.reason == "corrupt_image"


def test_bomb_refused_from_header_whatever_pils_global_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own guard off: ours must still hold
    with pytest.raises(ImageError) as info:
        load_image(png_header_only(50_000, 50_000))
    assert info.value.reason == "too_large" and "pixels" in str(info.value)
    with pytest.raises(ImageError) as info:
        load_image(png_header_only(3000, 3000), max_pixels=1_000_000)
    assert info.value.reason == "too_large"


def test_pil_own_bomb_error_is_too_large() -> None:
    with pytest.raises(ImageError) as info:  # beyond 2 x PIL's MAX_IMAGE_PIXELS PIL refuses at open
        load_image(png_header_only(20_000, 20_000), max_pixels=None)
    assert info.value.reason == "too_large"


def test_enormous_but_allowed_is_downscaled_keeping_aspect() -> None:
    img = load_image(encode(formula_like(3000, 600)), max_side=1000)
    assert img.size == (1000, 200) and img.mode == "RGB"
    jpg = load_image(encode(formula_like(3000, 600), "JPEG"), max_side=1000)  # the draft path
    assert jpg.size == (1000, 200)
    assert load_image(encode(formula_like(3000, 600)), max_side=None).size == (3000, 600)


def test_too_small() -> None:
    for size in [(1, 40), (40, 1)]:
        with pytest.raises(ImageError) as info:
            load_image(Image.new("RGB", size, "white"))
        assert info.value.reason == "too_small"
    assert load_image(Image.new("RGB", (1, 40)), min_side=1).size == (1, 40)


def test_exif_orientation_applied() -> None:
    img = formula_like(60, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (24, 60)
    assert load_image(encode(img, "JPEG", exif=exif.tobytes()), exif_transpose=False).size == (60, 24)


# ---------------------------------------------------------------- glyph size and rescaling

def _glyphs(height: int, *, invert: bool = False) -> Image.Image:
    """Dark 'glyphs' on white: bars of `height` px (and a few shorter ones, as x-height letters are)."""
    from PIL import ImageDraw

    img = Image.new("RGB", (40 * height, 3 * height), "white")
    draw = ImageDraw.Draw(img)
    for k in range(12):
        h = height if k % 4 else height // 2
        x = height + 3 * k * height
        draw.rectangle([x, height, x + max(1, height // 3), height + h - 1], fill="black")
    return Image.eval(img, lambda v: 255 - v) if invert else img


def test_glyph_height_follows_the_resolution_and_either_polarity() -> None:
    from texocr.data.images import glyph_height

    assert glyph_height(_glyphs(12)) == pytest.approx(12)
    assert glyph_height(_glyphs(24)) == pytest.approx(24)
    assert glyph_height(_glyphs(12, invert=True)) == pytest.approx(12)  # light ink on a dark screen
    assert glyph_height(Image.new("RGB", (50, 20), "white")) is None
    speckled = _glyphs(12)
    for x in range(2, 400, 6):  # 67 one-pixel specks (dust, JPEG noise) outnumber the 12 glyphs: not glyphs
        speckled.putpixel((x, 2), (0, 0, 0))
    assert glyph_height(speckled) == pytest.approx(12)


def test_rescale_to_glyph_height_scales_clamps_and_keeps_near_sizes() -> None:
    from texocr.data.images import glyph_height, rescale_to_glyph_height

    small = _glyphs(12)
    up = rescale_to_glyph_height(small, 24)
    assert up.size == (2 * small.width, 2 * small.height)
    assert glyph_height(up) == pytest.approx(24, rel=0.1)
    assert rescale_to_glyph_height(small, 120).size == (3 * small.width, 3 * small.height)  # max_scale 3
    big = _glyphs(48)
    assert rescale_to_glyph_height(big, 24) is big  # only enlarged by default...
    assert rescale_to_glyph_height(big, 24, min_scale=0.5).size == (_glyphs(24).width, _glyphs(24).height)
    assert rescale_to_glyph_height(small, 12.5) is small  # within 10 %: untouched
    blank = Image.new("RGB", (50, 20), "white")
    assert rescale_to_glyph_height(blank, 24) is blank
