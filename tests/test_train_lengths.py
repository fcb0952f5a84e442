"""Over-long training samples are counted before training (one log line, recorded in metrics.json), the shipped
CPU configs fit their data, and `--train.resume latest` says which checkpoint it resumed from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from texocr.config import load_config
from texocr.models.lengths import fit_to_length, sequence_lengths
from texocr.sample import Sample

SHORT = ["x^2", "a+b", r"\frac{1}{2}", "y_1"]
LONG = ["+".join("abcdefgh") * 30, "-".join("uvwxyz") * 40]  # hundreds of tokens each
REPO = Path(__file__).resolve().parents[1]


def _image(text: str, w: int = 64) -> Image.Image:
    im = Image.new("RGB", (w, 32), "white")
    ImageDraw.Draw(im).text((2, 8), text[:12], fill="black")
    return im


def test_lengths_are_what_the_family_encodes(tiny_loaded):
    loaded = tiny_loaded("qwen2_vl")
    images = [_image(t, w) for t, w in zip(SHORT + LONG, (64, 300, 90, 40, 900, 120))]
    targets = SHORT + LONG
    exact = [int(loaded.family.encode(loaded.processor, [im], [t], 10**6).batch["attention_mask"].sum())
             for im, t in zip(images, targets)]
    assert sequence_lengths(loaded.family, loaded.processor, images, targets) == exact
    limit = max(exact[:4])
    samples = [Sample(im, t, f"s{i}") for i, (im, t) in enumerate(zip(images, targets))]
    kept, fit = fit_to_length(samples, loaded.family, loaded.processor, limit)
    assert [s.id for s in kept] == ["s0", "s1", "s2", "s3"] and fit.dropped == [4, 5]
    assert fit.longest == max(exact) and "dropped 2 of 6 training samples" in fit.summary()
    assert fit.as_metrics()["train_dropped_too_long"] == 2


@pytest.fixture
def long_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i, latex in enumerate(SHORT + LONG):
        _image(latex).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "latex": latex})
    (root / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def test_training_reports_over_long_samples_once_and_resume_says_where(tiny_model_dir, long_data, tmp_path, caplog):
    from texocr.train import train

    out = tmp_path / "run"
    args = ["--model.name_or_path", str(tiny_model_dir("qwen2_vl")), "--model.lora_r", "4",
            "--data.train", str(long_data), "--data.val", "[]", "--train.output_dir", str(out),
            "--train.batch_size", "2", "--train.logging_steps", "1", "--train.save_steps", "2",
            "--model.max_length", "200"]
    caplog.set_level(logging.INFO, logger="texocr")
    train(load_config(None, args + ["--train.max_steps", "2"]))
    lines = [r.getMessage() for r in caplog.records if "max_length" in r.getMessage()]
    assert len(lines) == 1, lines  # one summary line, no warning per batch
    assert "dropped 2 of 6 training samples" in lines[0] and "longest" in lines[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_dropped_too_long"] == 2 and metrics["train_samples"] == 6
    assert metrics["train_longest_sequence"] > 200 and metrics["max_length"] == 200

    caplog.clear()
    train(load_config(None, args + ["--train.max_steps", "3", "--train.resume", "latest"]))
    resumed = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert resumed == [f"train.resume=latest: resuming from {out / 'checkpoints' / 'checkpoint-2'}"]


@pytest.mark.parametrize("config, extra", [
    ("configs/tiny/cpu-lora.yaml", []),
    ("configs/demo/default-lora.yaml", ["--demo"]),
    ("configs/demo/scratch-full.yaml", ["--demo"]),
])
def test_shipped_cpu_configs_fit_their_data(config, extra, tmp_path):
    """64 of the samples each config trains on (the demo's: its own short formulas) are all within
    model.max_length (bench/seq_lengths.md has the distributions over 512-1,000 samples)."""
    from texocr.data.collate import training_target
    from texocr.data.render import available_renderers
    from texocr.models.loading import resolve_model
    from texocr.models.registry import detect_family
    from texocr.train import read_samples

    if not available_renderers():
        pytest.skip("no renderer (TeX or ziamath + resvg-py) installed: synthetic data cannot be drawn")
    overrides = ["--data.synthetic_n", "64"]
    if extra:
        from texocr.demo import write_formulas

        train_f, _, _ = write_formulas(tmp_path, 2000, 4, seed=0)
        overrides += ["--data.formulas", str(train_f)]
    cfg = load_config(REPO / config, overrides)
    samples = read_samples(cfg.data.train, cfg.data, split=None, limit=64, skipped=[])
    assert len(samples) == 64
    path = resolve_model(cfg.model.name_or_path or "default")
    family = detect_family(path, cfg.model.family)
    _, fit = fit_to_length(samples, family, family.build_processor(path, cfg.model), cfg.model.max_length,
                           target=training_target)
    assert not fit.dropped, fit.summary()
