"""InkML: CROHME and MathWriting parsing, rasterization, and InkML folders as data sources."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from texocr.data.inkml import InkError, parse_trace, rasterize, read_inkml
from texocr.data.sources import open_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mathwriting-excerpt"

MATHWRITING = """<ink xmlns="http://www.w3.org/2003/InkML">
  <annotation type="label">\\frac{a}{ b}</annotation>
  <annotation type="sampleId">abc123</annotation>
  <annotation type="normalizedLabel">\\frac{a}{b}</annotation>
  <annotation type="splitTagOriginal">valid</annotation>
  <traceFormat><channel name="X" type="decimal"/><channel name="Y" type="decimal"/>
    <channel name="T" type="decimal" units="ms"/></traceFormat>
  <trace id="0">100.5 50 0.0,120 50 10.0,140.25 50.5 20.0</trace>
  <trace id="1">110 20 30.0,115 40 40.0</trace>
  <trace id="2">110 70 50.0,130 90 60.0</trace>
</ink>"""

CROHME = """<?xml version="1.0" encoding="UTF-8"?>
<ink xmlns="http://www.w3.org/2003/InkML">
  <traceFormat><channel name="X" type="decimal"/><channel name="Y" type="decimal"/></traceFormat>
  <annotation type="truth">$x^2$</annotation>
  <annotation type="writer">w7</annotation>
  <trace id="0">10 60, 30 90, 50 60</trace>
  <trace id="1">30 60, 10 90</trace>
  <trace id="2">60 20, 70 10, 75 25, 60 35, 80 35</trace>
  <traceGroup xml:id="g">
    <annotation type="truth">Segmentation</annotation>
    <traceGroup xml:id="g1"><annotation type="truth">x</annotation>
      <traceView traceDataRef="0"/><traceView traceDataRef="1"/></traceGroup>
    <traceGroup xml:id="g2"><annotation type="truth">2</annotation><traceView traceDataRef="2"/></traceGroup>
  </traceGroup>
