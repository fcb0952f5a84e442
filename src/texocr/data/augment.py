"""Image augmentations for rendered formulas (PIL + numpy, no torchvision), seeded and deterministic.

    from texocr.data.augment import augment
    img = augment(render, random.Random(7), style="printed")      # or "handwritten"

Input: RGB, black ink on white, cropped to the ink (what the renderers return). `printed` imitates scanned
and screenshotted papers (padding, resolution, ink weight, slight rotation/shear/perspective, paper colour and
texture, blur, noise, JPEG); `handwritten` bends the strokes with a smooth random displacement field, makes
the baseline wander, slants, evens the stroke width like a pen, then applies a milder printed pass. Every
operation is bounded so the formula stays legible: output sides stay within [MIN_SIDE, MAX_SIDE].

`im2markup` is not a random degradation but the published im2latex-100k pipeline (margin, bucket sizes,
downsampling by 2 of a render at twice the resolution); `SyntheticSource(downsample_share=)` uses it.
"""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MAX_SIDE = 2048
MIN_SIDE = 8
MAX_STRENGTH = 2.0


def augment(img: Image.Image, rng: random.Random, style: str = "printed", strength: float = 1.0) -> Image.Image:
    """One random augmentation of `img` for `style` (`printed` or `handwritten`); `strength` 0 = padding only.

    Up to 1, `strength` raises how often and how strongly each degradation is applied; above 1 (at most
    `MAX_STRENGTH`) the handwriting distortion alone grows further, a messier writer than the default.
    """
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise ValueError(f"augmentation strength must be in [0, {MAX_STRENGTH}], got {strength}")
    if style == "handwritten":
        img = handwriting(img, rng, strength)
        return printed(img, rng, 0.5 * strength, thicken=False)
    return printed(img, rng, strength)


def printed(img: Image.Image, rng: random.Random, strength: float = 1.0, thicken: bool = True) -> Image.Image:
    """Scan/screenshot-like degradations, each applied with a probability that grows with `strength`."""
    p = min(1.0, max(0.0, strength))
    img = rescale(img, rng.uniform(1 - 0.4 * p, 1 + 0.3 * p))
    if thicken and rng.random() < 0.25 * p:
        # thicker only: eroding renders' thin strokes (hairlines at 100-150 dpi) erases them
        img = ink_weight(img, 1)
    img = pad(img, rng)
    if rng.random() < 0.3 * p:
        img = rotate_shear(img, angle=rng.uniform(-2, 2) * p, shear=rng.uniform(-0.08, 0.08) * p)
    if rng.random() < 0.15 * p:
        img = perspective(img, rng, 0.03 * p)
    if rng.random() < 0.3 * p:  # most im2latex-like images are plain black on white
        img = colorize(img, rng, texture=rng.random() < 0.5)
    if rng.random() < 0.35 * p:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.3 * p:
        img = noise(img, rng, rng.uniform(2, 12))
    if rng.random() < 0.3 * p:
        img = jpeg(img, rng.randint(30, 90))
    return _bound(img)


