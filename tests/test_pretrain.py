"""Pretraining recipe: the im2latex hold-out split, the schedule, batched vision attention, weight export."""

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
pretrain = _script("pretrain_compact")


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


def test_lr_schedule() -> None:
    peak = 1e-3
    assert pretrain.lr_at(peak, 0.0, 10_000, 100) == pytest.approx(peak)
    assert pretrain.lr_at(peak, 1.0, 10_000, 100) == pytest.approx(0.05 * peak)
    assert pretrain.lr_at(peak, 2.0, 10_000, 100) == pytest.approx(0.05 * peak)  # past the budget: the floor
    assert pretrain.lr_at(peak, 0.0, 0, 100) == pytest.approx(peak / 100)  # warmup after an optimizer start
    mids = [pretrain.lr_at(peak, p / 10, 10_000, 0) for p in range(11)]
    assert mids == sorted(mids, reverse=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from texocr.config import ModelConfig
    from texocr.models.compact import build_compact
    from texocr.models.loading import load_model

    path = build_compact(tmp_path_factory.mktemp("compact") / "tiny", size="tiny")
    return load_model(ModelConfig(name_or_path=str(path), family="compact", method="full", dtype="float32"),
                      training=True, device="cpu")


def test_batched_vision_attention_matches_per_image(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from PIL import Image, ImageDraw
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    from texocr.data.collate import Collator
    from texocr.sample import Sample

    samples = []
    for i, (w, h) in enumerate([(300, 60), (120, 90), (500, 40)]):  # different patch counts per image
        img = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(img).text((5, 5), f"x+{i}", fill="black")
        samples.append(Sample(image=img, latex=f"x + {i}", id=str(i), meta={}))
    batch = Collator(tiny, 512)(samples)

    def loss_and_grads():
        tiny.model.zero_grad()
        loss = tiny.model(**batch).loss
        loss.backward()
        return loss.item(), [p.grad.clone() for p in tiny.model.parameters() if p.grad is not None]

    monkeypatch.setattr(m.VisionAttention, "forward", m.VisionAttention.forward)  # restored after the test
    ref_loss, ref_grads = loss_and_grads()
    pretrain.batch_vision_attention()
    grid = batch["image_grid_thw"]
    for hint in (None, int((grid[:, 1] * grid[:, 2]).max())):  # the loop's CPU-side width hint changes nothing
        pretrain.VISION_WIDTH["patches"] = hint
        try:
            loss, grads = loss_and_grads()
        finally:
            pretrain.VISION_WIDTH["patches"] = None
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert len(grads) == len(ref_grads)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_export_writes_bf16_shards_that_load(tiny, tmp_path: Path) -> None:
    import shutil

    import torch
    from safetensors import safe_open

    names = pretrain.export_weights(tiny.model, tmp_path / "w")
    assert any(n.endswith(".safetensors") for n in names)
    assert "config.json" not in names  # $OUT holds at most 8 files: config travels with the carried model
    for f in (tmp_path / "w").glob("*.safetensors"):
        assert f.stat().st_size <= 15_000_000
        with safe_open(str(f), framework="pt") as st:
            assert all(st.get_tensor(k).dtype == torch.bfloat16 for k in st.keys())  # noqa: SIM118 -- not a dict
    # the weights + the model folder's config/processor load back
    model_dir = tmp_path / "model"
    shutil.copytree(tiny.model.name_or_path, model_dir)
    for f in model_dir.glob("model*.safetensors*"):
        f.unlink()
    for f in (tmp_path / "w").glob("model*"):
        shutil.copy(f, model_dir / f.name)
    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    back = load_model(ModelConfig(name_or_path=str(model_dir), family="compact", dtype="float32"), device="cpu")
    for (k, a), b in zip(tiny.model.state_dict().items(), back.model.state_dict().values()):
        torch.testing.assert_close(a.to(torch.bfloat16).float(), b, msg=k)


def _write_pack(folder: Path, styles: list[str], damaged: int | None = None, name: str = "x") -> None:
    import gzip
    import io

    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rows, blobs, offset = [], [], 0
    for i, style in enumerate(styles):
        img = Image.new("L", (60 + 10 * i, 20), 255)
        ImageDraw.Draw(img).rectangle([5, 5, 30, 12], fill=0)
        buf = io.BytesIO()
        img.convert("1").save(buf, "PNG")
        blob = buf.getvalue() if i != damaged else b"\x89PNG not really"
        rows.append({"offset": offset, "length": len(blob), "latex": f"{name} _ {{ {i} }}", "style": style})
        blobs.append(blob)
        offset += len(blob)
    (folder / "pack.bin").write_bytes(b"".join(blobs))
    with gzip.open(folder / "index.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_pack_stream_reads_renders_and_skips_a_damaged_entry(tmp_path: Path) -> None:
    """Packs as scripts/pretrain_pack.py writes them, pooled; one entry's bytes are damaged and only it is lost."""
    import itertools

    _write_pack(tmp_path / "a", ["printed", "handwritten", "printed"], damaged=2)
    _write_pack(tmp_path / "b", ["printed"], name="y")  # same offsets as pack a: rows must keep their pack
    stream = pretrain.make_pack_stream([str(tmp_path / "a"), str(tmp_path / "b")], seed=0, offset=0,
                                       printed_aug=0.0, blur=(0.4, 0.6))
    assert len(stream) == 4
    got = list(itertools.islice(iter(stream), 60))
    assert {s.latex for s in got} == {"x _ { 0 }", "x _ { 1 }", "y _ { 0 }"}  # the damaged third never comes out
    assert next(s for s in got if s.latex == "y _ { 0 }").image.size == (60, 20)
    clean = next(s for s in got if s.latex == "x _ { 0 }")
    assert clean.image.mode == "RGB" and clean.image.size == (60, 20)  # printed, not augmented: size kept
    grey = sorted(set(clean.image.convert("L").getdata()))
    assert 0 < len(grey) - 2  # the blur put anti-aliased grey levels between black and white
    assert all(s.meta["style"] == "handwritten" for s in got if s.latex == "x _ { 1 }")


def test_worker_side_position_ids_give_the_models_own_loss(tiny) -> None:
    """Position ids computed in the DataLoader worker equal the model's own (same loss, padded batch)."""
    import torch
    from PIL import Image, ImageDraw

    from texocr.data.collate import Collator
    from texocr.sample import Sample

    samples = []
    for i, (w, h) in enumerate([(300, 60), (120, 90), (500, 40)]):  # different image and text lengths: padding
        img = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(img).text((5, 5), f"x+{i}", fill="black")
        samples.append(Sample(image=img, latex="x + y" * (i + 1), id=str(i), meta={}))
    batch = Collator(tiny, 512)(samples)
    assert (batch["attention_mask"] == 0).any()
    collate = pretrain.WorkerSideCollate(Collator(tiny, 512), tiny.model.config)
    worker = collate(samples)
    assert worker["position_ids"].shape == (3, *batch["input_ids"].shape)
    expected, _ = tiny.model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"])
    assert torch.equal(worker["position_ids"], expected)
    # uint8 patches, normalized later (on the GPU in training), give the processor's own pixel values
    assert worker["pixel_values"].dtype == torch.uint8
    assert tiny.processor.image_processor.do_normalize  # the model's processor was not touched
    worker["pixel_values"] = pretrain.PixelNormalizer(tiny.processor.image_processor)(worker["pixel_values"])
    torch.testing.assert_close(worker["pixel_values"], batch["pixel_values"], rtol=0, atol=1e-5)
    with torch.no_grad():
        assert tiny.model(**worker).loss.item() == pytest.approx(tiny.model(**batch).loss.item(), rel=1e-5)


def test_assemble_rebuilds_a_loadable_model_from_shards_and_checks_the_tokenizer(tiny, tmp_path: Path) -> None:
    import hashlib

    import torch

    from texocr.errors import TexocrError

    assemble = _script("assemble_compact")
    pretrain.export_weights(tiny.model, tmp_path / "w")
    sha = hashlib.sha256((Path(tiny.model.name_or_path) / "tokenizer.json").read_bytes()).hexdigest()
    (tmp_path / "w" / "metrics.json").write_text(json.dumps({"tokenizer_sha256": sha}))
    out = assemble.assemble(tmp_path / "w", "tiny", tmp_path / "model")
    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    back = load_model(ModelConfig(name_or_path=str(out), family="compact", dtype="float32"), device="cpu")
    for a, b in zip(tiny.model.state_dict().values(), back.model.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16).float(), b.float())
    (tmp_path / "w" / "metrics.json").write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    with pytest.raises(TexocrError, match="tokenizer differs"):
        assemble.assemble(tmp_path / "w", "tiny", tmp_path / "model2")
    (tmp_path / "w" / "metrics.json").unlink()  # no recorded tokenizer: the shapes alone must refuse a wrong size
    with pytest.raises(TexocrError, match="do not fit"):
        assemble.assemble(tmp_path / "w", "small", tmp_path / "model3")


def test_pil_image_processor_rebuilds_the_same_preprocessing(tiny) -> None:
    """Where AutoProcessor picks another backend (torchvision on the GPU image), the workers' PIL copy built
    from its settings preprocesses exactly alike (the test stands in an object with only those settings)."""
    from types import SimpleNamespace

    import numpy as np
    import torch
    from PIL import Image

    ip = tiny.processor.image_processor
    keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor", "size")
    other = pretrain.pil_image_processor(SimpleNamespace(**{k: getattr(ip, k) for k in keys}))
    assert other is not ip and pretrain.pil_image_processor(ip) is ip
    rng = np.random.default_rng(0)
    for h, w in [(57, 333), (20, 3000), (10, 10)]:  # inside, beyond and under the pixel bounds
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a, b = ip(images=[img], return_tensors="pt"), other(images=[img], return_tensors="pt")
        assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
        assert torch.equal(a["pixel_values"], b["pixel_values"])


@pytest.mark.skipif(not (shutil.which("latex") and shutil.which("dvipng")), reason="latex/dvipng not installed")
def test_render_stream_renders_tex_in_chunks_and_replays() -> None:
    """On-the-fly pretraining data with TeX (a GPU machine with the TeX bundle): chunks of formulas rendered
    together, every fresh render followed by `replay` augmented repeats from the worker's pool."""
    import itertools
    from types import SimpleNamespace

    cfg = SimpleNamespace(data=SimpleNamespace(seed=0, formulas=None, real_formula_ratio=0.0, mutate_ratio=0.0,
                                               printed_dpis=None))
    stream = pretrain.make_stream(cfg, printed_ratio=0.5, replay=2, pool=50, fresh_aug=0.5, offset=3,
                                  renderer="tex", chunk=8)
    got = list(itertools.islice(iter(stream), 48))
    assert all(s.image.mode == "RGB" and s.image.width > 5 and s.latex for s in got)
    fresh = got[::3]  # one fresh render, then two replays, over and over
    assert len({s.id for s in fresh}) == len(fresh) == 16  # distinct formulas, two chunks' worth
    assert {s.id for s in got} <= {s.id for s in fresh}  # replays repeat renders already yielded
    assert {s.meta["style"] for s in got} <= {"printed", "handwritten"}
