"""Image augmentations for rendered formulas (PIL + numpy, no torchvision), seeded and deterministic.

    from texocr.data.augment import augment
    img = augment(render, random.Random(7), style="printed")      # or "handwritten"

Input: RGB, black ink on white, cropped to the ink (what the renderers return). `printed` imitates scanned
and screenshotted papers (padding, resolution, ink weight, slight rotation/shear/perspective, paper colour and
texture, blur, noise, JPEG); `handwritten` bends the strokes with a smooth random displacement field, makes
the baseline wander, slants, evens the stroke width like a pen, then applies a milder printed pass. Every
operation is bounded so the formula stays legible: output sides stay within [MIN_SIDE, MAX_SIDE].
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MAX_SIDE = 2048
MIN_SIDE = 8


def augment(img: Image.Image, rng: random.Random, style: str = "printed", strength: float = 1.0) -> Image.Image:
    """One random augmentation of `img` for `style` (`printed` or `handwritten`); `strength` 0 = padding only."""
    if style == "handwritten":
        img = handwriting(img, rng, strength)
        return printed(img, rng, 0.5 * strength, thicken=False)
    return printed(img, rng, strength)


def printed(img: Image.Image, rng: random.Random, strength: float = 1.0, thicken: bool = True) -> Image.Image:
    """Scan/screenshot-like degradations, each applied with a probability that grows with `strength`."""
    p = min(1.0, max(0.0, strength))
    img = rescale(img, rng.uniform(1 - 0.4 * p, 1 + 0.3 * p))
    if thicken and rng.random() < 0.35 * p:
        img = ink_weight(img, rng.choice([-1, 1, 1]))
    img = pad(img, rng)
    if rng.random() < 0.3 * p:
        img = rotate_shear(img, angle=rng.uniform(-2, 2) * p, shear=rng.uniform(-0.08, 0.08) * p)
    if rng.random() < 0.15 * p:
        img = perspective(img, rng, 0.03 * p)
    if rng.random() < 0.5 * p:
        img = colorize(img, rng, texture=rng.random() < 0.5)
    if rng.random() < 0.35 * p:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.3 * p:
        img = noise(img, rng, rng.uniform(2, 12))
    if rng.random() < 0.3 * p:
        img = jpeg(img, rng.randint(30, 90))
    return _bound(img)


def handwriting(img: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Pen-like: elastic strokes, wandering baseline, slant, even stroke width, pure black ink."""
    p = min(1.0, max(0.0, strength))
    img = rescale(img, rng.uniform(0.9, 1.3))
    img = pad(img, rng, lo=6, hi=12)
    h = img.height
    img = elastic(img, rng, amplitude=p * rng.uniform(0.012, 0.025) * max(h, 60), cell=rng.randint(18, 30))
    img = baseline(img, rng, amplitude=p * rng.uniform(0.01, 0.035) * max(h, 60))
    img = rotate_shear(img, angle=rng.uniform(-3, 3) * p, shear=rng.uniform(-0.3, 0.15) * p)
    img = pen(img, width=rng.choice([1, 2, 2, 3]) if h > 40 else 1)
    return _bound(img)


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
    return ImageOps.expand(img, border=(l, t, r, b), fill=(255, 255, 255))


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
                            resample=Image.Resampling.BICUBIC, fillcolor=fill)
    if angle:
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    return img


def perspective(img: Image.Image, rng: random.Random, amount: float) -> Image.Image:
    """Move the four corners by up to `amount` of the size (as a phone photo of a page)."""
    w, h = img.size

    def j(v: float, n: int) -> float:
        return v + rng.uniform(-amount, amount) * n

    quad = (j(0, w), j(0, h), j(0, w), j(h, h), j(w, w), j(h, h), j(w, w), j(0, h))
    return img.transform((w, h), Image.Transform.QUAD, quad, resample=Image.Resampling.BICUBIC,
                         fillcolor=_corner(img))


