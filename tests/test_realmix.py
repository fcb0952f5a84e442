"""Real data mixed into training (texocr.data.realmix) and CROHME label cleaning (texocr.data.inkml)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from texocr.data.inkml import crohme_truth
from texocr.data.realmix import RealPart, rasterize_varied, real_samples
from texocr.errors import TexocrError
from texocr.latex import normalize


@pytest.mark.parametrize(("truth", "target"), [
    (r"3 x - 5 \lt - 2", "3 x - 5 < - 2"),
    (r"a \gt b", "a > b"),
    (r"{ \mbox { g } { \mbox { i } m } }", "{ g { i m } }"),
    (r"\Bigg( x \Bigg)", "( x )"),
    (r"\sum\limits_{i=1}^n i", r"\sum _ { i = 1 } ^ { n } i"),
    (r"\frac{1}{z}", r"\frac { 1 } { z }"),  # nothing to clean: unchanged
    (r"\left( x \right)", r"\left( x \right)"),  # \left/\right are not \big-family sizes
])
def test_crohme_truth_is_what_the_ink_shows(truth: str, target: str) -> None:
    assert normalize(crohme_truth(truth)) == target


def _strokes() -> list[list[float]]:  # an "x": two crossing strokes, flat [x0, y0, x1, y1, ...]
    return [[0, 0, 50, 100, 100, 200], [200, 0, 100, 100, 0, 200]]


def test_rasterize_varied_draws_ink_at_varied_sizes() -> None:
    rng = random.Random(0)
    heights, binarized = set(), 0
    for _ in range(40):
        img = rasterize_varied(_strokes(), rng)
        a = np.asarray(img.convert("L"))
        assert img.mode == "RGB" and (a < 128).sum() > 20  # ink was drawn
        heights.add(img.height)
        binarized += set(np.unique(a)) <= {0, 255}
    assert len(heights) > 10  # the size varies
    assert 0 < binarized < 40  # binarized some of the time, anti-aliased the rest


def _folder(tmp_path: Path, n: int = 3, bad: bool = False) -> Path:
    d = tmp_path / "printed"
    (d / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("L", (60, 20), 255).save(d / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "latex": f"x ^ {{ {i} }}", "id": f"p{i}"})
    if bad:
        (d / "images" / "bad.png").write_bytes(b"not a png")
        rows.append({"image": "images/bad.png", "latex": "y", "id": "bad"})
    (d / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_real_samples_mix_parts_by_weight_and_drop_bad_rows(tmp_path: Path) -> None:
    folder = _folder(tmp_path, bad=True)
    inks = tmp_path / "ink.jsonl.gz"
    with gzip.open(inks, "wt") as f:
        f.write(json.dumps({"id": "i0", "latex": "x", "strokes": _strokes()}) + "\n")
    parts = [RealPart.parse(f"printed:{folder}:1"), RealPart.parse(f"ink:{inks}:3")]
    got = [s for _, s in zip(range(400), real_samples(parts, random.Random(1)))]
    kinds = [s.meta["style"] for s in got]
    assert 0.65 < kinds.count("ink") / len(kinds) < 0.85  # weight 3 of 4
    assert "bad" not in {s.id for s in got}  # the unreadable image was dropped, the stream went on
    assert {s.latex for s in got if s.meta["style"] == "printed"} == {"x ^ { 0 }", "x ^ { 1 }", "x ^ { 2 }"}


def test_a_real_part_never_reads_outside_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    folder = _folder(tmp_path / "d")
    Image.new("L", (60, 20), 0).save(tmp_path / "outside.png")  # a real image beside the folder
    with open(folder / "labels.jsonl", "a") as f:
        f.write(json.dumps({"image": "../outside.png", "latex": "z", "id": "escape"}) + "\n")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    got = [s for _, s in zip(range(200), real_samples([RealPart.parse(f"printed:{folder}")], random.Random(0)))]
    assert "escape" not in {s.id for s in got} and {s.id for s in got} == {"p0", "p1", "p2"}
    assert not any("outside" in p for p in opened)  # refused by name, never opened


def test_real_part_spec_errors_name_the_problem(tmp_path: Path) -> None:
    assert RealPart.parse("ink:a/b.jsonl.gz") == RealPart("ink", "a/b.jsonl.gz", 1.0)
    with pytest.raises(TexocrError, match="kind must be one of"):
        RealPart.parse("photo:x")
    with pytest.raises(TexocrError, match="weight must be"):
        RealPart.parse("ink:x:-1")
    with pytest.raises(TexocrError, match="no labelled rows"):
        (tmp_path / "labels.jsonl").write_text("")
        next(real_samples([RealPart("printed", str(tmp_path))], random.Random(0)))
