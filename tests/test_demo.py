"""`python -m texocr.demo --quick`: the whole measure / fine-tune / measure flow on a tiny model, both cases
(a fresh model fully trained, and the LoRA recipe on a given model), plus the time limit it relies on."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from texocr import demo
from texocr.train_callbacks import TimeLimit


def _renderer_available() -> bool:
    from texocr.evaluate import default_renderer

    return default_renderer() is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if not _renderer_available():
        pytest.skip("no renderer (TeX or ziamath + resvg-py) installed")
    out = tmp_path_factory.mktemp("demo") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = demo.main(["--quick", "--out", str(out)])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


def test_quick_demo_writes_report_and_metrics(quick_run: tuple[Path, str]) -> None:
    out, printed = quick_run
    for name in ("index.html", "before_after.json", "eval/report.html", "eval/metrics.json",
                 "eval/compare/metrics.json", "eval/predictions.jsonl", "train/loss_curve.png",
                 "train/model/config.json", "test/labels.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "before_after.json").read_text())
    assert summary["case"] == "scratch" and summary["method"] == "full"
    assert 1 <= summary["steps"] <= 4
    assert summary["before"]["n"] == summary["after"]["n"] == 8
    assert json.loads((out / "eval" / "metrics.json").read_text()) == pytest.approx(summary["after"])
    # the test set is the test formulas in order, each once (no formula drawn twice)
    from texocr.latex import normalize

    labels = [json.loads(ln)["latex"] for ln in (out / "test" / "labels.jsonl").read_text().splitlines()]
    test_formulas = (out / "formulas" / "test.txt").read_text().splitlines()
    assert labels == [normalize(f) for f in test_formulas]
    # the printed table: a header, then one row per model with a number per column
    lines = printed.splitlines()
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines if ln.startswith(("before ", "after "))}
    header = next(ln for ln in lines if ln.split() and ln.split()[0] == "exact_match")
    assert set(rows) == {"before", "after"}
    assert all(len(v) == len(header.split()) for v in rows.values())
    assert "case scratch" in printed and "--quick: a compact model (tiny) from random weights" in printed
    page = (out / "index.html").read_text()
    assert "Before and after" in page and "data:image/png;base64," in page


def test_demo_refuses_a_non_empty_out_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_quick_demo_lora_on_a_given_model(quick_run: tuple[Path, str], tmp_path: Path) -> None:
    """The default-model case's recipe (LoRA, configs/demo/default-lora.yaml) on the model the first run trained."""
    import contextlib
    import io

    model = quick_run[0] / "train" / "model"
    out = tmp_path / "lora"
    out.mkdir()
    (out / demo.MARKER).write_text("")  # a previous demo's output is replaced, not refused
    (out / "old.txt").write_text("old")
    with contextlib.redirect_stdout(io.StringIO()):
        assert demo.main(["--quick", "--out", str(out), "--model", str(model)]) == 0
    assert not (out / "old.txt").exists()
    summary = json.loads((out / "before_after.json").read_text())
    assert summary["case"] == "model" and summary["method"] == "lora"
    assert (out / "train" / "adapter" / "adapter_config.json").is_file()
    # the starting model scores the same in both runs: the same test set and the same weights
    first = json.loads((quick_run[0] / "before_after.json").read_text())
    assert summary["before"]["exact_match"] == pytest.approx(first["after"]["exact_match"])


def test_texocr_demo_is_the_same_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`texocr demo` parses the demo's own options and goes through the same checks."""
    from texocr.cli import main as cli

    (tmp_path / "notes.txt").write_text("mine")
    assert cli(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # a wrong type is argparse's usage error: one line, exit 2
        cli(["demo", "--minutes", "soon"])
    assert stop.value.code == 2
    assert "invalid float value" in capsys.readouterr().err


def test_model_must_be_a_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--quick", "--out", str(tmp_path / "x"), "--model", str(tmp_path)]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_formula_files_share_no_formula(tmp_path: Path) -> None:
    from texocr.latex import normalize

    train, test, _ = demo.write_formulas(tmp_path, 3000, 200, seed=0)
    train_set = {normalize(f) for f in train.read_text().splitlines()}
    test_lines = test.read_text().splitlines()
    assert len(test_lines) == 200
    assert not train_set & {normalize(f) for f in test_lines}


def test_formula_files_drop_test_formulas_seen_in_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator that repeats itself (short formulas do): the repeats leave the test file, which still gets its
    n formulas, compared in normalized form (`x^2` is `x ^ { 2 }`)."""
    from texocr.data import formulas

    class Repeating:
        def __init__(self, seed: int, length_hist: object = None) -> None:
            self.seed = seed

        def formula(self, i: int) -> str:  # train (seed 0): x^0 .. x^9; test (seed 1): x ^ { 0 } .. x ^ { 19 }
            return f"x^{i % 10}" if self.seed == 0 else f"x ^ {{ {i % 20} }}"

    monkeypatch.setattr(formulas, "FormulaGenerator", Repeating)
    _, test, dropped = demo.write_formulas(tmp_path, 30, 25, seed=0)
    lines = test.read_text().splitlines()
    assert len(lines) == 25 and dropped == 30  # i = 0..9, 20..29 and 40..49 repeat training formulas
    assert {f"x ^ {{ {k} }}" for k in range(10, 20)} == set(lines)


def test_table_rows() -> None:
    text = demo.table({"exact_match": 0.0, "bleu4": 0.1}, {"exact_match": 0.5, "bleu4": 0.75})
    header, before, after = text.splitlines()
    assert header.split() == ["exact_match", "bleu4"]
    assert before.split() == ["before", "0.000", "0.100"] and after.split() == ["after", "0.500", "0.750"]


@pytest.mark.parametrize(("minutes", "stops"), [(0.0, True), (60.0, False)])
def test_time_limit_stops_training(minutes: float, stops: bool) -> None:
    cb = TimeLimit(minutes)
    control = SimpleNamespace(should_training_stop=False)
    args = SimpleNamespace(world_size=1)
    cb.on_train_begin(args, SimpleNamespace(), control)
    cb.on_step_end(args, SimpleNamespace(global_step=1), control)
    assert control.should_training_stop is stops
