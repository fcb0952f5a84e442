"""The data path loses nothing: a data set holding every unusual image kind plus bad rows of every sort.

Every good row is read with the right pixels and transcribed by `texocr eval`; every bad row is skipped with its
own reason and counted; an image path that leads out of the data set's folder is refused without being opened.
"""

from __future__ import annotations

import builtins
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from texocr.cli import main as cli
from texocr.data.sources import (
    OUTSIDE,
    format_skipped,
    inside,
    open_source,
    skip_counts,
)

SIZE = (40, 16)
INK = (8, 5, 32, 11)  # the black bar every good image carries: [x0, y0, x1, y1)


def _bar(mode: str, paper: Any, ink: Any) -> Image.Image:
    img = Image.new(mode, SIZE, paper)
    img.paste(ink, INK)
    return img


def _palette_alpha() -> Image.Image:
    """Palette + per-entry alpha (PNG tRNS): index 0 is black and fully transparent, index 1 opaque black."""
    img = Image.new("P", SIZE, 0)
    img.putpalette([0, 0, 0] * 256)
    img.paste(1, INK)
    return img


def _save(img: Image.Image, path: Path, fmt: str, **kw: Any) -> None:
    img.save(path, format=fmt, **kw)


GOOD: dict[str, Callable[[Path], None]] = {
    "gray16.png": lambda p: _save(_bar("I;16", 65535, 0), p, "PNG"),
    "float32.tif": lambda p: _save(_bar("F", 1.0, 0.0), p, "TIFF"),
    "palette_alpha.png": lambda p: _save(_palette_alpha(), p, "PNG", transparency=bytes([0, 255])),
    "cmyk.jpg": lambda p: _save(_bar("CMYK", (0, 0, 0, 0), (0, 0, 0, 255)), p, "JPEG", quality=95),
    "exif_rotated.jpg": lambda p: _save(_bar("RGB", "white", (0, 0, 0)), p, "JPEG", quality=95,
                                        exif=_orientation(6)),
    "animated.gif": lambda p: _save(_bar("L", 255, 0), p, "GIF", save_all=True,
                                    append_images=[Image.new("L", SIZE, 0)], duration=100),
    "animated.png": lambda p: _save(_bar("RGB", "white", (0, 0, 0)), p, "PNG", save_all=True,
                                    append_images=[Image.new("RGB", SIZE, "black")]),
}
"""File name -> writer: one image of each kind that must read as black ink on white paper (first frame)."""


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value  # 6: the camera was turned, show it rotated 90 degrees clockwise
    return exif.tobytes()


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Any]:
    """`ds/labels.jsonl` with every good kind, an inside symlink, and one bad row per skip reason."""
    ds = tmp_path / "ds"
    (ds / "sub").mkdir(parents=True)
    rows: list[Any] = []
    for name, write in GOOD.items():
        write(ds / name)
        rows.append({"image": name, "latex": f"x_{{{len(rows)}}}"})
    (ds / "alias.png").symlink_to("gray16.png")  # a symlink that stays inside: fine
    rows.append({"image": "sub/../alias.png", "latex": "y"})
    outside, secret = tmp_path / "outside.png", tmp_path / "secret" / "secret.png"
    secret.parent.mkdir()
    for path in (outside, secret):
        _bar("RGB", "white", (0, 0, 0)).save(path)
    (ds / "escape.png").symlink_to(outside)
    Image.new("RGB", (1, 1), "white").save(ds / "dot.png")
    whole = io.BytesIO()
    Image.effect_noise((64, 64), 64).save(whole, format="PNG")
    (ds / "corrupt.png").write_bytes(whole.getvalue()[:200])  # header fine, pixel stream cut short
    bad = [
        ({"image": "../outside.png", "latex": "a"}, OUTSIDE),
        ({"image": str(secret), "latex": "b"}, OUTSIDE),
        ({"image": "escape.png", "latex": "c"}, OUTSIDE),
        ({"image": "sub/../../secret/secret.png", "latex": "d"}, OUTSIDE),
        ({"inkml": "../secret/secret.png", "latex": "e"}, OUTSIDE),
        ({"image": "gone.png", "latex": "f"}, "missing_image"),
        ({"image": "corrupt.png", "latex": "g"}, "corrupt_image"),
        ({"image": "dot.png", "latex": "h"}, "too_small"),
        ({"image": "gray16.png", "latex": "  "}, "empty_label"),
        ({"image": "gray16.png", "latex": 7}, "bad_label"),
        ({"image": "gray16.png"}, "missing_label"),
        ({"latex": "i"}, "missing_image"),
        ("{not json", "bad_json"),
        ([1, 2], "bad_row"),
    ]
    lines = [json.dumps(r) for r in rows] + [r if isinstance(r, str) else json.dumps(r) for r, _ in bad]
    (ds / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return {"path": ds, "good": len(rows), "bad": [reason for _, reason in bad], "never": [outside, secret]}


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch, dataset: dict[str, Any]) -> list[str]:
    """Every attempt to open a file outside the data set (by any route texocr or PIL take) is recorded and fails."""
    never = {os.path.realpath(p) for p in dataset["never"]}
    attempts: list[str] = []

    def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
        def opener(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(file)) in never:
                attempts.append(os.fsdecode(file))
                raise AssertionError(f"opened {file}")
            return real(file, *args, **kwargs)
        return opener

    monkeypatch.setattr(builtins, "open", guarded(builtins.open))
    monkeypatch.setattr(io, "open", guarded(io.open))
    monkeypatch.setattr(os, "open", guarded(os.open))
    monkeypatch.setattr(Image, "open", guarded(Image.open))
    return attempts


