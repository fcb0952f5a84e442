"""Formula images for the GPU speed benchmarks (bench/train_gpu.py, bench/seeds_gpu.py): both scripts import
this module, neither imports the other's data code (no import circle). Run from the repository root with
`PYTHONPATH=src`; the scripts put bench/ on the import path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def _formula(rng: random.Random) -> str:
    atoms = ["x", "y", "z", "a", "b", "n", r"\alpha", r"\beta", r"\pi", "2", "3", "10"]

    def term(depth: int) -> str:
        r = rng.random()
        if depth > 2 or r < 0.35:
            return rng.choice(atoms) + (f"^{{{rng.choice(atoms)}}}" if rng.random() < 0.3 else "")
        if r < 0.55:
            return rf"\frac{{{term(depth + 1)}}}{{{term(depth + 1)}}}"
        if r < 0.7:
            return rf"\sqrt{{{term(depth + 1)}}}"
        return f"{term(depth + 1)} {rng.choice('+-=')} {term(depth + 1)}"

    return " ".join(term(0) for _ in range(rng.randint(1, 3)))


def build_data(out: Path, n: int) -> Path:
    """`n` 448x112 images of formulas (PIL text; content does not matter for speed) + labels.jsonl.

    Labels are written in normalized form, the form texocr trains on, so both loops see equal sequences.
    """
    from PIL import Image, ImageDraw, ImageFont

    from texocr.latex import normalize

    if (out / "labels.jsonl").is_file():
        return out
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    try:
        font = ImageFont.load_default(size=26)
    except TypeError:  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    lines = []
    for i in range(n):
        latex = normalize(_formula(rng))
        im = Image.new("RGB", (448, 112), "white")
        ImageDraw.Draw(im).text((8, 38), latex[:60], fill="black", font=font)
        im.save(out / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "latex": latex}))
    (out / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return out
