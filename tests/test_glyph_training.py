"""Training sizes its images the way the Recognizer reads them (`data.glyph_height`): the collator enlarges small
glyphs exactly as `Recognizer._load` does; the setting comes from the config or from the starting model, is saved
with the run, and `texocr export` keeps it. im2markup-style synthetic renders skip the stream's augmentation."""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from texocr.config import load_config
from texocr.data.collate import Collator
from texocr.sample import Sample


def _small(text: str = "x+y=2") -> Image.Image:
    """PIL's bitmap font: glyphs about 7.5 px tall (`glyph_height`), like a published im2latex image's 7-10."""
    im = Image.new("RGB", (120, 30), "white")
    ImageDraw.Draw(im).text((4, 8), text, fill="black")
    return im


def test_collator_shows_the_pixels_the_recognizer_reads(tiny_loaded) -> None:
    from texocr.infer import Recognizer

    loaded = tiny_loaded("qwen2_vl")
    sample = Sample(_small(), "x+y=2", "a")
    plain = Collator(loaded, 4096)([sample])
    trained = Collator(loaded, 4096, glyph_height=20)([sample])
    grid = trained["image_grid_thw"]
    assert int(grid.prod()) > int(plain["image_grid_thw"].prod())  # enlarged: more patches than as given

    reader = Recognizer(loaded.model, loaded.processor, loaded.family, glyph_height=20)
    read = reader._encode([reader._load(_small())])
    assert torch.equal(read["image_grid_thw"], grid)
    torch.testing.assert_close(read["pixel_values"], trained["pixel_values"])

    off = Collator(loaded, 4096, glyph_height=0)([sample])  # 0: off
    assert torch.equal(off["image_grid_thw"], plain["image_grid_thw"])
    with pytest.raises(Exception, match="glyph_jitter"):
        Collator(loaded, 4096, glyph_height=14, glyph_jitter=1.5)


def test_glyph_jitter_spreads_the_target_reproducibly(tiny_loaded) -> None:
    loaded = tiny_loaded("qwen2_vl")
    collator = Collator(loaded, 4096, glyph_height=15, glyph_jitter=0.3)
    sizes = {collator.image(Sample(_small(), "x", f"s{i}")).size for i in range(24)}
    assert len(sizes) > 2  # the target moves per sample
    exact = Collator(loaded, 4096, glyph_height=15)
    assert len({exact.image(Sample(_small(), "x", f"s{i}")).size for i in range(24)}) == 1
    again = Collator(loaded, 4096, glyph_height=15, glyph_jitter=0.3)
    assert [collator.image(Sample(_small(), "x", f"s{i}")).size for i in range(8)] == \
        [again.image(Sample(_small(), "x", f"s{i}")).size for i in range(8)]  # same sample, same count: same size


def test_training_glyph_height_comes_from_config_then_model(tiny_model_dir, tmp_path: Path) -> None:
    from texocr.train import training_glyph_height

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("qwen2_vl"), folder)
    assert training_glyph_height(load_config(None, ["--model.name_or_path", str(folder)])) == 0.0
    (folder / "texocr_options.json").write_text(json.dumps({"glyph_height": 17}))
    base = ["--model.name_or_path", str(folder)]
    assert training_glyph_height(load_config(None, base)) == 17.0  # the model's own reading setting
    assert training_glyph_height(load_config(None, base + ["--eval.glyph_height", "12"])) == 12.0
    assert training_glyph_height(load_config(None, base + ["--data.glyph_height", "0"])) == 0.0
    assert training_glyph_height(load_config(None, ["--model.name_or_path", "someone/hub-model"])) == 0.0


