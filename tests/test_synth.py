"""SyntheticSource and `texocr data render`: deterministic samples, a loadable data set on disk, a montage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from texocr.cli import main
from texocr.data.augment import IM2MARKUP_BUCKETS
from texocr.data.render import available_renderers
from texocr.data.synth import (
    DOWNSAMPLE_SHARE,
    DOWNSAMPLED_DPIS,
    PRINTED_DPIS,
    SyntheticSource,
)
from texocr.errors import TexocrError
from texocr.latex import normalize

if not available_renderers():
    pytest.skip("no renderer installed", allow_module_level=True)
has_tex = shutil.which("latex") is not None and shutil.which("dvipng") is not None
needs_tex = pytest.mark.skipif(not has_tex, reason="latex/dvipng not installed")


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("renderer", [pytest.param("tex", marks=[pytest.mark.tex, needs_tex]), "pip"])
def test_source_is_deterministic_per_index(renderer: str) -> None:
    if renderer not in available_renderers():
        pytest.skip(f"{renderer} renderer not installed")
    a = SyntheticSource(n=12, seed=4, style="mixed", renderer=renderer, chunk=6)
    b = SyntheticSource(n=12, seed=4, style="mixed", renderer=renderer, chunk=6)
    s7 = a[7]
    assert _same(b[7].image, s7.image) and b[7].latex == s7.latex  # a fresh source, the index alone decides
    assert s7.latex == normalize(s7.meta["formula"])
    assert s7.id == "synth4-7" and s7.meta["renderer"] == renderer and s7.image.mode == "RGB"
    items = list(a)
    assert len(items) + len(a.skipped) == 12
    assert [s.id for s in items] == sorted((s.id for s in items), key=lambda x: int(x.split("-")[1]))
    other = SyntheticSource(n=12, seed=5, renderer=renderer, chunk=6)
    assert other[7].latex != s7.latex


def test_bad_arguments() -> None:
    with pytest.raises(TexocrError, match="unknown style"):
        SyntheticSource(style="cursive")
    with pytest.raises(TexocrError, match="augment_strength"):
        SyntheticSource(augment_strength=2.5)
    with pytest.raises(IndexError):
        SyntheticSource(n=3)[3]
    with pytest.raises(TexocrError, match="printed_dpis"):
        SyntheticSource(printed_dpis=[])
    with pytest.raises(TexocrError, match="printed_dpis"):
        SyntheticSource(printed_dpis=[120, 5000])


def test_printed_dpis_set_the_resolution_of_printed_chunks() -> None:
    src = SyntheticSource(n=64, seed=2, renderer="pip", chunk=1, printed_dpis=[90])
    assert {s["dpi"] for s in map(src.chunk_settings, range(40)) if not s["downsample"]} == {90}
    default = SyntheticSource(n=64, seed=2, renderer="pip", chunk=1, downsample_share=0.0)
    assert {default.chunk_settings(c)["dpi"] for c in range(200)} == set(PRINTED_DPIS)
    # the resolution reaches the pixels: the same formula at 90 dpi is smaller than at 240
    low = SyntheticSource(n=1, seed=2, renderer="pip", printed_dpis=[90], augment=False, downsample_share=0.0)[0]
    high = SyntheticSource(n=1, seed=2, renderer="pip", printed_dpis=[240], augment=False, downsample_share=0.0)[0]
    assert low.image.height < high.image.height and low.image.width < high.image.width


def test_downsample_share_picks_printed_chunks_and_leaves_the_others_alone() -> None:
    plain = SyntheticSource(n=64, seed=2, style="mixed", renderer="pip", chunk=1, downsample_share=0.0)
    default = SyntheticSource(n=64, seed=2, style="mixed", renderer="pip", chunk=1)
    every = SyntheticSource(n=64, seed=2, style="mixed", renderer="pip", chunk=1, downsample_share=1.0)
    assert default.downsample_share == DOWNSAMPLE_SHARE and 0 < DOWNSAMPLE_SHARE < 1
    p, d, e = ([s.chunk_settings(c) for c in range(400)] for s in (plain, default, every))
    printed = [c for c in range(400) if p[c]["style"] == "printed"]
    assert all(p[c]["downsample"] == 0 for c in range(400))
    assert all(e[c]["downsample"] == (2 if c in printed else 0) for c in range(400))
    assert {e[c]["dpi"] for c in printed} <= set(DOWNSAMPLED_DPIS)
    down = [c for c in printed if d[c]["downsample"]]
    assert 0.15 < len(down) / len(printed) < 0.35
    assert all(d[c] == p[c] for c in range(400) if c not in down)  # the other chunks: as without the option
    with pytest.raises(TexocrError, match="downsample_share"):
        SyntheticSource(downsample_share=1.5)
    with pytest.raises(TexocrError, match="downsample_factor"):
        SyntheticSource(downsample_factor=1)


@pytest.mark.parametrize("renderer", [pytest.param("tex", marks=[pytest.mark.tex, needs_tex]), "pip"])
def test_downsampled_renders_are_half_size_with_soft_grey_edges(renderer: str) -> None:
    """`downsample_share=1`: rendered at 2x the chunk's dpi, then im2markup's margin, bucket and halving."""
    if renderer not in available_renderers():
        pytest.skip(f"{renderer} renderer not installed")
    src = SyntheticSource(n=8, seed=3, renderer=renderer, chunk=8, augment=False, downsample_share=1.0,
                          formulas=[r"\frac{a+b}{c} = \sum_{i=1}^{n} x_i^2"], real_ratio=1.0)
    sample = src[0]
    dpi, scale, font = sample.meta["dpi"], sample.meta["scale"], sample.meta["font"]
    assert sample.meta["downsample"] == 2 and dpi in DOWNSAMPLED_DPIS
    hi = src.renderer.render_batch([sample.meta["formula"]], font=font, dpi=2 * dpi, scales=[scale])[0]
    same = src.renderer.render_batch([sample.meta["formula"]], font=font, dpi=dpi, scales=[scale])[0]
    g = np.asarray(sample.image.convert("L"))
    cols, rows = np.nonzero((g < 128).any(0))[0], np.nonzero((g < 128).any(1))[0]
    width, height = cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    hi_g = np.asarray(hi.convert("L"))
    hi_w = np.ptp(np.nonzero((hi_g < 255).any(0))[0]) + 1
    assert abs(width - hi_w / 2) <= 3  # half the 2x render's ink width
    assert 2 <= cols[0] <= 5 and 2 <= rows[0] <= 5  # im2markup's margin (8 px at 2x)
    assert sample.image.size in IM2MARKUP_BUCKETS or sample.image.size == (
        (hi.width + 16) // 2, (hi.height + 16) // 2) or abs(sample.image.width - width - 8) <= 3
    assert height < hi.height * 0.6
    # soft grey edges: many ink pixels are neither paper nor black
    ink = g[g < 250]
    assert ((ink > 40) & (ink < 215)).mean() > 0.25
    # and it is not the 1x render: the emulation is bolder (more dark pixels per formula) at the same size
    direct = np.asarray(same.convert("L"))
    assert (g < 128).sum() > (direct < 128).sum()


def test_data_config_printed_dpis_reach_the_synthetic_source() -> None:
    from texocr.config import load_config
    from texocr.data.sources import _synthetic

    cfg = load_config(None, ["--data.printed_dpis=[100, 120]"])
    src = _synthetic(cfg.data, "train")
    assert src.printed_dpis == (100, 120)


def test_labels_without_rendering() -> None:
    src = SyntheticSource(n=5, seed=1)
    labels = list(src.labels())
    assert [i for i, _ in labels] == [f"synth1-{k}" for k in range(5)]
    assert all(latex for _, latex in labels)


def test_data_render_writes_loadable_dataset(tmp_path, capsys) -> None:
    out = tmp_path / "synth"
    formulas = tmp_path / "real.txt"
    formulas.write_text("E = m c ^ { 2 }\n\\frac { a } { b }\n")
    code = main(["data", "render", "--n", "20", "--out", str(out), "--seed", "3", "--workers", "1",
                 "--style", "mixed", "--formulas", str(formulas), "--real-ratio", "0.3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote 20 samples" in printed and "failed to render" in printed
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    for r in rows:
        with Image.open(out / r["image"]) as im:
            assert im.size == (r["width"], r["height"]) and min(im.size) >= 8
            gray = np.asarray(im.convert("L"), dtype=np.float32)
            assert np.percentile(gray, 0.5) < np.median(gray) - 80, f"{r['image']}: ink too faint"
        assert r["latex"] and r["style"] in {"printed", "handwritten"}
    assert {r["origin"] for r in rows} == {"generated", "real"}
    with Image.open(out / "montage.png") as m:
        assert m.width == 1600 and m.height > 50
    assert json.loads((out / "render_stats.json").read_text())["written"] == 20
    # the project's own reader takes it as a local data set
    from texocr.data.sources import open_source

    samples = list(open_source(str(out)))
    assert len(samples) == 20 and {s.latex for s in samples} == {r["latex"] for r in rows}
    # a second run replaces its own previous output (texocr.outdir's rule), never mixes into it
    assert main(["data", "render", "--n", "2", "--out", str(out), "--workers", "1"]) == 0
    assert len((out / "labels.jsonl").read_text().splitlines()) == 2 and not (out / "images" / rows[-1]["image"]).exists()


def test_data_render_in_order_takes_each_formula_once(tmp_path) -> None:
    formulas = tmp_path / "test.txt"
    formulas.write_text("a + b\nx ^ { 2 }\n\\frac { 1 } { n }\n")
    out = tmp_path / "ordered"
    assert main(["data", "render", "--n", "4", "--out", str(out), "--seed", "1", "--workers", "1",
                 "--formulas", str(formulas), "--in-order", "--no-augment"]) == 0
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [r["latex"] for r in rows] == ["a + b", "x ^ { 2 }", "\\frac { 1 } { n }", "a + b"]  # then it cycles
    assert {r["origin"] for r in rows} == {"real"}
    with pytest.raises(TexocrError, match="in_order needs real formulas"):
        SyntheticSource(in_order=True)


def test_augment_strength_reaches_the_images(tmp_path) -> None:
    """`--augment-strength` (and `data.augment_strength`) changes the handwriting distortion, nothing else."""
    from texocr.config import DataConfig
    from texocr.data.sources import open_source

    def render(strength: str) -> list[dict]:
        out = tmp_path / f"s{strength}"
        assert main(["data", "render", "--n", "3", "--out", str(out), "--seed", "2", "--workers", "1",
                     "--style", "handwritten", "--augment-strength", strength]) == 0
        rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
        return [dict(r, pixels=np.asarray(Image.open(out / r["image"]))) for r in rows]

    plain, messy = render("1.0"), render("1.8")
    assert [r["latex"] for r in plain] == [r["latex"] for r in messy]
    assert all(not (a["pixels"].shape == b["pixels"].shape and np.array_equal(a["pixels"], b["pixels"]))
               for a, b in zip(plain, messy))
    cfg = DataConfig(synthetic_n=2, seed=2, synthetic_style="handwritten", augment_strength=1.8)
    assert open_source("synthetic", cfg).augment_strength == 1.8
