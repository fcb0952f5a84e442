"""Pretraining recipe through `texocr train`: the im2latex hold-out split, the time schedule, the Qwen2-VL speed-ups
(batched vision attention, worker-side collation), the training stream."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IM2LATEX = ROOT.parent / "shared" / "data" / "im2latex-val-formulas" / "labels.jsonl"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


heldout = _script("heldout")


def test_split_is_by_normalized_formula(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "latex": f"x ^ {{ {i} }} + y"} for i in range(400)]
    rows.append({"id": "dup", "latex": "x^{7}+y"})  # the same formula as r7, written differently
    src = tmp_path / "labels.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts = heldout.split(src, tmp_path / "out")
    assert counts["train"] + counts["test"] == len(rows)
    assert 0.15 < counts["test"] / len(rows) < 0.35
    parts = {name: [json.loads(line) for line in (tmp_path / "out" / name / "labels.jsonl").read_text().splitlines()]
             for name in ("train", "test")}
    side = {r["id"]: name for name, part in parts.items() for r in part}
    assert side["dup"] == side["r7"]
    assert heldout.is_test("x^{7}+y") == heldout.is_test("x ^ { 7 } + y")
    assert heldout.split(src, tmp_path / "again") == counts  # deterministic


@pytest.mark.skipif(shutil.which("latex") is None or shutil.which("dvipng") is None, reason="TeX not installed")
def test_render_parts_are_the_split(tmp_path: Path) -> None:
    """`render --part train` renders exactly the formulas `split` trains on (the memorization probe), `test` the rest."""
    rows = [{"id": f"r{i}", "latex": f"x ^ {{ {i} }} + y"} for i in range(24)]
    src = tmp_path / "labels.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    heldout.split(src, tmp_path / "split")
    for part in ("train", "test"):
        counts = heldout.render(src, tmp_path / part, part=part)
        rendered = [json.loads(line) for line in (tmp_path / part / "labels.jsonl").read_text().splitlines()]
        expected = [json.loads(line)["id"] for line in (tmp_path / "split" / part / "labels.jsonl").read_text().splitlines()]
        assert counts == {"written": len(expected), "failed": 0} and expected
        assert sorted(r["id"] for r in rendered) == sorted(expected)
        assert all((tmp_path / part / r["image"]).is_file() for r in rendered)
    with pytest.raises(ValueError, match="part"):
        heldout.render(src, tmp_path / "bad", part="val")


@pytest.mark.skipif(not IM2LATEX.is_file(), reason="../shared/data not present")
def test_im2latex_split_is_disjoint(tmp_path: Path) -> None:
    from texocr.data.inspect import compute_overlap

    counts = heldout.split(IM2LATEX, tmp_path)
    assert counts["test"] >= 2000
    ov = compute_overlap(str(tmp_path / "train"), str(tmp_path / "test"))
    assert ov["exact"]["count"] == 0 and ov["normalized"]["count"] == 0


def test_time_cosine_schedule() -> None:
    from texocr.train_callbacks import TrainClock, time_cosine

    clock = TrainClock()
    f = time_cosine(clock, budget_seconds=100.0, warmup_steps=100, min_ratio=0.05)
    assert f(10_000) == pytest.approx(1.0)
    assert f(0) == pytest.approx(1 / 100)  # warm-up
    clock.done = 100.0
    assert f(10_000) == pytest.approx(0.05)
    clock.done = 250.0
    assert f(10_000) == pytest.approx(0.05)  # past the budget: the floor
    mids = []
    for t in range(11):
        clock.done = 10.0 * t
        mids.append(f(10_000))
    assert mids == sorted(mids, reverse=True) and mids[0] > mids[-1]


def test_train_clock_survives_a_resume(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from texocr.train_callbacks import CLOCK_FILE, TrainClock

    clock = TrainClock(done=12.5)
    (tmp_path / "checkpoint-7").mkdir()
    clock.on_save(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=7, is_world_process_zero=True),
                  None)
    assert json.loads((tmp_path / "checkpoint-7" / CLOCK_FILE).read_text())["train_seconds"] == 12.5
    assert TrainClock.resumed(str(tmp_path / "checkpoint-7")).seconds() == pytest.approx(12.5)
    assert TrainClock.resumed(None).seconds() == 0.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from texocr.config import ModelConfig
    from texocr.models.compact import build_compact
    from texocr.models.loading import load_model

    path = build_compact(tmp_path_factory.mktemp("compact") / "tiny", size="tiny")
    return load_model(ModelConfig(name_or_path=str(path), family="compact", method="full", dtype="float32"),
                      training=True, device="cpu")


def _samples(texts: list[str] | None = None):
    from PIL import Image, ImageDraw

    from texocr.sample import Sample

    out = []
    for i, (w, h) in enumerate([(300, 60), (120, 90), (500, 40)]):  # different patch counts per image: padding
        img = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(img).text((5, 5), f"x+{i}", fill="black")
        out.append(Sample(image=img, latex=(texts or ["x + y" * (i + 1) for i in range(3)])[i], id=str(i), meta={}))
    return out


def test_batched_vision_attention_matches_per_image(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    from texocr.data.collate import Collator
    from texocr.models import qwen_speed

    batch = Collator(tiny, 512)(_samples())

    def loss_and_grads():
        tiny.model.zero_grad()
        loss = tiny.model(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in tiny.model.parameters() if p.grad is not None]

    monkeypatch.setattr(m.VisionAttention, "forward", m.VisionAttention.forward)  # restored after the test
    ref_loss, ref_grads = loss_and_grads()
    qwen_speed.batch_vision_attention()
    assert m.VisionAttention.forward.texocr_batched
    grid = batch["image_grid_thw"]
    for hint in (None, int((grid[:, 1] * grid[:, 2]).max())):  # the worker's width hint changes nothing
        qwen_speed.VISION_WIDTH["patches"] = hint
        try:
            loss, grads = loss_and_grads()
        finally:
            qwen_speed.VISION_WIDTH["patches"] = None
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert len(grads) == len(ref_grads)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_worker_side_collation_gives_the_models_own_loss(tiny) -> None:
    """Position ids and uint8 patches made in the DataLoader worker give the plain batch's loss (padded batch)."""
    import torch

    from texocr.data.collate import Collator
    from texocr.models.qwen_speed import PixelNormalizer

    samples = _samples()
    batch = Collator(tiny, 512)(samples)
    assert (batch["attention_mask"] == 0).any()
    worker = Collator(tiny, 512, worker_side=True)(samples)
    assert worker["position_ids"].shape == (3, *batch["input_ids"].shape)
    expected, _ = tiny.model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"])
    assert torch.equal(worker["position_ids"], expected)
    grid = batch["image_grid_thw"]
    assert worker.pop("vision_width") == int((grid[:, 1] * grid[:, 2]).max())
    assert worker["pixel_values"].dtype == torch.uint8
    frames = tiny.processor.image_processor.temporal_patch_size  # a still image crosses as one frame
    assert worker["pixel_values"].shape[1] * frames == batch["pixel_values"].shape[1] and frames > 1
    assert tiny.processor.image_processor.do_normalize  # the model's processor was not touched
    worker["pixel_values"] = PixelNormalizer(tiny.processor.image_processor)(worker["pixel_values"])
    torch.testing.assert_close(worker["pixel_values"], batch["pixel_values"], rtol=0, atol=1e-5)
    with torch.no_grad():
        assert tiny.model(**worker).loss.item() == pytest.approx(tiny.model(**batch).loss.item(), rel=1e-5)