def test_the_guard_sees_an_open(guard: list[str], dataset: dict[str, Any]) -> None:
    with pytest.raises(AssertionError):
        Path(dataset["never"][0]).read_bytes()
    assert guard == [str(dataset["never"][0])]


def test_every_image_kind_reads_as_ink_on_paper(dataset: dict[str, Any], guard: list[str]) -> None:
    samples = {s.id: s for s in open_source(str(dataset["path"]))}
    assert set(samples) == {*GOOD, "sub/../alias.png"}
    for name, sample in samples.items():
        px = np.asarray(sample.image).astype(int)  # [H, W, 3]
        assert sample.image.mode == "RGB", name
        if name == "exif_rotated.jpg":  # shown turned 90 degrees clockwise: the bar stands upright
            assert sample.image.size == (SIZE[1], SIZE[0])
            px = np.rot90(px, k=1)  # undo it: back to the layout that was drawn
        else:
            assert sample.image.size == SIZE, name
        assert np.abs(px[0, 0] - 255).max() <= 8, f"{name}: paper is {px[0, 0]}"  # a later frame is all black
        assert np.abs(px[8, 20] - 0).max() <= 8, f"{name}: ink is {px[8, 20]}"
    assert guard == []


def test_escaping_paths_are_refused_without_being_opened(dataset: dict[str, Any], guard: list[str]) -> None:
    src = open_source(str(dataset["path"]))
    list(src)
    outside = [s for s in src.skipped if s.reason == OUTSIDE]
    assert len(outside) == 5 and guard == []
    details = " | ".join(s.detail for s in outside)
    assert "is an absolute path" in details and "goes up out of" in details and "is a symlink out of" in details


def test_inside_keeps_paths_that_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a/../b.png") == tmp_path / "a/../b.png"
    assert isinstance(inside(tmp_path / "a", "../b.png"), str)


def test_every_skip_reason_is_counted(dataset: dict[str, Any]) -> None:
    src = open_source(str(dataset["path"]))
    assert len(list(src)) == dataset["good"]
    expected: dict[str, int] = {}
    for reason in dataset["bad"]:
        expected[reason] = expected.get(reason, 0) + 1
    assert skip_counts(src.skipped) == expected
    summary = format_skipped("ds", src.skipped, len(src))
    assert f"skipped {len(dataset['bad'])} of {len(src)} rows" in summary
    assert all(f"{reason} {n}" in summary for reason, n in expected.items())


def test_eval_transcribes_every_good_row_and_skips_every_bad_one(
        dataset: dict[str, Any], guard: list[str], tiny_model_dir: Callable[[str], Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    rc = cli(["eval", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(dataset["path"]), "--out", str(out),
              "--no-render", "--max-new-tokens", "3"])
    assert rc == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == dataset["good"] and all(not p.get("error") for p in preds), preds
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["reason"] for s in skipped) == sorted(dataset["bad"])
    assert guard == []
    assert f"skipped {len(dataset['bad'])}" in json.dumps((out / "metrics.json").read_text()) + \
        (out / "report.html").read_text()
