"""evaluate.score (the one scoring path), `texocr eval` outputs, and the report's pieces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from texocr.cli import main
from texocr.config import EvalConfig
from texocr.evaluate import RECORD_KEYS, score
from texocr.infer import Prediction
from texocr.metrics import METRIC_KEYS, compute_metrics
from texocr.report import sample_order, token_diff_html
from texocr.sample import Sample

TIMING_KEYS = {"images_per_s", "latency_ms_p50"}


def _img(text: str, w: int = 120) -> Image.Image:
    im = Image.new("RGB", (w, 36), "white")
    ImageDraw.Draw(im).text((6, 10), text, fill="black")
    return im


class ScriptedRecognizer:
    """Answers each image with the text drawn on it + a scripted change: scoring logic without a model."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[dict] = []

    def predict(self, images, **kwargs):
        self.calls.append(kwargs)
        return [Prediction(self.answers[im.info["label"]], score=-0.1, time_s=0.02, tokens=3, stop="end")
                if im.info["label"] in self.answers else Prediction("", error="boom")
                for im in images]


def _samples(labels: list[str]) -> list[Sample]:
    out = []
    for i, label in enumerate(labels):
        im = _img(label)
        im.info["label"] = label
        out.append(Sample(im, label, f"s{i}"))
    return out


def test_score_aggregates_like_compute_metrics():
    labels = ["x^2", r"\frac{a}{b}", "a+b", "y"]
    answers = {"x^2": "x^{2}", r"\frac{a}{b}": r"\frac{a}{c}", "a+b": "a+b+c"}  # "y" fails with an error
    rec = ScriptedRecognizer(answers)
    res = score(rec, _samples(labels), EvalConfig(batch_size=2, num_beams=3, max_new_tokens=7, render=False))
    expected = compute_metrics(["x^{2}", r"\frac{a}{c}", "a+b+c", ""], labels)
    assert {k: res.metrics[k] for k in METRIC_KEYS} == expected
    assert set(res.metrics) == set(METRIC_KEYS) | TIMING_KEYS
    assert res.metrics["exact_match"] == 0.25 and res.metrics["latency_ms_p50"] == pytest.approx(20.0)
    assert rec.calls[0] == {"batch_size": 2, "num_beams": 3, "max_new_tokens": 7}
    assert [r["id"] for r in res.predictions] == ["s0", "s1", "s2", "s3"]
    assert [r["edit_distance"] for r in res.predictions] == [0, 1, 2, 1]  # y vs "": one deletion
    assert res.predictions[3]["error"] == "boom" and res.predictions[0]["exact"] is True
    assert set(RECORD_KEYS) <= set(res.predictions[0])
    assert res.images == []  # only kept when asked


def test_score_respects_limit_and_streams():
    rec = ScriptedRecognizer({"a": "a"})
    gen = (s for s in _samples(["a"] * 50))  # a generator: no len()
    res = score(rec, gen, EvalConfig(batch_size=4, limit=10, render=False), keep_images=True)
    assert res.metrics["n"] == 10 and len(res.images) == 10 and res.images[0].startswith(b"\x89PNG")
    assert len(rec.calls) == 1  # 10 samples fit in one chunk of 4 * batch_size


def test_score_keeps_only_the_images_a_report_shows():
    """With `image_limit` (what `texocr eval` passes: the report's length), PNGs are made for the first samples and
    for the worst ones, exactly the samples the worst-first report shows, across chunks; none for the rest."""
    labels = [f"x_{i}+y" for i in range(30)]
    # scripted answers: some exact, some off by one or two tokens, one error; the worst are spread over the chunks
    answers = {lab: lab if i % 3 else lab + "+z" * (1 + i % 2) for i, lab in enumerate(labels) if i != 17}
    cfg = EvalConfig(batch_size=2, render=False)  # chunks of 8
    full = score(ScriptedRecognizer(answers), _samples(labels), cfg, keep_images=True)
    some = score(ScriptedRecognizer(answers), _samples(labels), cfg, keep_images=True, image_limit=4)
    shown = set(sample_order(full.predictions)[:4]) | set(range(4))
    assert 17 in shown and len(shown) > 4  # the error is shown, and the worst are not just the first
    assert [i for i, png in enumerate(some.images) if png is not None] == sorted(shown)
    assert all(some.images[i] == full.images[i] for i in shown)
    assert some.predictions == full.predictions