def test_collator_says_when_it_drops_over_long_samples(tiny, caplog: pytest.LogCaptureFixture) -> None:
    """A stream is not measured before training: the collator warns at the 1st, 2nd, 4th... drop, not per batch."""
    import logging

    from texocr.data.collate import Collator

    collate = Collator(tiny, 24)  # shorter than any image + answer here
    samples = _samples()
    with caplog.at_level(logging.WARNING, logger="texocr.data"), pytest.raises(Exception, match="longer than"):
        collate(samples)  # 3 drops: the 1st-2nd power of two crossed once -> one warning
    assert len(collate.dropped) == 3
    with caplog.at_level(logging.WARNING, logger="texocr.data"), pytest.raises(Exception, match="longer than"):
        collate(samples)  # 6 drops: crosses 4 -> a second warning
    warned = [r.getMessage() for r in caplog.records if "dropped as longer than" in r.getMessage()]
    assert len(warned) == 2 and warned[0].startswith("3 of 3") and warned[1].startswith("6 of 6")


def test_worker_side_collation_refuses_other_families() -> None:
    from types import SimpleNamespace

    from texocr.data.collate import Collator
    from texocr.errors import TexocrError

    loaded = SimpleNamespace(family=SimpleNamespace(name="paligemma"), processor=None, model=None)
    with pytest.raises(TexocrError, match="worker-side collation"):
        Collator(loaded, 512, worker_side=True)


def test_pil_image_processor_rebuilds_the_same_preprocessing(tiny) -> None:
    """Where AutoProcessor picks another backend (torchvision on the GPU image), the workers' PIL copy built
    from its settings preprocesses exactly alike (the test stands in an object with only those settings)."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from PIL import Image

    from texocr.models.qwen_speed import pil_image_processor

    ip = tiny.processor.image_processor
    keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor", "size")
    other = pil_image_processor(SimpleNamespace(**{k: getattr(ip, k) for k in keys}))
    assert other is not ip and pil_image_processor(ip) is ip
    rng = np.random.default_rng(0)
    for h, w in [(57, 333), (20, 3000), (10, 10)]:  # inside, beyond and under the pixel bounds
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a, b = ip(images=[img], return_tensors="pt"), other(images=[img], return_tensors="pt")
        assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
        assert torch.equal(a["pixel_values"], b["pixel_values"])


@pytest.mark.skipif(not (shutil.which("latex") and shutil.which("dvipng")), reason="latex/dvipng not installed")
def test_synthetic_stream_renders_tex_in_chunks_and_replays() -> None:
    """On-the-fly pretraining data with TeX: chunks of formulas rendered together, every fresh render followed
    by `replay` augmented repeats from the worker's pool."""
    import itertools

    from texocr.config import DataConfig
    from texocr.data.stream import TrainStream

    cfg = DataConfig(train=["synthetic"], streaming=True, synthetic_style="mixed", printed_ratio=0.5, replay=2,
                     replay_pool=50, replay_fresh_aug=0.5, renderer="tex", render_chunk=8, real_formula_ratio=0.0)
    got = list(itertools.islice(iter(TrainStream(cfg, offset=3)), 48))
    assert all(s.image.mode == "RGB" and s.image.width > 5 and s.latex for s in got)
    fresh = got[::3]  # one fresh render, then two replays, over and over
    assert len({s.id for s in fresh}) == len(fresh) == 16  # distinct formulas, two chunks' worth
    assert {s.id for s in got} <= {s.id for s in fresh}  # replays repeat renders already yielded
    assert {s.meta["style"] for s in got} <= {"printed", "handwritten"}
    other = list(itertools.islice(iter(TrainStream(cfg, offset=4)), 3))  # a resumed run: other formulas
    assert not {s.id for s in other} & {s.id for s in fresh}
