"""InkML (CROHME, MathWriting): read pen strokes and their label, rasterize them to an image.

    ink = read_inkml("inkml/test/01917677eaf160bb.inkml")   # Ink(strokes=[[N, 2] arrays], label=..., meta=...)
    img = rasterize(ink.strokes, height=128, pen_width=2.5)  # RGB, dark ink on white, aspect kept

Labels: MathWriting's `normalizedLabel` annotation, else its `label`; CROHME's `truth` annotation with the
surrounding `$` removed. Traces are `X Y [T ...]` points separated by commas; InkML's difference qualifiers
(`'` first difference, `"` second difference, `!` explicit) are decoded. Only X and Y are kept.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from texocr.data.rows import Row, Skipped, Source, canonical_split
from texocr.errors import TexocrError

_NUMBER = re.compile(r"([!'\"]?)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_LABEL_TYPES = ("normalizedLabel", "label", "truth")  # first present wins


class InkError(TexocrError):
    """An InkML file that cannot be read (not XML, no traces, malformed numbers); `.reason` is `bad_ink`."""

    reason = "bad_ink"


@dataclass
class Ink:
    strokes: list[Any]
    """One float array per pen stroke, each `[N, 2]` (x, y), y growing downwards as on a screen."""
    label: str | None
    """The LaTeX label, or None when the file has none."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Other top-level annotations (sampleId, splitTagOriginal, writer, ...)."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop the XML namespace


def parse_trace(text: str, channels: int = 2) -> Any:
    """`"x y t, x y t, ..."` -> float array `[N, 2]`, decoding InkML's difference qualifiers per channel."""
    import numpy as np

    points: list[list[float]] = []
    value = [0.0] * channels
    velocity = [0.0] * channels
    for i, chunk in enumerate(c for c in text.split(",") if c.strip()):
        found = _NUMBER.findall(chunk)
        if not found or len(found) < 2:
            raise InkError(f"point {i}: expected at least X and Y, got {chunk.strip()[:40]!r}")
        row = []
        for c, (qual, num) in enumerate(found[:channels]):
            x = float(num)
            if qual == "'":
                velocity[c] = x
                value[c] += x
            elif qual == '"':
                velocity[c] += x
                value[c] += velocity[c]
            else:  # explicit; later `'` values are differences from it
                velocity[c] = x - value[c] if i else 0.0
                value[c] = x
            row.append(value[c])
        points.append(row[:2])
    arr = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # [N, 2]
    if not np.isfinite(arr).all():
        raise InkError("non-finite coordinates")
    return arr