def elastic(img: Image.Image, rng: random.Random, amplitude: float, cell: int = 24) -> Image.Image:
    """Bend strokes with a smooth random displacement field (`amplitude` px), via a PIL mesh transform."""
    w, h = img.size
    gw, gh = max(1, w // cell), max(1, h // cell)
    nrng = np.random.default_rng(rng.getrandbits(63))
    # coarse noise (one value per ~3 cells) upsampled to the mesh vertices: smooth, not jittery
    coarse = (max(2, gw // 3 + 2), max(2, gh // 3 + 2))
    fields = []
    for _ in range(2):
        z = Image.fromarray(nrng.uniform(-1, 1, (coarse[1], coarse[0])).astype(np.float32), mode="F")
        fields.append(np.asarray(z.resize((gw + 1, gh + 1), Image.Resampling.BICUBIC)) * amplitude)
    return _mesh(img, fields[0], fields[1])


def baseline(img: Image.Image, rng: random.Random, amplitude: float) -> Image.Image:
    """A wandering baseline: a slow random vertical wave along x."""
    w, h = img.size
    cell = 16
    gw, gh = max(1, w // cell), max(1, h // cell)
    x = np.linspace(0, 1, gw + 1)
    wave = sum(rng.uniform(-1, 1) * np.sin(2 * np.pi * (k * x + rng.random())) / k for k in (1, 2, 3))
    dy = np.tile((wave * amplitude)[None, :], (gh + 1, 1))
    return _mesh(img, np.zeros_like(dy), dy)


def _mesh(img: Image.Image, dx: np.ndarray, dy: np.ndarray) -> Image.Image:
    """Warp with per-vertex displacements `dx`, `dy` ([gh + 1, gw + 1], pixels): output cell <- source quad."""
    w, h = img.size
    gh, gw = dx.shape[0] - 1, dx.shape[1] - 1
    xs = np.linspace(0, w, gw + 1)
    ys = np.linspace(0, h, gh + 1)
    mesh = []
    for j in range(gh):
        for i in range(gw):
            box = (int(xs[i]), int(ys[j]), int(xs[i + 1]), int(ys[j + 1]))

            def v(a: int, b: int) -> tuple[float, float]:
                return xs[a] + dx[b, a], ys[b] + dy[b, a]

            # quad corners: upper-left, lower-left, lower-right, upper-right
            quad = (*v(i, j), *v(i, j + 1), *v(i + 1, j + 1), *v(i + 1, j))
            mesh.append((box, quad))
    return img.transform((w, h), Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR,
                         fillcolor=_corner(img))


# -- ink and paper ------------------------------------------------------------------------------------

def ink_weight(img: Image.Image, step: int) -> Image.Image:
    """Thicker (`step` > 0, dilate the dark ink) or thinner (< 0, erode) strokes, by one 3x3 filter pass."""
    return img.filter(ImageFilter.MinFilter(3) if step > 0 else ImageFilter.MaxFilter(3))


def pen(img: Image.Image, width: int = 2) -> Image.Image:
    """Even, pen-like strokes: threshold the glyphs' ink, dilate by `width`, soften the edge a little."""
    g = np.asarray(img.convert("L"))
    ink = Image.fromarray(np.where(g < 150, 0, 255).astype(np.uint8), mode="L")
    if width > 1:
        ink = ink.filter(ImageFilter.MinFilter(2 * (width // 2) + 1))
    ink = ink.filter(ImageFilter.GaussianBlur(0.5))
    return ink.convert("RGB")


def colorize(img: Image.Image, rng: random.Random, texture: bool = False) -> Image.Image:
    """Tint ink and paper (dark ink, light paper) and optionally add a low-frequency paper texture."""
    a = np.asarray(img.convert("L"), dtype=np.float32) / 255.0  # [H, W], 1 = paper
    ink = np.array([rng.randint(0, 70), rng.randint(0, 70), rng.randint(0, 90)], np.float32)
    paper = np.array([rng.randint(215, 255) for _ in range(3)], np.float32)
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


def _corner(img: Image.Image) -> tuple[int, ...]:
    """The background colour, read from the top-left pixel (renders are cropped with paper around ink)."""
    c = img.convert("RGB").getpixel((0, 0))
    return tuple(c) if isinstance(c, tuple) else (c, c, c)


def _bound(img: Image.Image) -> Image.Image:
    w, h = img.size
    if max(w, h) > MAX_SIDE or min(w, h) < MIN_SIDE:
        return rescale(img, 1.0)
    return img