def test_a_run_reads_and_exports_at_the_glyph_height_it_trained_with(tiny_model_dir, tmp_path: Path) -> None:
    from texocr.cli import main as cli
    from texocr.infer import Recognizer

    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, latex in enumerate(["x+1", "a+b", "y=2"]):
        _small(latex).save(data / f"{i}.png")
        rows.append({"image": f"{i}.png", "latex": latex})
    (data / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = tmp_path / "run"
    start = tmp_path / "start"  # a model that reads unsure inputs twice: the run keeps that setting
    shutil.copytree(tiny_model_dir("qwen2_vl"), start)
    (start / "texocr_options.json").write_text(json.dumps({"glyph_height": 20, "reread": [12], "reread_below": -0.02}))
    config = tmp_path / "run.yaml"
    config.write_text(f"""model: {{name_or_path: {start}, method: full}}
data: {{train: [{data}], glyph_height: 16}}
train: {{output_dir: {run}, max_steps: 1, batch_size: 3}}
eval: {{max_new_tokens: 4}}
""")
    rc = cli(["train", "--config", str(config)])
    assert rc == 0
    saved = load_config(run / "config.yaml")
    assert saved.data.glyph_height == 16 and saved.eval.glyph_height == 16
    assert (saved.eval.reread, saved.eval.reread_below) == ([12], -0.02)
    assert Recognizer.load(str(run)).glyph_height == 16
    out = tmp_path / "exported"
    assert cli(["export", "--model", str(run / "model"), "--out", str(out)]) == 0
    options = json.loads((out / "texocr_options.json").read_text())
    assert (options["glyph_height"], options["reread"], options["reread_below"]) == (16, [12], -0.02)
    assert Recognizer.load(str(out)).reread == (12.0,)


def test_im2markup_renders_skip_the_printed_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A downsampled (im2markup-style) chunk is yielded as rendered unless `data.downsample_aug` says otherwise;
    other printed chunks get `printed_aug`'s share."""
    from texocr.config import DataConfig
    from texocr.data import augment, synth
    from texocr.data.stream import TrainStream

    class Chunks:  # every other chunk downsampled; images are marked by their size
        def __init__(self, **kw) -> None:
            pass

        def render_chunk(self, c: int) -> list[Sample]:
            meta = {"downsample": 2 if c % 2 else 0}
            return [Sample(Image.new("L", (40, 20), 255), "x", f"{c}-{i}", meta) for i in range(4)]

    monkeypatch.setattr(synth, "SyntheticSource", Chunks)
    monkeypatch.setattr(augment, "augment", lambda img, rng, style, **kw: img.resize((41, 20)))

    def augmented(downsample_aug: float) -> dict[bool, set[bool]]:
        cfg = DataConfig(train=["synthetic"], synthetic_style="printed", printed_aug=1.0, replay=0,
                         downsample_aug=downsample_aug, render_chunk=4)
        seen: dict[bool, set[bool]] = {True: set(), False: set()}  # downsampled? -> {augmented?}
        for s in itertools.islice(TrainStream(cfg)._synthetic(0, 1, random.Random(0)), 40):
            seen[int(s.id.split("-")[0]) % 2 == 1].add(s.image.size == (41, 20))
        return seen

    assert augmented(0.0) == {True: {False}, False: {True}}  # downsampled: never; printed: always (printed_aug 1)
    assert augmented(1.0) == {True: {True}, False: {True}}


def test_grpo_samples_from_images_sized_as_read(tiny_model_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reinforcement fine-tuning shows the policy the same enlarged images as supervised training and inference."""
    from texocr import grpo
    from texocr.config import ModelConfig
    from texocr.data.collate import sized_as_read
    from texocr.models.loading import load_model
    from texocr.rewards import Reward

    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir("compact")), family="compact", method="lora",
                                    lora_r=4, lora_alpha=8), training=True, device="cpu")
    shown: list[tuple[int, int]] = []
    real = grpo.sample_answers

    def spy(loaded_, rows, settings):
        shown.extend(im.size for im in rows)
        return real(loaded_, rows, settings)

    monkeypatch.setattr(grpo, "sample_answers", spy)
    settings = grpo.GrpoSettings(generations=2, max_new_tokens=3)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    learner = grpo.GrpoLearner(loaded, settings, lambda p, r, *, raw=None: [Reward(1.0, {})] * len(p),
                               torch.optim.AdamW(params, lr=1e-3), glyph_height=20)
    learner.step([[Sample(_small(), "x+y=2", "a")]])
    enlarged = sized_as_read(_small(), 20).size
    assert enlarged != _small().size and shown == [enlarged, enlarged]


def test_lengths_are_counted_at_the_size_the_collator_shows(tiny_loaded) -> None:
    """In-memory training measures each sample once before training: at the enlarged size, or a sample that fits
    as given but not as shown would only be dropped batch by batch later."""
    import functools

    from texocr.data.collate import sized_as_read
    from texocr.models.lengths import fit_to_length

    loaded = tiny_loaded("qwen2_vl")
    samples = [Sample(_small(), "x+y=2", "a")]
    shown = functools.partial(sized_as_read, glyph_height=30)
    _, as_given = fit_to_length(samples, loaded.family, loaded.processor, 4096)
    _, as_shown = fit_to_length(samples, loaded.family, loaded.processor, 4096, image=shown)
    assert as_shown.longest > as_given.longest
    limit = as_given.longest  # fits as given, not once enlarged
    kept, fit = fit_to_length(samples, loaded.family, loaded.processor, limit, image=shown)
    assert kept == [] and fit.dropped == [0]