def read_inkml(path: str | Path) -> Ink:
    """Parse one InkML file into strokes and label; raise `InkError` when it is not usable ink."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise InkError(f"{path}: not valid XML: {e}") from None
    except OSError as e:
        raise InkError(f"{path}: cannot read: {e.strerror or e}") from None
    if _local(root.tag) != "ink":
        raise InkError(f"{path}: root element is <{_local(root.tag)}>, not <ink>")

    annotations: dict[str, str] = {}
    for el in root:  # top-level only: CROHME's traceGroups carry per-symbol `truth` annotations too
        if _local(el.tag) == "annotation" and el.get("type") and el.get("type") not in annotations:
            annotations[el.get("type")] = (el.text or "").strip()
    kind = next((t for t in _LABEL_TYPES if t in annotations), None)
    label = None if kind is None else annotations[kind]
    if kind == "truth":  # CROHME writes `$x^2$`
        label = crohme_truth(_strip_dollars(label))

    channels = [c for c in root.iter() if _local(c.tag) == "channel"]
    n_channels = max(2, len(channels)) if channels else 2
    strokes = []
    for trace in (el for el in root.iter() if _local(el.tag) == "trace"):
        if trace.text and trace.text.strip():
            try:
                strokes.append(parse_trace(trace.text, n_channels))
            except InkError as e:
                raise InkError(f"{path}: trace {trace.get('id', '?')}: {e}") from None
    if not strokes:
        raise InkError(f"{path}: no traces")
    meta = {k: v for k, v in annotations.items() if k not in _LABEL_TYPES}
    return Ink(strokes=strokes, label=label, meta=meta)


# CROHME's `truth` spells some symbols as MathJax does and marks what a pen cannot show: `\\lt` / `\\gt`
# are `<` / `>` (undefined in LaTeX itself), `\\mbox { g }` wraps a single handwritten symbol (upright in
# print, no difference in ink), `\\Big`/`\\Bigg` size a delimiter and `\\limits` places limits that are
# drawn where they are written. Dropped, so the target is what the ink shows (as the CROHME papers' labels).
_CROHME_FIXES = (
    (re.compile(r"\\lt(?![A-Za-z])|\\lt(?=[A-Z])"), " < "),
    (re.compile(r"\\gt(?![A-Za-z])|\\gt(?=[A-Z])"), " > "),
    (re.compile(r"\\(?:Bigg|Big|bigg|big)[lr]?(?![A-Za-z])"), " "),
    (re.compile(r"\\limits(?![A-Za-z])"), " "),
)
_MBOX_RE = re.compile(r"\\mbox\s*\{\s*([^{}\s]|\\[A-Za-z]+)\s*\}")


def crohme_truth(s: str) -> str:
    """A CROHME `truth` label as the ink shows it: `\\lt` -> `<`, `\\mbox { g }` -> `g`, no `\\Big`/`\\limits`."""
    for pattern, repl in _CROHME_FIXES:
        s = pattern.sub(repl, s)
    return _MBOX_RE.sub(r" \1 ", s)


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def rasterize(
    strokes: list[Any],
    *,
    height: int = 128,
    pen_width: float = 2.5,
    margin: int = 8,
    max_width: int = 2048,
    supersample: int = 4,
):  # -> PIL.Image.Image (RGB)
    """Draw strokes as dark anti-aliased lines on white: the ink's height fills `height - 2*margin` pixels.

    The aspect ratio is kept; a very wide ink (a long line of math) is scaled down so the image is at
    most `max_width` wide. Lines are drawn at `supersample` times the size and downsampled (anti-aliasing).
    `pen_width` is in output pixels.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    if not strokes:
        raise InkError("no strokes to draw")
    pts = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes])  # [P, 2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ink_w, ink_h = float(hi[0] - lo[0]), float(hi[1] - lo[1])
    inner_h, inner_w = max(1, height - 2 * margin), max(1, max_width - 2 * margin)
    # a flat ink (`-`, `\cdots`) has no height to scale by: treat it as at least 1/16 as tall as wide
    eff_h = max(ink_h, ink_w / 16)
    candidates = [inner_h / eff_h if eff_h > 0 else float("inf"), inner_w / ink_w if ink_w > 0 else float("inf")]
    scale = min(candidates)
    if scale == float("inf"):  # a single dot
        scale = 1.0
    out_w = min(max_width, max(height // 4, int(np.ceil(ink_w * scale)) + 2 * margin))
    out_h = height
    # centre the ink in the output canvas (a flat ink such as `-` sits mid-height)
    off = np.array([(out_w - ink_w * scale) / 2, (out_h - ink_h * scale) / 2])
    k = supersample
    canvas = Image.new("L", (out_w * k, out_h * k), 255)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(pen_width * k))
    r = width / 2
    for s in strokes:
        xy = ((np.asarray(s, dtype=np.float64).reshape(-1, 2) - lo) * scale + off) * k  # [N, 2] in canvas pixels
        pts_list = [tuple(p) for p in xy.tolist()]
        if len(pts_list) > 1:
            draw.line(pts_list, fill=0, width=width)
        # a disc at every vertex makes round joins and caps (and draws single-point strokes): 8x faster
        # than ImageDraw's joint="curve", same picture
        for x, y in pts_list:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    return canvas.reduce(k).convert("RGB")  # box-filter downsample: the anti-aliasing


# ---------------------------------------------------------------- as a data source


class InkmlSource(Source):
    """A Source over InkML files: the label from the file's annotations, the image rasterized from its strokes."""

    def __init__(self, name: str, files: list[Path], height: int = 128, pen_width: float = 2.5) -> None:
        super().__init__(name, len(files))
        self.files, self.height, self.pen_width = files, height, pen_width

    def _rows(self) -> Iterator[Row | Skipped]:
        for path in self.files:
            try:
                ink = read_inkml(path)
            except InkError as e:
                yield Skipped(str(path), e.reason, str(e))
                continue
            meta = {"inkml": str(path), "strokes": len(ink.strokes), **ink.meta}
            if "splitTagOriginal" in ink.meta:
                meta["split"] = ink.meta["splitTagOriginal"]
            image = partial(rasterize, ink.strokes, height=self.height, pen_width=self.pen_width)
            yield Row(ink.meta.get("sampleId") or path.stem, ink.label, image, meta)


def inkml_folder(name: str, folder: Path, split: str | None, height: int = 128, pen_width: float = 2.5) -> InkmlSource:
    """Every `*.inkml` under `folder`; with `split`, its `<split>/` subfolder (MathWriting: train/valid/test)."""
    if split:
        want = canonical_split(split)
        subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and canonical_split(d.name) == want]
        if subdirs:
            folder = subdirs[0]
    files = sorted(folder.rglob("*.inkml"))
    if not files:
        raise TexocrError(f"{name}: no .inkml files in {folder}")
    return InkmlSource(name, files, height, pen_width)