def test_score_of_deferred_images_shows_the_same_report_images(tmp_path):
    """Samples with unread images (`Source.deferred`, what `texocr eval` scores) are ranked after scoring and only
    the shown ones read again: the same PNGs for the same samples as scoring read images."""
    from functools import partial

    from texocr.data.images import load_image
    from texocr.sample import DeferredImage

    labels = [f"x_{i}+y" for i in range(30)]
    answers = {lab: lab if i % 3 else lab + "+z" * (1 + i % 2) for i, lab in enumerate(labels) if i != 17}
    cfg = EvalConfig(batch_size=2, render=False)
    for i, label in enumerate(labels):
        _img(label).save(tmp_path / f"{i}.png")

    class ByPath(ScriptedRecognizer):
        workers = 2  # reads images in its own processes: they reach it unread

        def predict(self, images, **kwargs):
            assert all(isinstance(im, DeferredImage) for im in images)  # nothing was read for it
            return [Prediction(self.answers[labels[int(im.path.stem)]], score=-0.1, time_s=0.02, tokens=3)
                    if labels[int(im.path.stem)] in self.answers else Prediction("", error="boom") for im in images]

    deferred = [Sample(DeferredImage(partial(load_image, tmp_path / f"{i}.png")), lab, f"s{i}")  # type: ignore[arg-type]
                for i, lab in enumerate(labels)]
    full = score(ScriptedRecognizer(answers), _samples(labels), cfg, keep_images=True)
    lazy = score(ByPath(answers), deferred, cfg, keep_images=True, image_limit=4)
    shown = set(sample_order(full.predictions)[:4]) | set(range(4))
    assert [i for i, png in enumerate(lazy.images) if png is not None] == sorted(shown)
    assert all(lazy.images[i] == full.images[i] for i in shown)
    assert [{**r, "stop": ""} for r in lazy.predictions] == [{**r, "stop": ""} for r in full.predictions]

    class InProcess(ScriptedRecognizer):
        workers = 0  # reads images itself: score's prefetch thread reads them ahead, the next chunk's too

        seen = 0  # score hands the samples over in order: the i-th image is labels[i]

        def predict(self, images, **kwargs):
            assert all(isinstance(im, Image.Image) for im in images)
            out = [Prediction(self.answers[lab], score=-0.1, time_s=0.02, tokens=3) if lab in self.answers
                   else Prediction("", error="boom") for lab in labels[self.seen: self.seen + len(images)]]
            self.seen += len(images)
            return out

    ahead = score(InProcess(answers), deferred, cfg, keep_images=True, image_limit=4)
    assert ahead.metrics == {**lazy.metrics, **{k: ahead.metrics[k] for k in TIMING_KEYS}}


def test_token_diff_and_order():
    html = token_diff_html(["x", "^", "{", "3", "}", "+"], ["x", "^", "{", "2", "}"])
    assert "<del>2</del><ins>3</ins>" in html.replace(" ", "") and "<ins>+</ins>" in html
    assert "&lt;" in token_diff_html(["<"], ["a"])  # escaped
    recs = [{"id": "ok", "edit_distance": 0, "ref_tokens": ["a"]},
            {"id": "err", "error": "bad", "edit_distance": 0, "ref_tokens": ["a"]},
            {"id": "half", "edit_distance": 1, "ref_tokens": ["a", "b"]},
            {"id": "all", "edit_distance": 2, "ref_tokens": ["a", "b"]}]
    assert [recs[i]["id"] for i in sample_order(recs)] == ["err", "all", "half", "ok"]


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    rows = [("x^2", 90), (r"\frac{a}{b}", 140), ("a+b", 100), (r"\alpha", 60), ("y_1", 80)]
    with (d / "labels.jsonl").open("w") as f:
        f.write(json.dumps({"image": "gone.png", "latex": "z"}) + "\n")  # a bad row: skipped, reported
        for i, (latex, w) in enumerate(rows):
            _img(latex, w).save(d / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "latex": latex}) + "\n")
    return d