def handwriting(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Pen-like: elastic strokes, wandering baseline, slant, even stroke width, pure black ink.

    The distortion's amplitudes scale with `strength`, also above 1 (a messier hand).
    """
    p = max(0.0, strength)
    img = rescale(img.convert("L"), rng.uniform(0.8, 1.2))  # strokes are black on white: one channel is enough
    img = pad(img, rng, lo=6, hi=12)
    h = img.height
    img = warp(img, rng, elastic=p * rng.uniform(0.012, 0.025) * max(h, 60),
               wave=p * rng.uniform(0.01, 0.035) * max(h, 60), cell=rng.randint(18, 30))
    img = rotate_shear(img, angle=rng.uniform(-3, 3) * p, shear=rng.uniform(-0.3, 0.15) * p)
    img = pen(img, width=rng.choice([1, 1, 2]) if h > 120 else 1)
    return _bound(img)


# -- im2latex-100k's look ----------------------------------------------------------------------------

IM2MARKUP_BUCKETS = ((120, 50), (160, 40), (200, 40), (200, 50), (240, 40), (240, 50), (280, 40), (280, 50),
                     (320, 40), (320, 50), (360, 40), (360, 50), (360, 60), (360, 100), (400, 50), (400, 160),
                     (500, 100), (500, 200), (600, 100), (800, 100), (800, 800))
"""im2markup's `preprocess_images.py` buckets after its downsampling by 2 (its defaults, [[240, 100], [320, 80],
...], halved), in its order: an image goes to the first one that holds it. These are the 17 sizes seen in the
published im2latex-100k images (120x50, 160x40, 200x40, ... 500x100)."""
IM2MARKUP_PAD = 4
"""White margin before bucketing, in output pixels (im2markup pads 8 px at 200 dpi, then halves)."""
_DOWNSAMPLE_FILTERS = ((Image.Resampling.LANCZOS, 6), (Image.Resampling.BOX, 2), (Image.Resampling.BILINEAR, 2))


def im2markup(img: Image.Image, rng: random.Random, factor: int = 2, *, solid_p: float = 0.85, bold_p: float = 0.5,
              bucket_p: float = 0.8, pad: int = IM2MARKUP_PAD,
              resample: Image.Resampling | None = None) -> Image.Image:
    """im2latex-100k's pipeline (harvardnlp im2markup) after the renderer, for `img`, a render at `factor` x the
    wanted resolution:

    1. solid ink (probability `solid_p`): every pixel the render's anti-aliasing touched becomes black. The
       published images were made by ImageMagick (`convert -density 200 f.pdf f.png`: an RGBA PNG whose edge
       pixels are black with partial alpha) and read by PIL's `convert('L')`, which drops the alpha: their
       strokes are about one 200-dpi pixel bolder than any anti-aliased render (bench/render_realism.md).
       Then, with probability `bold_p`, that solid ink grows by one pixel to the right: ghostscript fills every
       pixel a glyph touches at all, a little more than dvipng's coverage; the model reads the published images
       about as well as such renders, better than renders without it (bench/render_realism.md);
    2. crop to the ink (im2markup's `crop_image`: every pixel that is not pure white);
    3. a `pad * factor` px white margin on every side; with probability `bucket_p` the image instead goes at the
       top-left (after that margin) of the first `IM2MARKUP_BUCKETS` size (x `factor`) that holds it with the
       margins, white below and to the right (`pad_group_image`);
    4. downsampled by `factor`, sides truncated as `int(size / ratio)` (`downsample_image`): soft grey edges.
       The filter is im2markup's LANCZOS, or for variety (drawn from `rng`) a box (area) or bilinear one;
       `resample` fixes it.

    Output RGB with grey values (the published images are grey or grey-valued RGB)."""
    if factor < 1:
        raise ValueError(f"downsample factor must be >= 1, got {factor}")
    gray = img.convert("L")
    if rng.random() < solid_p:
        ink = np.asarray(gray) < 255
        if rng.random() < bold_p:
            ink[:, 1:] |= ink[:, :-1].copy()
        gray = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8), mode="L")
    box = ImageOps.invert(gray).getbbox()
    if box:
        gray = gray.crop(box)
    w, h = gray.size
    m = pad * factor
    need = (w + 2 * m, h + 2 * m)
    size = need
    if rng.random() < bucket_p:
        size = next(((bw * factor, bh * factor) for bw, bh in IM2MARKUP_BUCKETS
                     if need[0] <= bw * factor and need[1] <= bh * factor), need)
    canvas = Image.new("L", size, 255)
    canvas.paste(gray, (m, m))
    if resample is None:
        filters, weights = zip(*_DOWNSAMPLE_FILTERS)
        resample = rng.choices(filters, weights=weights)[0]
    out = (max(1, int(size[0] / factor)), max(1, int(size[1] / factor)))
    return _bound((canvas.resize(out, resample) if factor > 1 else canvas).convert("RGB"))


# -- geometric ----------------------------------------------------------------------------------------

def rescale(img: Image.Image, factor: float) -> Image.Image:
    """Resolution jitter: resize by `factor` with a random-ish filter (bounded sides)."""
    w, h = img.size
    factor = min(factor, MAX_SIDE / max(w, h))
    factor = max(factor, MIN_SIDE / max(1, min(w, h)))
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.BICUBIC)


def pad(img: Image.Image, rng: random.Random, lo: int = 2, hi: int = 24) -> Image.Image:
    """White margins, independently random on each side (scaled to the image height).

    Applied before any colouring, so white is the paper; later steps read the paper colour from a corner."""
    s = max(0.5, img.height / 64)
    l, t, r, b = (round(rng.randint(lo, hi) * s) for _ in range(4))
    return ImageOps.expand(img, border=(l, t, r, b), fill=255 if img.mode == "L" else (255, 255, 255))


def rotate_shear(img: Image.Image, angle: float = 0.0, shear: float = 0.0) -> Image.Image:
    """Small rotation (degrees) and horizontal shear (x += shear * y), canvas grown to keep all the ink."""
    fill = _corner(img)
    if shear:
        w, h = img.size
        extra = abs(shear) * h
        nw = int(w + extra)
        off = extra if shear > 0 else 0
        # affine maps output (x, y) -> input (x + shear * y - off, y)
        img = img.transform((nw, h), Image.Transform.AFFINE, (1, shear, -off, 0, 1, 0),
                            resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if angle:
        img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=fill)
    return img


def perspective(img: Image.Image, rng: random.Random, amount: float) -> Image.Image:
    """Move the four corners by up to `amount` of the size (as a phone photo of a page)."""
    w, h = img.size

    def j(v: float, n: int) -> float:
        return v + rng.uniform(-amount, amount) * n

    quad = (j(0, w), j(0, h), j(0, w), j(h, h), j(w, w), j(h, h), j(w, w), j(0, h))
    return img.transform((w, h), Image.Transform.QUAD, quad, resample=Image.Resampling.BILINEAR,
                         fillcolor=_corner(img))


def warp(img: Image.Image, rng: random.Random, elastic: float, wave: float, cell: int = 24) -> Image.Image:
    """Handwriting-like geometry in one resampling: a smooth random displacement field of about `elastic` px
    (features ~3 `cell`s wide) bends the strokes, and a slow vertical wave of `wave` px moves the baseline."""
    w, h = img.size
    nrng = np.random.default_rng(rng.getrandbits(63))
    coarse = (max(2, h // (3 * cell) + 2), max(2, w // (3 * cell) + 2))
    dx = _upsample(nrng.uniform(-1, 1, coarse), w, h) * elastic
    dy = _upsample(nrng.uniform(-1, 1, coarse), w, h) * elastic
    x = np.linspace(0, 1, w, dtype=np.float32)
    line = sum(rng.uniform(-1, 1) * np.sin(2 * np.pi * (k * x + rng.random())) / k for k in (1, 2, 3))
    return remap(img, dx, dy + (line * wave)[None, :])


def _upsample(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Smoothly resize a small 2-D field to [h, w] (bicubic)."""
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BICUBIC))


