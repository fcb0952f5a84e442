"""Load any image a user or a data set hands us as a clean RGB `PIL.Image`, or say clearly why not.

    img = load_image("eq.png")                      # a path, bytes, a file object or a PIL.Image
    img = load_image(data, max_side=2048)           # enormous-but-allowed images are downscaled
    img = rescale_to_glyph_height(img, 24)          # small glyphs enlarged to 24 px (`glyph_height`)

Every failure raises `ImageError` (a `TexocrError`) whose `.reason` is one short machine-readable word,
so a data source can skip that one row and count it, and the CLI/HTTP API can print one clear line:

- `missing_image`  the path does not exist (or is a directory)
- `not_an_image`   empty input, or bytes no image format recognizes
- `corrupt_image`  the header reads but the pixels do not decode (truncated, damaged stream)
- `too_large`      more pixels than `max_pixels` (a decompression bomb), checked from the header before decoding
- `too_small`      a side shorter than `min_side` (zero-area images included)

Unusual modes are good images, converted rather than refused: RGBA/LA/PA/P-with-transparency are composited
on white (formulas are dark ink on light paper), CMYK/YCbCr/LAB/HSV and 1-bit go through PIL's conversion,
16-bit and 32-bit integer (`I;16`, `I`) and float (`F`) grayscale are scaled to 8 bits.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

from texocr.errors import TexocrError

if TYPE_CHECKING:  # PIL is imported inside functions so importing this module stays cheap
    from PIL import Image as _PILImage

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], "_PILImage.Image"]

DEFAULT_MAX_PIXELS = 64_000_000
"""Bomb guard: ~8000x8000. PIL's own guard (2 x Image.MAX_IMAGE_PIXELS, ~179 M) still applies above it."""
DEFAULT_MAX_SIDE = 4096
"""Longer sides are downscaled to this (aspect kept); no model looks at more than this anyway."""
DEFAULT_MIN_SIDE = 2
"""A side shorter than this cannot hold a readable formula."""

REASONS = ("missing_image", "not_an_image", "corrupt_image", "too_large", "too_small")


class ImageError(TexocrError):
    """An image that cannot be used; `.reason` is one of `REASONS`, `.detail` the underlying message."""

    def __init__(self, reason: str, message: str, *, name: str = "", detail: str = "") -> None:
        self.reason = reason
        self.name = name
        self.detail = detail or message
        super().__init__(f"{name}: {message}" if name else message)


def _name_of(src: object) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    name = getattr(src, "name", None)  # open files and uploaded-file wrappers
    if isinstance(name, str):
        return name
    return "<bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else f"<{type(src).__name__}>"


def _open(src: ImageSource, name: str):  # -> PIL.Image.Image (lazy: header read, pixels not decoded)
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise ImageError("missing_image", "no such file", name=name)
        if path.is_dir():
            raise ImageError("missing_image", "is a directory, not an image file", name=name)
        try:
            if path.stat().st_size == 0:
                raise ImageError("not_an_image", "empty file", name=name)
            fp: IO[bytes] = io.BytesIO(path.read_bytes())
        except OSError as e:
            raise ImageError("missing_image", f"cannot read: {e.strerror or e}", name=name) from None
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise ImageError("not_an_image", "empty data", name=name)
        fp = io.BytesIO(bytes(src))
    elif hasattr(src, "read"):
        fp = src  # type: ignore[assignment]
        if not (hasattr(fp, "seekable") and fp.seekable()):
            fp = io.BytesIO(fp.read())  # PIL needs to seek; sockets and pipes cannot
    else:
        raise ImageError("not_an_image", f"expected a path, bytes, a file object or a PIL image, got {type(src).__name__}",
                         name=name)
    try:
        with warnings.catch_warnings():
            # our own pixel budget is checked right after; PIL's warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageError("too_large", f"too many pixels (decompression bomb guard): {e}", name=name) from None
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "not an image (no known format recognizes it)", name=name) from None
    except Exception as e:  # noqa: BLE001 - format plugins raise many types on damaged headers
        raise ImageError("corrupt_image", f"unreadable image header: {e}", name=name, detail=str(e)) from None