def test_eval_command_writes_all_outputs(tiny_model_dir, eval_data, tmp_path, capsys):
    model = str(tiny_model_dir("qwen2_vl"))
    out = tmp_path / "eval"
    rc = main(["eval", "--model", model, "--data", str(eval_data), "--out", str(out), "--limit", "4",
               "--compare", model, "--max-new-tokens", "6", "--eval.batch_size", "3"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_KEYS) | TIMING_KEYS <= set(metrics) <= set(METRIC_KEYS) | TIMING_KEYS | {"image_match"}
    assert metrics["n"] == 4 and all(0 <= metrics[k] <= 1 for k in METRIC_KEYS if k != "n")
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and set(preds[0]) == set(RECORD_KEYS)
    assert [p["reference"] for p in preds] == ["x^2", r"\frac{a}{b}", "a+b", r"\alpha"]
    rows = list(csv.DictReader((out / "summary_report.csv").open()))
    assert len(rows) == 2 and rows[0]["model"] == model and float(rows[0]["n"]) == 4
    assert json.loads((out / "compare" / "metrics.json").read_text())["n"] == 4
    html = (out / "report.html").read_text()
    assert html.count("class=input") == 4 and "data:image/png;base64," in html
    assert "Most frequent token confusions" in html
    # side by side: a column each in metrics and samples, headed by the folder's name (the same model twice:
    # numbered), the full paths listed once above
    name = Path(model).name
    assert html.count(f"<th>{name}</th>") == 2 and html.count(f"<th>{name} #2</th>") == 2
    assert f"<code>{model}</code>" in html and f"<th>{model}</th>" not in html
    assert "skipped 1" in html  # the missing image is reported, not silently dropped
    printed = capsys.readouterr().out
    assert "exact_match" in printed and printed.count("seconds: load ") == 2 and ", generation " in printed


def test_eval_without_data_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--model", "x", "--out", str(tmp_path)]) == 2
    assert "no data to evaluate" in capsys.readouterr().err


def test_glyph_height_reaches_the_recognizer(monkeypatch, eval_data, tmp_path):
    """`--glyph-height PX` (or `--eval.glyph_height`) is what the Recognizer is built with; absent, it is None."""
    from texocr.errors import TexocrError
    from texocr.infer import Recognizer

    seen = []

    def fake_load(model, adapter=None, **kw):
        seen.append(kw.get("glyph_height"))
        raise TexocrError("stop here")

    monkeypatch.setattr(Recognizer, "load", staticmethod(fake_load))
    base = ["eval", "--model", "m", "--data", str(eval_data), "--out", str(tmp_path / "o"), "--no-render"]
    assert main(base + ["--glyph-height", "24"]) == 2
    assert main(base + ["--eval.glyph_height", "20"]) == 2
    assert main(base) == 2
    assert seen == [24.0, 20.0, None]


def test_eval_reads_images_in_workers_and_skips_unreadable_ones_as_the_source_would(tiny_model_dir, tmp_path):
    """`texocr eval` hands the recognizer unread images (`Source.deferred`); with worker processes they are
    read there. A corrupt file in the first `--limit` rows is skipped with the source's reason and the set is
    topped up past it, so n and the scored samples match reading everything up front."""
    d = tmp_path / "data"
    d.mkdir()
    rows = [("x^2", 90), ("a+b", 100), (r"\alpha", 60), ("y_1", 80)]
    with (d / "labels.jsonl").open("w") as f:
        for i, (latex, w) in enumerate(rows):
            _img(latex, w).save(d / f"{i}.png")
            f.write(json.dumps({"image": f"{i}.png", "latex": latex}) + "\n")
            if i == 0:
                _img("z", 200).save(d / "bad.png")
                (d / "bad.png").write_bytes((d / "bad.png").read_bytes()[:200])  # a truncated PNG
                f.write(json.dumps({"image": "bad.png", "latex": "z"}) + "\n")
    model = str(tiny_model_dir("qwen2_vl"))
    out = tmp_path / "eval"
    rc = main(["eval", "--model", model, "--data", str(d), "--out", str(out), "--limit", "3", "--workers", "2",
               "--compare", model, "--max-new-tokens", "4", "--eval.batch_size", "2", "--no-render"])
    assert rc == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in preds] == ["x^2", "a+b", r"\alpha"]
    assert all(p["error"] is None for p in preds)
    assert json.loads((out / "compare" / "metrics.json").read_text())["n"] == 3
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["id"], s["reason"]) for s in skipped] == [("bad.png", "corrupt_image")]
    assert "skipped 1" in (out / "report.html").read_text()