def remap(img: Image.Image, dx: np.ndarray, dy: np.ndarray) -> Image.Image:
    """Output pixel (x, y) <- input (x + dx, y + dy), bilinear; `dx`, `dy` are [H, W] pixel offsets."""
    mode = "L" if img.mode == "L" else "RGB"
    a = np.asarray(img.convert(mode), dtype=np.float32).reshape(img.height, img.width, -1)  # [H, W, C]
    h, w, c = a.shape
    fill = np.atleast_1d(np.array(_corner(img), np.float32))[:c]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    sx, sy = xs + dx, ys + dy
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    padded = np.empty((h + 2, w + 2, c), np.float32)  # a one-pixel border of paper for out-of-range reads
    padded[:] = fill
    padded[1:-1, 1:-1] = a
    x0, y0 = np.clip(x0 + 1, 0, w), np.clip(y0 + 1, 0, h)
    x1, y1 = np.clip(x0 + 1, 0, w + 1), np.clip(y0 + 1, 0, h + 1)
    top = padded[y0, x0] * (1 - fx) + padded[y0, x1] * fx
    bot = padded[y1, x0] * (1 - fx) + padded[y1, x1] * fx
    out = top * (1 - fy) + bot * fy
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out[..., 0] if c == 1 else out, mode=mode)


# -- ink and paper ------------------------------------------------------------------------------------

def ink_weight(img: Image.Image, step: int) -> Image.Image:
    """Thicker (`step` > 0, dilate the dark ink) or thinner (< 0, erode) strokes, by one 3x3 filter pass."""
    return img.filter(ImageFilter.MinFilter(3) if step > 0 else ImageFilter.MaxFilter(3))


def pen(img: Image.Image, width: int = 2) -> Image.Image:
    """Even, pen-like strokes: threshold the glyphs' ink, dilate by `width`, soften the edge a little."""
    g = np.asarray(img.convert("L"))
    # a high threshold keeps the faint antialiased hairlines of small renders, so strokes do not break up
    ink = Image.fromarray(np.where(g < 215, 0, 255).astype(np.uint8), mode="L")
    if width > 1:
        ink = ink.filter(ImageFilter.MinFilter(2 * (width // 2) + 1))
    ink = ink.filter(ImageFilter.GaussianBlur(0.5))
    return ink.convert("RGB")


def colorize(img: Image.Image, rng: random.Random, texture: bool = False) -> Image.Image:
    """Tint ink and paper (dark ink, light paper) and optionally add a low-frequency paper texture."""
    a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0  # [H, W], 1 = paper
    ink = np.array([rng.randint(0, 70), rng.randint(0, 70), rng.randint(0, 90)], np.float32)
    base = rng.randint(215, 255)  # near-neutral paper, slightly tinted
    paper = np.array([min(255, base + rng.randint(-6, 6)) for _ in range(3)], np.float32)
    out = ink + a[..., None] * (paper - ink)  # [H, W, 3]
    if texture:
        h, w = a.shape
        nrng = np.random.default_rng(rng.getrandbits(63))
        small = nrng.normal(0, 1, (max(2, h // 16), max(2, w // 16))).astype(np.float32)
        tex = np.asarray(Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        out += (tex * rng.uniform(3, 10))[..., None] * a[..., None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="RGB")


def noise(img: Image.Image, rng: random.Random, std: float) -> Image.Image:
    """Additive Gaussian pixel noise with standard deviation `std` (0-255 scale)."""
    nrng = np.random.default_rng(rng.getrandbits(63))
    a = np.asarray(img, dtype=np.float32)
    a = a + nrng.normal(0, std, a.shape[:2])[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="RGB")


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """Round-trip through JPEG at `quality` (block artefacts)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB")


def _corner(img: Image.Image) -> Any:
    """The paper colour (an int for "L" images, a tuple for RGB), read from the top-left pixel: `pad` runs first."""
    return img.getpixel((0, 0))


def _bound(img: Image.Image) -> Image.Image:
    w, h = img.size
    if max(w, h) > MAX_SIDE or min(w, h) < MIN_SIDE:
        return rescale(img, 1.0)
    return img