</ink>"""


def test_mathwriting_label_and_strokes(tmp_path: Path) -> None:
    (tmp_path / "a.inkml").write_text(MATHWRITING)
    ink = read_inkml(tmp_path / "a.inkml")
    assert ink.label == "\\frac{a}{b}"  # normalizedLabel wins over label
    assert [s.shape for s in ink.strokes] == [(3, 2), (2, 2), (2, 2)]
    assert ink.strokes[0][2].tolist() == [140.25, 50.5]  # T dropped
    assert ink.meta["sampleId"] == "abc123" and "normalizedLabel" not in ink.meta


def test_label_fallback_to_label(tmp_path: Path) -> None:
    (tmp_path / "a.inkml").write_text(MATHWRITING.replace('type="normalizedLabel"', 'type="other"'))
    assert read_inkml(tmp_path / "a.inkml").label == "\\frac{a}{ b}"


def test_crohme_truth_dollars_stripped_and_trace_groups(tmp_path: Path) -> None:
    (tmp_path / "c.inkml").write_text(CROHME)
    ink = read_inkml(tmp_path / "c.inkml")
    assert ink.label == "x^2"  # the top-level truth, not a symbol's
    assert len(ink.strokes) == 3 and ink.meta["writer"] == "w7"


def test_difference_qualifiers() -> None:
    # explicit, then first differences ('), then a second difference (")
    pts = parse_trace("10 20, '1 '2, '1 '2, \"1 \"0", channels=2)
    assert pts.tolist() == [[10, 20], [11, 22], [12, 24], [14, 26]]
    assert parse_trace("1 2 3 4, 5 6 7 8", channels=4).tolist() == [[1, 2], [5, 6]]
    assert parse_trace("-1.5e1 .5", channels=2).tolist() == [[-15.0, 0.5]]


@pytest.mark.parametrize(
    ("text", "match"),
    [("<ink><trace>1 2, 3", "not valid XML"), ("<ink><annotation type='label'>x</annotation></ink>", "no traces"),
     ("<svg><trace>1 2</trace></svg>", "not <ink>"), ("<ink><trace>1 2, 3</trace></ink>", "at least X and Y"),
     ("<ink><trace>1 nan</trace></ink>", "at least X and Y")],
)
def test_bad_ink(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "b.inkml").write_text(text)
    with pytest.raises(InkError, match=match) as info:
        read_inkml(tmp_path / "b.inkml")
    assert info.value.reason == "bad_ink"


def _dark(img) -> np.ndarray:
    return np.asarray(img.convert("L")) < 128


def test_rasterize_keeps_aspect_and_margin() -> None:
    box = [np.array([[0, 0], [200, 0], [200, 50], [0, 50], [0, 0]], dtype=float)]  # 4:1 rectangle
    img = rasterize(box, height=64, pen_width=2, margin=8)
    assert img.mode == "RGB" and img.height == 64
    ys, xs = np.nonzero(_dark(img))
    ink_h, ink_w = ys.max() - ys.min(), xs.max() - xs.min()
    assert abs(ink_w / ink_h - 4.0) < 0.2
    assert 6 <= ys.min() <= 9 and 6 <= xs.min() <= 9 and img.width - xs.max() in range(6, 11)
    gray = np.asarray(img.convert("L"))
    assert ((gray > 20) & (gray < 235)).any()  # anti-aliased edges, not a hard 1-bit drawing


def test_rasterize_pen_width_flat_ink_dots_and_width_cap() -> None:
    stroke = [np.array([[0, 0], [50, 40], [100, 0]], dtype=float)]
    thin, thick = rasterize(stroke, pen_width=1.5), rasterize(stroke, pen_width=5)
    assert _dark(thick).sum() > 2 * _dark(thin).sum() > 0
    minus = rasterize([np.array([[0, 10], [80, 10]], dtype=float)], height=64)  # a `-`: zero height
    ys, _ = np.nonzero(_dark(minus))
    assert minus.height == 64 and abs(ys.mean() - 32) < 3 and minus.width < 2048
    dot = rasterize([np.array([[5, 5]], dtype=float)], height=32, pen_width=4)
    assert _dark(dot).sum() > 0
    wide = rasterize([np.array([[0, 0], [10000, 10]], dtype=float)], height=64, max_width=512)
    assert wide.size == (512, 64)
    with pytest.raises(InkError):
        rasterize([])


def test_inkml_folder_source(tmp_path: Path) -> None:
    for split, text in (("train", CROHME), ("valid", MATHWRITING)):
        (tmp_path / split).mkdir()
        (tmp_path / split / "a.inkml").write_text(text)
    (tmp_path / "train" / "broken.inkml").write_text("<ink>")
    (tmp_path / "train" / "nolabel.inkml").write_text("<ink><trace>1 2, 3 4</trace></ink>")
    everything = open_source(str(tmp_path))
    assert len(everything) == 4
    assert sorted(s.latex for s in everything) == ["\\frac{a}{b}", "x^2"]
    assert Counter(s.reason for s in everything.skipped) == {"bad_ink": 1, "missing_label": 1}
    val = list(open_source(str(tmp_path), split="val"))
    assert [(s.id, s.latex) for s in val] == [("abc123", "\\frac{a}{b}")]
    assert val[0].meta["split"] == "valid" and val[0].image.height == 128
    one = list(open_source(str(tmp_path / "valid" / "a.inkml")))
    assert len(one) == 1


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_mathwriting_excerpt() -> None:
    rows = [json.loads(line) for line in (SHARED / "labels.jsonl").read_text().splitlines()]
    src = open_source(str(SHARED))
    samples = list(src)
    assert not src.skipped and len(samples) == len(rows) == 11
    assert [s.latex for s in samples] == [r["latex"] for r in rows]
    for s in samples:
        dark = _dark(s.image)
        assert s.image.height == 128 and 0.01 < dark.mean() < 0.3  # real strokes, not blank, not a blob
    folder = list(open_source(str(SHARED / "inkml")))
    assert sorted(s.latex for s in folder) == sorted(r["latex"] for r in rows)
    try:
        from texocr.data.montage import montage
    except ImportError:
        montage = _montage
    montage([s.image for s in samples]).save("/tmp/inkml_montage.png")


def _montage(images):
    from PIL import Image

    out = Image.new("RGB", (max(i.width for i in images), sum(i.height + 4 for i in images)), "gray")
    y = 0
    for img in images:
        out.paste(img, (0, y))
        y += img.height + 4
    return out
