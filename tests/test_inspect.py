"""`texocr data stats` and `texocr data overlap`, through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from texocr.cli import main
from texocr.data.inspect import histogram


def make_set(root: Path, rows: list[tuple[str, tuple[int, int] | None]]) -> Path:
    """A labels.jsonl folder; a row with size None points at a missing image."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (latex, size) in enumerate(rows):
        if size is not None:
            Image.new("RGB", size, "white").save(root / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "latex": latex, "id": f"r{i}"}))
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_set(tmp_path / "d", [("x^{2}", (40, 20)), ("a+b", (100, 30)), ("\\frac{1}{2}", (60, 50)),
                                     ("y", None), ("  ", (10, 10))])
    st = run_json(capsys, ["data", "stats", str(data), "--json", "--skipped", str(tmp_path / "skipped.jsonl")])
    assert st["samples"] == 3 and st["skipped"] == 2 and not st["text_only"]
    assert st["skipped_by_reason"] == {"empty_label": 1, "missing_image": 1}
    assert st["image_width"] == {"min": 40, "median": 60, "max": 100, "mean": 66.67}
    assert st["image_height"]["min"] == 20 and st["image_height"]["max"] == 50
    # x ^ { 2 } -> 5 tokens; a + b -> 3; \frac { 1 } { 2 } -> 7
    assert st["label_tokens"] == {"min": 3, "median": 5, "max": 7, "mean": 5.0}
    assert sum(b["count"] for b in st["label_tokens_histogram"]) == 3
    assert st["vocab_size"] == 10  # x ^ { 2 } a + b \frac 1 and the shared braces counted once
    assert st["top_tokens"][0] == ["{", 3] and st["top_tokens"][1] == ["}", 3]
    skipped = [json.loads(line) for line in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in skipped) == ["empty_label", "missing_image"]


def test_stats_text_output_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_set(tmp_path / "d", [(f"x_{{{i}}}" + " + y" * i, (30 + i, 20)) for i in range(8)])
    assert main(["data", "stats", str(data)]) == 0
    out = capsys.readouterr().out
    assert "8 samples, 0 skipped" in out and "image width:  min 30  median 33.5  max 37" in out
    assert "█" in out and "vocabulary:" in out and "top tokens:" in out
    st = run_json(capsys, ["data", "stats", str(data), "--json", "--limit", "3"])
    assert st["samples"] == 3


def test_stats_text_only_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "labels.jsonl").write_text('{"latex": "a + b"}\n{"latex": "c"}\n')
    st = run_json(capsys, ["data", "stats", str(tmp_path), "--json"])
    assert st["text_only"] and st["samples"] == 2 and st["skipped"] == 0 and st["image_width"] is None
    assert main(["data", "stats", str(tmp_path)]) == 0
    assert "text-only" in capsys.readouterr().out


def test_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = make_set(tmp_path / "train", [("x^{2}", (20, 20)), ("a+b", (20, 20)), ("\\alpha", (20, 20))])
    # exact: "a+b"; normalized adds x^2 == x^{2} and "a + b" (spacing); "z" is new
    test = make_set(tmp_path / "test", [("a+b", None), ("x^2", None), ("a + b", None), ("z", None)])
    ov = run_json(capsys, ["data", "overlap", str(train), str(test), "--json"])
    assert ov["train_labels"] == 3 and ov["test_labels"] == 4  # labels only: missing test images don't matter
    assert ov["exact"] == {"count": 1, "fraction": 0.25}
    assert ov["normalized"] == {"count": 3, "fraction": 0.75}
    assert [(e["id"], e["exact"]) for e in ov["examples"]] == [("r0", True), ("r1", False), ("r2", False)]
    assert main(["data", "overlap", str(train), str(test), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "exact:      1 of 4" in out and "normalized: 3 of 4" in out and "(75.00%)" in out
    assert out.count("  r") == 1


def test_overlap_by_split_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"latex": "a", "split": "train"}, {"latex": "b", "split": "train"}, {"latex": "a", "split": "val"},
            {"latex": "c", "split": "val"}]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ov = run_json(capsys, ["data", "overlap", str(tmp_path), str(tmp_path), "--train-split", "train",
                           "--test-split", "val", "--json"])
    assert ov["train_labels"] == 2 and ov["exact"]["count"] == 1


def test_bad_data_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and err.count("\n") == 1 and "Traceback" not in err


def test_histogram_bins() -> None:
    assert histogram([]) == []
    assert histogram([5, 5, 5]) == [{"lo": 5, "hi": 5, "count": 3}]
    bins = histogram(list(range(1, 101)), bins=10)
    assert len(bins) == 10 and all(b["count"] == 10 for b in bins) and bins[-1]["hi"] == 100