def _to_rgb(img):  # PIL.Image -> PIL.Image in mode RGB
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_to_8bit(img).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa") or mode == "L" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def _scale_to_8bit(img):  # 16/32-bit integer or float grayscale -> mode L
    import numpy as np
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)  # [H, W]
    if img.mode.startswith("I;16"):
        out = a / 257.0  # full 16-bit range maps onto full 8-bit range, so contrast is kept as stored
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0 and img.mode == "F":
            out = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = a
        elif lo >= 0.0 and hi <= 65535.0:
            out = a / 257.0
        else:  # arbitrary range: stretch, a constant image becomes white paper
            out = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.full_like(a, 255.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_side: int | None = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    exif_transpose: bool = True,
):  # -> PIL.Image.Image
    """Open, fully decode and convert `src` to an RGB image; raise `ImageError` with a `.reason` if unusable.

    `max_pixels` refuses images whose header declares more pixels (before any decoding); `max_side`
    downscales allowed images whose longer side is bigger; `min_side` refuses degenerate images.
    `exif_transpose` applies a camera's orientation tag (photos of formulas taken with a phone).
    """
    from PIL import Image, ImageOps

    name = _name_of(src)
    img = _open(src, name)
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError("too_large", f"{w}x{h} = {w * h:,} pixels is more than the limit of {max_pixels:,}",
                         name=name)
    if min(w, h) < max(min_side, 1):
        raise ImageError("too_small", f"{w}x{h} is smaller than {min_side} pixels on a side", name=name)
    if max_side is not None and max(w, h) > max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))  # let libjpeg decode at a reduced scale: far less memory and time
    try:
        img.load()  # force the full decode here, so truncation surfaces now and not inside a training batch
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageError("corrupt_image", f"cannot decode image data: {e}", name=name, detail=str(e)) from None
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return img


GLYPH_HEIGHT_HELP = ("enlarge inputs whose glyphs are smaller than PX pixels tall: more accurate, slower "
                     "(texocr's compact model reads best at 20-24)")


def glyph_height(img) -> float | None:  # PIL.Image -> pixels, or None when there is no ink to measure
    """A font-size measure: the 75th percentile of the heights of the ink's connected components (specks of under
    4 pixels' box ignored). Proportional to the resolution for a given formula: on 2,096 TeX renders at 120-200 dpi
    it is 0.100 x dpi on average (coefficient of variation 0.21), so ~24 px at 240 dpi (bench/compact.md)."""
    import numpy as np
    from scipy import ndimage

    gray = np.asarray(img.convert("L"), dtype=np.int16)
    lo, hi = int(gray.min()), int(gray.max())
    if hi - lo < 8:
        return None
    mid = (lo + hi) / 2
    ink = gray < mid if np.median(gray) >= mid else gray > mid  # dark ink on paper, or light on a dark screen
    labels, _ = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))  # 8-connected components
    boxes = ndimage.find_objects(labels)
    heights = np.array([b[0].stop - b[0].start for b in boxes if b is not None])
    widths = np.array([b[1].stop - b[1].start for b in boxes if b is not None])
    keep = heights * widths >= 4
    return float(np.percentile(heights[keep], 75)) if keep.any() else None


def rescale_to_glyph_height(img, target: float, *, min_scale: float = 1.0, max_scale: float = 3.0):
    """`img` resized so that its `glyph_height` is about `target` pixels (the scale clamped to [min_scale,
    max_scale]: by default only enlarged, as a smaller image holds less to read; unchanged when there is no ink or
    the change would be under 10 %)."""
    scale = glyph_scale(glyph_height(img), target, min_scale=min_scale, max_scale=max_scale)
    return rescaled(img, scale)


def glyph_scale(height: float | None, target: float | None, *, min_scale: float = 1.0,
                max_scale: float = 3.0) -> float:
    """The factor `rescale_to_glyph_height` applies to an image whose `glyph_height` is `height` (1.0: unchanged:
    no ink, no target, or a change under 10 %)."""
    if not height or not target:
        return 1.0
    scale = min(max(target / height, min_scale), max_scale)
    return 1.0 if abs(scale - 1) < 0.1 else scale


def rescaled(img, scale: float):
    """`img` resized by `scale` (itself when 1.0), as `rescale_to_glyph_height` resizes."""
    from PIL import Image

    if scale == 1.0:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
