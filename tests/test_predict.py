"""`texocr predict` over a folder of good and bad files, stdin, .tex/.png outputs, streaming."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import pytest
from PIL import Image, ImageDraw

from texocr.cli import main
from texocr.predict import _Writers, expand_inputs

MAX_NEW = ["--max-new-tokens", "8"]


def _formula(path, w=120, h=36, text="x^2+1"):
    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).text((6, 10), text, fill="black")
    im.save(path)


def _huge_png_header(path, w=9000, h=8000):
    """A small PNG file whose header declares w x h pixels (72 M, over the 64 M guard): refused undecoded."""
    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.fixture
def messy_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    good = ["good_a.png", "good_b.jpg", "sub/good_c.png"]
    (d / "sub").mkdir()
    _formula(d / good[0])
    _formula(d / good[1], 200, 50, "a/b")
    _formula(d / good[2], 80, 40, "y")
    full = io.BytesIO()
    Image.new("RGB", (120, 40), "white").save(full, format="PNG")
    (d / "truncated.png").write_bytes(full.getvalue()[:60])
    (d / "text.png").write_text("this is a text file, not an image\n")
    Image.new("RGB", (1, 1), "black").save(d / "one_pixel.png")
    Image.new("RGBA", (90, 30), (0, 0, 0, 0)).save(d / "transparent.png")
    (d / "empty.png").write_bytes(b"")
    _huge_png_header(d / "huge.png")
    (d / "notes.txt").write_text("not an image suffix: ignored when listing a folder\n")
    bad = {"truncated.png": "cannot decode", "text.png": "not an image", "one_pixel.png": "smaller than",
           "transparent.png": "blank image", "empty.png": "empty file", "huge.png": "more than the limit"}
    return d, good, bad


def test_predict_folder_with_bad_files(tiny_model_dir, messy_dir, capsys, tmp_path):
    d, good, bad = messy_dir
    rc = main(["predict", "--model", str(tiny_model_dir("qwen2_vl")), str(d), "--json",
               "--tex-dir", str(tmp_path / "tex"), "--batch-size", "2", *MAX_NEW])
    assert rc == 2  # some images failed: the good ones are printed, and the exit code says it was partial
    captured = capsys.readouterr()
    assert f"{len(bad)} of {len(good) + len(bad)} images failed" in captured.err
    lines = [json.loads(x) for x in captured.out.splitlines()]
    by_name = {line["path"].removeprefix(str(d) + "/"): line for line in lines}
    assert set(by_name) == set(good) | set(bad)  # notes.txt is not listed
    for name in good:
        rec = by_name[name]
        assert rec["error"] is None and rec["text"] is not None and rec["tokens"] > 0 and rec["time_s"] > 0
    # time: each image's share of its batch (3 good images in batches of 2: sizes 2 and 1), not the batch's time
    ok = [by_name[n] for n in good]
    assert sorted(r["batch_size"] for r in ok) == [1, 2, 2]
    for r in ok:
        assert r["time_s"] == pytest.approx(r["batch_time_s"] / r["batch_size"], rel=1e-3, abs=1e-6)
    pair = [r for r in ok if r["batch_size"] == 2]
    assert pair[0]["batch_time_s"] == pair[1]["batch_time_s"] and pair[0]["time_s"] < pair[0]["batch_time_s"]
    for name, message in bad.items():
        rec = by_name[name]
        assert rec["error"] and message in rec["error"], (name, rec["error"])
        assert rec["text"] == ""
    assert sorted(p.name for p in (tmp_path / "tex").iterdir()) == ["good_a.tex", "good_b.tex", "good_c.tex"]
    assert (tmp_path / "tex" / "good_a.tex").read_text() == by_name["good_a.png"]["text"] + "\n"


def test_predict_plain_lines_and_exit_code(tiny_model_dir, messy_dir, capsys):
    d, good, _ = messy_dir
    model = str(tiny_model_dir("qwen2_vl"))
    assert main(["predict", "--model", model, str(d / good[0]), str(d / good[1]), *MAX_NEW]) == 0
    capsys.readouterr()
    # 4 of 6 inputs bad: the 2 good ones are printed, then exit 2
    inputs = [str(d / n) for n in (good[0], "empty.png", "text.png", good[1], "nothere.png", "huge.png")]
    assert main(["predict", "--model", model, *inputs, *MAX_NEW]) == 2
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert [line.split("\t")[0] for line in out] == [str(d / good[0]), str(d / good[1])]
    assert "empty.png" in captured.err and "empty file" in captured.err and "4 of 6 images failed" in captured.err
    assert main(["predict", "--model", model, str(d / "empty.png"), str(d / "nothere.png"), *MAX_NEW]) == 2
    assert "2 of 2 images failed" in capsys.readouterr().err


@pytest.mark.skipif(not (shutil.which("latex") and shutil.which("dvipng")), reason="latex/dvipng not installed")
def test_predict_with_no_model_argument_reads_a_printed_formula(capsys, tmp_path):
    """Zero configuration: `texocr predict IMG` uses the shipped default model, on a TeX render (im2latex style)."""
    from texocr.data.render import get_renderer

    formulas = ["x ^ { 2 } + y ^ { 2 } = z ^ { 2 }", "\\int _ { 0 } ^ { 1 } f ( x ) d x"]
    paths = []
    for i, img in enumerate(get_renderer("tex").render_batch(formulas, font="cm", dpi=120)):
        paths.append(tmp_path / f"f{i}.png")
        img.save(paths[-1])
    assert main(["predict", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{p}\t{f}" for p, f in zip(paths, formulas)]


def test_predict_stream(tiny_model_dir, messy_dir, capsys):
    d, good, _ = messy_dir
    assert main(["predict", "--model", str(tiny_model_dir("qwen2_vl")), str(d / good[0]), "--stream", *MAX_NEW]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(d / good[0]) + "\t") and out.endswith("\n")


def test_stdin_paths_or_image_bytes(messy_dir):
    d, good, _ = messy_dir
    paths = f"{d / good[0]}\n\n{d / good[1]}\n"
    assert expand_inputs(["-"], io.BytesIO(paths.encode())) == [(str(d / good[0]), str(d / good[0])),
                                                                  (str(d / good[1]), str(d / good[1]))]
    data = (d / good[0]).read_bytes()
    assert expand_inputs(["-"], io.BytesIO(data)) == [("-", data)]


def test_render_dir_writes_pngs(tmp_path):
    try:
        w = _Writers(None, str(tmp_path / "png"))
    except Exception as e:  # noqa: BLE001 - TexocrError when no renderer is installed
        pytest.skip(f"no renderer: {e}")
    w.write(["a.png", "dir/a.png", "bad.png"], [r"\frac{1}{2}", "x^2", None])
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a-2.png", "a.png"]
    assert Image.open(tmp_path / "png" / "a.png").size[0] > 5


def test_missing_model_directory_says_so(tmp_path, capsys):
    _formula(tmp_path / "a.png")
    missing = tmp_path / "no" / "such" / "model"
    assert main(["predict", "--model", str(missing), str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert f"no such directory: {missing}" in err and "model family" not in err
    (tmp_path / "file").write_text("not a folder")
    assert main(["predict", "--model", str(tmp_path / "file"), str(tmp_path / "a.png")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_predict_with_workers_reads_in_processes_and_answers_the_same(tiny_model_dir, messy_dir, capsys):
    """`--workers N` (the default on a GPU) reads, rescales and encodes the images in N processes: the same text
    or error per file as reading them in this process."""
    d, good, bad = messy_dir
    model = str(tiny_model_dir("qwen2_vl"))
    runs = []
    for workers in ("0", "2"):
        assert main(["predict", "--model", model, str(d), "--json", "--workers", workers, "--batch-size", "2",
                     *MAX_NEW]) == 2
        runs.append({r["path"]: (r["text"], r["error"]) for r in map(json.loads, capsys.readouterr().out.splitlines())})
    assert runs[0] == runs[1] and len(runs[0]) == len(good) + len(bad)
    assert sum(err is None for _, err in runs[1].values()) == len(good)
