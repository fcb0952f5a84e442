"""One --out rule for `data render`, `eval` and `demo` (texocr.outdir): a new, empty or own folder is used, a
foreign non-empty one is refused unless --overwrite, which writes over it and deletes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from texocr.cli import main
from texocr.errors import TexocrError
from texocr.outdir import marker_name, prepare_output_dir


def test_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = prepare_output_dir(tmp_path / "new", "eval")
    assert (new / ".texocr-eval").is_file() and marker_name("data render") == ".texocr-data-render"
    (new / "old.txt").write_text("a previous run's file")
    prepare_output_dir(new, "eval")  # its own previous output: replaced
    assert not (new / "old.txt").exists() and "replacing" in capsys.readouterr().err
    with pytest.raises(TexocrError, match="not written by `texocr demo`"):  # another command's folder
        prepare_output_dir(new, "demo")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(TexocrError, match="not empty .* --overwrite"):
        prepare_output_dir(mine, "eval")
    prepare_output_dir(mine, "eval", overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine" and not (mine / ".texocr-eval").exists()  # never marked
    with pytest.raises(TexocrError, match="a file, not a folder"):
        prepare_output_dir(mine / "notes.txt", "eval")


@pytest.fixture
def eval_data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    with (d / "labels.jsonl").open("w") as f:
        for i, latex in enumerate(["x^2", "a+b"]):
            im = Image.new("RGB", (90, 36), "white")
            ImageDraw.Draw(im).text((6, 10), latex, fill="black")
            im.save(d / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "latex": latex}) + "\n")
    return d


def test_eval_refuses_a_foreign_folder_unless_overwrite(tiny_model_dir, eval_data, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    def run(folder: Path, *extra: str) -> int:
        return main(["eval", "--model", str(tiny_model_dir("qwen2_vl")), "--data", str(eval_data),
                     "--out", str(folder), "--max-new-tokens", "4", "--no-render", *extra])

    assert run(out) == 2
    assert "not empty" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert run(out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.json").is_file()
    fresh = tmp_path / "fresh"
    assert run(fresh) == 0
    (fresh / "stale.txt").write_text("from before")
    assert run(fresh) == 0  # its own previous output: replaced
    assert not (fresh / "stale.txt").exists() and (fresh / "metrics.json").is_file()


def test_data_render_refuses_a_foreign_folder_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "synth"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["data", "render", "--n", "2", "--out", str(out), "--workers", "1", "--no-augment"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err and not (out / "labels.jsonl").exists()
    try:
        from texocr.data.render import get_renderer

        get_renderer("auto")
    except TexocrError:
        return  # no renderer here: the refusal above is what can be checked
    assert main(args + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and len((out / "labels.jsonl").read_text().splitlines()) == 2
