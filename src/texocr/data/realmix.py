"""Real images mixed into training: other people's renders, scans of handwriting and pen strokes, each
varied the way the world varies them (issue 15: a model that reads only its own renderer has learned the
renderer, not mathematics).

    parts = [RealPart("printed", ".carry/real/im2latex", 1.0), RealPart("ink", ".carry/real/crohme.jsonl.gz", 2.0)]
    for sample in real_samples(parts, random.Random(0)):   # endless, weighted by part
        ...

Kinds:
- `printed`: a folder (`labels.jsonl` + images) of printed formulas someone else rendered (im2latex's
  pdflatex renders): kept clean half of the time, else degraded as scans and screenshots are
  (`texocr.data.augment.printed`, mild);
- `handwritten`: a folder of photographed or scanned handwriting: mild degradations;
- `ink`: pen strokes (`{"latex", "strokes": [[x0, y0, x1, y1, ...], ...]}` per line, gzipped; see
  `scripts/real_data.py`) rasterized afresh for every sample at a random height, pen width, slant and
  anti-aliasing, binarized some of the time (CROHME's test bitmaps are binarized renders of the strokes).

Targets are taken as stored (the preparation normalizes them). A row whose image cannot be read costs that
row only (it is logged once and dropped from the part).
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from texocr.errors import TexocrError
from texocr.sample import Sample

log = logging.getLogger(__name__)
KINDS = ("printed", "handwritten", "ink")


@dataclass(frozen=True)
class RealPart:
    """One real source: its kind (`KINDS`), where it is, and its share of the real samples (relative)."""

    kind: str
    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> RealPart:
        """`KIND:PATH[:WEIGHT]`, e.g. `ink:.carry/real/crohme.jsonl.gz:2`."""
        kind, _, rest = spec.partition(":")
        path, _, weight = rest.rpartition(":") if rest.count(":") else (rest, "", "")
        try:
            part = cls(kind, path or rest, float(weight) if weight else 1.0)
        except ValueError:
            raise TexocrError(f"real part {spec!r}: the weight must be a number (KIND:PATH[:WEIGHT])") from None
        if part.kind not in KINDS:
            raise TexocrError(f"real part {spec!r}: kind must be one of {', '.join(KINDS)}")
        if part.weight <= 0:
            raise TexocrError(f"real part {spec!r}: the weight must be > 0")
        return part


def _load_rows(part: RealPart) -> list[dict[str, Any]]:
    path = Path(part.path)
    if part.kind == "ink":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = [json.loads(line) for line in (path / "labels.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r.get("latex"), str) and r["latex"].strip()]
    if not rows:
        raise TexocrError(f"real part {part.kind}:{part.path} has no labelled rows")
    return rows


def rasterize_varied(strokes: list[list[float]], rng: random.Random):  # -> PIL.Image (RGB)
    """Pen strokes drawn as a random writer, scanner and screen would: ink height 40-200 px, pen 1-5 px,
    a slight slant/rotation, anti-aliased or binarized."""
    from texocr.data.augment import rotate_shear
    from texocr.data.inkml import rasterize

    height = rng.choice([rng.randint(40, 90), rng.randint(90, 200)])
    pen = min(rng.uniform(1.0, 4.5), max(1.0, height / 20))
    img = rasterize([s for s in strokes if s], height=height, pen_width=pen, margin=rng.randint(2, 12),
                    supersample=rng.choice([1, 2, 4]))
    if rng.random() < 0.3:
        img = rotate_shear(img, angle=rng.uniform(-3, 3), shear=rng.uniform(-0.2, 0.1))
    if rng.random() < 0.4:  # binarized, as the CROHME test bitmaps are
        threshold = rng.randint(110, 200)  # one per image (point() calls the function once per grey level)
        img = img.convert("L").point(lambda v: 255 if v > threshold else 0).convert("RGB")
    return img


def _sample(part: RealPart, row: dict[str, Any], rng: random.Random) -> Sample:
    from PIL import Image

    from texocr.data.augment import augment
    from texocr.data.sources import inside

    if part.kind == "ink":
        img = rasterize_varied(row["strokes"], rng)
    else:
        path = inside(Path(part.path), str(row["image"]))  # a data set must not make texocr read outside its folder
        if isinstance(path, str):
            raise TexocrError(path)
        with Image.open(path) as im:
            img = im.convert("RGB")
        if rng.random() < (0.5 if part.kind == "printed" else 0.7):
            img = augment(img, random.Random(rng.random()), "printed", strength=0.5)
    return Sample(image=img, latex=row["latex"], id=str(row.get("id", "")), meta={"style": part.kind, "real": True})


def real_samples(parts: list[RealPart], rng: random.Random) -> Iterator[Sample]:
    """Endless Samples drawn from `parts` by weight, each row drawn uniformly within its part."""
    if not parts:
        raise TexocrError("no real parts to draw from")
    rows = [_load_rows(p) for p in parts]
    weights = [p.weight for p in parts]
    failures = 0
    while True:
        k = rng.choices(range(len(parts)), weights)[0]
        if not rows[k]:
            continue
        i = rng.randrange(len(rows[k]))
        try:
            yield _sample(parts[k], rows[k][i], rng)
            failures = 0
        except (OSError, ValueError, KeyError, TexocrError) as e:  # one bad row costs that row only
            log.warning("real part %s: row %s dropped: %s", parts[k].path, rows[k][i].get("id", i), e)
            rows[k].pop(i)
            failures += 1
            if failures > 1000 or not any(rows):
                raise TexocrError("real parts: every row tried in a row failed; check the data") from e
