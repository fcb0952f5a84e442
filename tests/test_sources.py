"""Data sources: local folders (labels.jsonl, CSV, im2latex .lst), Hugging Face (saved / hub / presets), robustness."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from texocr.config import DataConfig
from texocr.data.sources import canonical_split, open_source, write_skipped
from texocr.errors import TexocrError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def save(img: Image.Image, path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def formula(size: tuple[int, int] = (60, 20), mode: str = "RGB", bg=(255, 255, 255), ink=(0, 0, 0)) -> Image.Image:
    img = Image.new(mode, size, bg)
    img.paste(ink, (size[0] // 4, size[1] // 3, 3 * size[0] // 4, size[1] // 2))
    return img


def bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


INK = """<ink xmlns="http://www.w3.org/2003/InkML">
  <annotation type="normalizedLabel">x+1</annotation>
  <trace>10 10 0, 20 30 1, 30 10 2</trace><trace>40 20 3, 60 20 4</trace>
</ink>"""


def messy_folder(root: Path) -> tuple[dict[str, str], Counter]:
    """A labels.jsonl data set with every kind of bad row mixed with good ones (some in unusual modes).

    Returns (good image path -> label, expected skip counts per reason).
    """
    img = root / "img"
    good = {
        "img/rgb.png": (formula(), "PNG", "a+b"),
        "img/cmyk.jpg": (formula(mode="CMYK", bg=(0, 0, 0, 0), ink=(0, 0, 0, 255)), "JPEG", "\\frac{1}{2}"),
        "img/la.png": (formula(mode="LA", bg=(0, 0), ink=(0, 255)), "PNG", "x^{2}"),
        "img/rgba.png": (formula(mode="RGBA", bg=(0, 0, 0, 0), ink=(0, 0, 0, 255)), "PNG", "\\alpha"),
        "img/i16.png": (formula(mode="I;16", bg=65535, ink=0), "PNG", "y_{1}"),
        "img/bit.png": (formula(mode="1", bg=1, ink=0), "PNG", "\\sqrt{x}"),
        "img/huge.png": (formula((3000, 600)), "PNG", "e^{i\\pi}+1=0"),
    }
    pal = Image.new("P", (60, 20), 0)
    pal.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.paste(1, (15, 6, 45, 10))
    for rel, (im, fmt, _) in good.items():
        save(im, root / rel, fmt)
    pal.save(img / "pal.png", transparency=0)
    labels = {rel: label for rel, (_, _, label) in good.items()} | {"img/pal.png": "\\beta"}

    truncated = (root / "img/rgb.png").read_bytes()
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)).save(noise, "PNG")
    (img / "truncated.png").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])
    (img / "notes.png").write_text("this is not an image\n")
    (img / "empty.png").write_bytes(b"")
    (img / "bomb.png").write_bytes(bomb_png(20_000, 20_000))
    save(Image.new("RGB", (1, 30), "white"), img / "sliver.png")
    (root / "ink").mkdir()
    (root / "ink/good.inkml").write_text(INK)
    (root / "ink/broken.inkml").write_text("<ink><trace>1 2, 3")
    assert truncated  # (the good PNG itself stays intact)

    lines = [json.dumps({"image": rel, "latex": label, "writer": "w1"}) for rel, label in labels.items()]
    lines.insert(0, json.dumps({"image": None, "inkml": "ink/good.inkml", "latex": "x+1"}))
    bad = [
        ({"image": "img/absent.png", "latex": "a"}, "missing_image"),
        ({"image": "img/also_absent.jpg", "latex": "b"}, "missing_image"),
        ({"latex": "c"}, "missing_image"),  # no image field at all
        ({"image": "img/truncated.png", "latex": "d"}, "corrupt_image"),
        ({"image": "img/notes.png", "latex": "e"}, "not_an_image"),
        ({"image": "img/empty.png", "latex": "f"}, "not_an_image"),
        ({"image": "img/bomb.png", "latex": "g"}, "too_large"),
        ({"image": "img/sliver.png", "latex": "h"}, "too_small"),
        ({"image": None, "inkml": "ink/broken.inkml", "latex": "i"}, "bad_ink"),
        ({"image": "img/rgb.png"}, "missing_label"),
        ({"image": "img/rgb.png", "latex": 42}, "bad_label"),
        ({"image": "img/rgb.png", "latex": ["x"]}, "bad_label"),
        ({"image": "img/rgb.png", "latex": ""}, "empty_label"),
        ({"image": "img/rgb.png", "latex": "  \t "}, "empty_label"),
    ]
    expected = Counter(reason for _, reason in bad)
    for i, (rec, _) in enumerate(bad):
        lines.insert(2 + 2 * i, json.dumps(rec))  # interleave bad rows with good ones
    lines.insert(5, '{"image": "img/rgb.png", "latex": "broken')
    lines.insert(9, "{not json at all}")
    lines.insert(12, '["img/rgb.png", "a list"]')
    lines.insert(14, "")  # blank lines are not rows
    expected.update({"bad_json": 2, "bad_row": 1})
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return labels | {"ink/good.inkml": "x+1"}, expected


def test_messy_folder_skips_exactly_the_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good, expected = messy_folder(tmp_path)
    cfg = DataConfig(max_image_side=1000)
    src = open_source(str(tmp_path), cfg)
    with caplog.at_level(logging.WARNING, logger="texocr.data"):
        samples = list(src)
    assert Counter(s.reason for s in src.skipped) == expected
    assert len(src) == len(samples) + sum(expected.values())
    got = {s.meta.get("image") or s.meta.get("inkml") or s.id: s for s in samples}
    by_label = {s.latex: s for s in samples}
    assert sorted(by_label) == sorted(good.values())  # every good row, with its own label
    for s in samples:
        assert s.image.mode == "RGB" and min(s.image.size) >= 2
        px = np.asarray(s.image)
        assert px.max() >= 240 and px.min() <= 40, f"{s.id}: lost its ink or its paper after conversion"
    assert by_label["e^{i\\pi}+1=0"].image.size == (1000, 200)  # downscaled, aspect kept
    assert by_label["a+b"].meta["writer"] == "w1" and by_label["a+b"].meta["source"] == str(tmp_path)
    assert got  # ids are set
    summary = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(summary) == 1 and f"skipped {sum(expected.values())} of {len(src)}" in summary[0]
    assert "missing_image 3" in summary[0] and "bad_json 2" in summary[0]

    out = write_skipped(src.skipped, tmp_path / "run" / "skipped.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert Counter(r["reason"] for r in rows) == expected and all(r["id"] and r["detail"] for r in rows)

    list(src)  # a second pass counts afresh rather than doubling
    assert Counter(s.reason for s in src.skipped) == expected


def test_labels_only_touch_no_images(tmp_path: Path) -> None:
    (tmp_path / "labels.jsonl").write_text('{"latex": "a"}\n{"image": "gone.png", "latex": "b"}\n{"latex": " "}\n')
    src = open_source(str(tmp_path))
    assert [lab for _, lab in src.labels()] == ["a", "b"]
    assert [s.reason for s in src.skipped] == ["empty_label"]
    assert list(src) == [] and sorted(s.reason for s in src.skipped) == ["empty_label", "missing_image",
                                                                          "missing_image"]


def test_split_field_and_split_subfolders(tmp_path: Path) -> None:
    save(formula(), tmp_path / "a.png")
    rows = [{"image": "a.png", "latex": f"x_{i}", "split": s} for i, s in enumerate(["train", "val", "valid", "test"])]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [s.latex for s in open_source(str(tmp_path), split="validation")] == ["x_1", "x_2"]
    assert len(open_source(str(tmp_path))) == 4  # no split: every row

    nested = tmp_path / "nested"
    for split in ("train", "test"):
        save(formula(), nested / split / "a.png")
        (nested / split / "labels.jsonl").write_text(json.dumps({"image": "a.png", "latex": split}) + "\n")
    assert [s.latex for s in open_source(str(nested), split="test")] == ["test"]
    assert canonical_split("Validation") == "val" and canonical_split("dev") == "val"


def test_csv_folder(tmp_path: Path) -> None:
    save(formula(), tmp_path / "a.png")
    (tmp_path / "data.csv").write_text('image,latex\na.png,"\\frac{a,b}{c}"\nmissing.png,x\na.png\na.png,y,extra\n')
    src = open_source(str(tmp_path))
    assert [s.latex for s in src] == ["\\frac{a,b}{c}"]
    assert Counter(s.reason for s in src.skipped) == {"missing_image": 1, "bad_row": 2}
    (tmp_path / "t.tsv").write_text("file_name\tformula\na.png\tz^{2}\n")
    assert [s.latex for s in open_source(str(tmp_path / "t.tsv"))] == ["z^{2}"]


def test_im2latex_lst_both_layouts(tmp_path: Path) -> None:
    images = tmp_path / "formula_images_processed"
    save(formula(), images / "abc.png")
    save(formula(), images / "def.png")
    # formula 1 holds a bare carriage return: only "\n" separates formulas
    (tmp_path / "im2latex_formulas.norm.lst").write_bytes(b"a + b\n\\frac { 1 } { 2 }\r x\nc ^ 2\n")
    (tmp_path / "im2latex_train_filter.lst").write_text("abc.png 0\ndef.png 2\nabc.png 99\ngarbage\n")
    (tmp_path / "im2latex_test_filter.lst").write_text("def.png 1\n")
    src = open_source(str(tmp_path), split="train")
    assert [(s.id, s.latex) for s in src] == [("abc.png", "a + b"), ("def.png", "c ^ 2")]
    assert Counter(s.reason for s in src.skipped) == {"missing_label": 1, "bad_row": 1}
    assert [s.latex for s in open_source(str(tmp_path), split="test")] == ["\\frac { 1 } { 2 }\r x"]
    # the original Zenodo layout: formula_idx image_name render_type
    (tmp_path / "orig").mkdir()
    save(formula(), tmp_path / "orig" / "formula_images" / "abc.png")
    (tmp_path / "orig" / "im2latex_formulas.lst").write_text("q\nr\n")
    (tmp_path / "orig" / "im2latex_validate.lst").write_text("1 abc basic\n")
    assert [s.latex for s in open_source(str(tmp_path / "orig"), split="val")] == ["r"]
    with pytest.raises(TexocrError, match="no im2latex list for split 'test'"):
        open_source(str(tmp_path / "orig"), split="test")


def _saved_dataset(path: Path, text_col: str = "text") -> None:
    import datasets

    def png(color: str) -> bytes:
        buf = io.BytesIO()
        formula(bg=color).save(buf, "PNG")
        return buf.getvalue()

    feats = datasets.Features({"image": datasets.Image(), text_col: datasets.Value("string")})
    train = datasets.Dataset.from_dict(
        {"image": [{"bytes": png("white"), "path": None}, {"bytes": b"not a png", "path": None},
                   {"bytes": png("yellow"), "path": None}],
         text_col: ["x^{2}", "y", "  "]}, features=feats)
    datasets.DatasetDict({"train": train, "validation": train.select([0])}).save_to_disk(str(path))


def test_hf_saved_dataset(tmp_path: Path) -> None:
    _saved_dataset(tmp_path / "ds")
    src = open_source(f"hf:{tmp_path / 'ds'}", split="train")
    assert len(src) == 3
    samples = list(src)
    assert [s.latex for s in samples] == ["x^{2}"] and samples[0].image.mode == "RGB"
    assert Counter(s.reason for s in src.skipped) == {"not_an_image": 1, "empty_label": 1}
    assert [lab for _, lab in src.labels()] == ["x^{2}", "y"]
    val = open_source(str(tmp_path / "ds"), split="val")  # no hf: prefix needed; val -> validation
    assert [s.latex for s in val] == ["x^{2}"] and val.name.endswith(":validation")
    with pytest.raises(TexocrError, match="no split 'test'; available: train, validation"):
        open_source(f"hf:{tmp_path / 'ds'}", split="test")


def test_hf_columns_detected_or_configured_and_streaming(tmp_path: Path) -> None:
    _saved_dataset(tmp_path / "ds", text_col="formula")
    assert [s.latex for s in open_source(str(tmp_path / "ds"))] == ["x^{2}"]  # `formula` detected
    with pytest.raises(TexocrError, match="no text column 'latex'"):
        open_source(str(tmp_path / "ds"), DataConfig(text_column="latex"))
    stream = open_source(str(tmp_path / "ds"), DataConfig(streaming=True, text_column="formula"))
    with pytest.raises(TypeError):
        len(stream)
    assert [s.latex for s in stream] == ["x^{2}"] and len(stream.skipped) == 2


def test_hub_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for spec in ("hf:someone/some_formulas", "unsloth/LaTeX_OCR", "linxy/LaTeX_OCR#human_handwrite"):
        with pytest.raises(TexocrError, match="cannot load Hugging Face data set .*save_to_disk"):
            open_source(spec, split="test")
    with pytest.raises(TexocrError, match="no split 'val'; available: train, test"):
        open_source("unsloth/LaTeX_OCR", split="val")  # known from the preset, before any network


def test_unknown_specs() -> None:
    with pytest.raises(TexocrError, match="needs the hf: prefix"):
        open_source("someone/not_a_folder")
    with pytest.raises(TexocrError, match="empty data source"):
        open_source("  ")


def test_folder_without_labels_or_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save(formula(), tmp_path / "a.png")
    with pytest.raises(TexocrError, match="no labels.jsonl"):
        open_source(str(tmp_path))
    (tmp_path / "labels.jsonl").write_text("")

    def denied(path: Path, split: str | None) -> None:  # the tests run as root: fake the permission error
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("texocr.data.sources._read_jsonl", denied)
    with pytest.raises(TexocrError, match="cannot read .*labels.jsonl: Permission denied"):
        open_source(str(tmp_path))


def test_synthetic_delegates_to_the_engine() -> None:
    pytest.importorskip("texocr.data.synth")
    src = open_source("synthetic", DataConfig(synthetic_n=3, seed=1))
    samples = list(src)
    assert len(samples) == 3 and all(s.image.mode == "RGB" and s.latex for s in samples)


@pytest.mark.skipif(not (SHARED / "handwritten-small").is_dir(), reason="../shared/data not present")
def test_shared_handwritten_small() -> None:
    src = open_source(str(SHARED / "handwritten-small"), split="val")
    samples = list(src)
    assert len(samples) == 68 and not src.skipped and samples[0].image.mode == "RGB"


def test_every_source_kind_yields_the_same_record(tmp_path: Path) -> None:
    """Folder, Hugging Face (saved copy), InkML and synthetic: one Sample type with the same fields and types;
    the same formula gives the same label through the three labelled kinds."""
    import datasets

    from texocr.sample import Sample

    latex = "\\frac{a}{b}"
    save(formula(), tmp_path / "folder" / "a.png")
    (tmp_path / "folder" / "labels.jsonl").write_text(json.dumps({"image": "a.png", "latex": latex}) + "\n")
    buf = io.BytesIO()
    formula().save(buf, "PNG")
    feats = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"image": [{"bytes": buf.getvalue(), "path": None}], "text": [latex]}, features=feats)}
    ).save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "ink").mkdir()
    (tmp_path / "ink" / "a.inkml").write_text(
        '<ink xmlns="http://www.w3.org/2003/InkML"><annotation type="normalizedLabel">\\frac{a}{b}</annotation>'
        '<trace>10 10, 30 10</trace><trace>20 20, 20 40</trace></ink>')

    kinds = {
        "folder": list(open_source(str(tmp_path / "folder"))),
        "hf": list(open_source(f"hf:{tmp_path / 'hf'}", split="train")),
        "inkml": list(open_source(str(tmp_path / "ink"))),
        "synthetic": list(open_source("synthetic", DataConfig(synthetic_n=2, seed=3))),
    }
    for kind, samples in kinds.items():
        assert samples, kind
        for s in samples:
            assert type(s) is Sample, kind
            assert isinstance(s.image, Image.Image) and s.image.mode == "RGB" and min(s.image.size) > 1, kind
            assert isinstance(s.latex, str) and s.latex.strip(), kind
            assert isinstance(s.id, str) and s.id, kind
            assert isinstance(s.meta, dict), kind
    assert {kinds[k][0].latex for k in ("folder", "hf", "inkml")} == {latex}


def test_deferred_rows_are_unread_picklable_and_read_as_iteration_does(tmp_path):
    """`Source.deferred()` gives the same samples as iterating, with images left unread (a corrupt file is not
    noticed) as DeferredImages that pickle (for worker processes) and read to the same pixels."""
    import pickle

    from PIL import Image

    from texocr.data.sources import open_source
    from texocr.errors import TexocrError
    from texocr.sample import DeferredImage

    Image.new("RGB", (40, 20), "white").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    (tmp_path / "labels.jsonl").write_text('{"image": "a.png", "latex": "x"}\n{"image": "b.png", "latex": "y"}\n'
                                           '{"image": "../outside.png", "latex": "z"}\n')
    src = open_source(str(tmp_path))
    read = list(src)
    assert [s.latex for s in read] == ["x"] and {s.reason for s in src.skipped} == {"not_an_image", "outside_dataset"}
    lazy = list(src.deferred())
    assert [s.latex for s in lazy] == ["x", "y"] and [s.reason for s in src.skipped] == ["outside_dataset"]
    assert all(isinstance(s.image, DeferredImage) for s in lazy) and lazy[0].image.path == tmp_path / "a.png"
    again = pickle.loads(pickle.dumps(lazy[0].image))
    assert again.load().tobytes() == read[0].image.tobytes()
    with pytest.raises(TexocrError):
        lazy[1].image.load()
