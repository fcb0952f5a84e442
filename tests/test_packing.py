"""Padding-free batches (`train.padding_free`, texocr.models.packing): a packed batch trains exactly as the padded
one (loss and every gradient, LoRA and full fine-tuning, with and without the answer loss), unpacked calls are
transformers' SDPA unchanged, and what cannot be packed safely is refused with a clear error."""

# ruff: noqa: F811 -- the fixture imported from test_train is the test's parameter of the same name
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import LATEX, _image, data_dir  # noqa: F401 -- data_dir is a fixture

from texocr.errors import TexocrError

FAMILIES = ["qwen2_vl", "compact", "qwen2_5_vl"]  # texocr.models.packing.FAMILIES


def _samples(n: int = 5) -> list:
    from texocr.sample import Sample

    # images of different sizes (different numbers of image tokens and rotary grids) and answers of different
    # lengths, so the padded batch really has padding
    return [Sample(id=str(i), image=_image(LATEX[i % len(LATEX)]).resize((64 + 24 * i, 32 + 8 * (i % 2))),
                   latex=" ".join([LATEX[i % len(LATEX)]] * (1 + i % 3))) for i in range(n)]


def _step(model_dir: Path, *, packed: bool, method: str = "lora", answer: bool = True) -> tuple[torch.Tensor, dict]:
    from texocr.answer_loss import AnswerLoss
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.models.loading import load_model
    from texocr.models.packing import use_packed_attention

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), method=method, dtype="float32",
                                    gradient_checkpointing=True), training=True, device="cpu")
    model = loaded.model
    if packed:
        assert use_packed_attention(model)
    batch = dict(Collator(loaded, 1024, pack=packed)(_samples()))
    if packed:
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    labels = batch.pop("labels")
    if answer:
        loss_fn = AnswerLoss.attach(model)
        with loss_fn.capture():
            out = model(**batch, logits_to_keep=1)
        loss = loss_fn(out, labels, num_items_in_batch=(labels != -100).sum())
    else:
        loss = model(**batch, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch_gives_the_padded_loss_and_gradients(tiny_model_dir, family) -> None:
    want_loss, want = _step(tiny_model_dir(family), packed=False)
    got_loss, got = _step(tiny_model_dir(family), packed=True)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    assert got.keys() == want.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(float(g.abs().max()) > 0 for g in got.values())


@pytest.mark.parametrize(("method", "answer"), [("full", True), ("lora", False)])
def test_packing_is_exact_for_full_fine_tuning_and_the_models_own_loss(tiny_model_dir, method, answer) -> None:
    want_loss, want = _step(tiny_model_dir("qwen2_vl"), packed=False, method=method, answer=answer)
    got_loss, got = _step(tiny_model_dir("qwen2_vl"), packed=True, method=method, answer=answer)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pack_keeps_each_rows_tokens_positions_and_images(tiny_loaded) -> None:
    from texocr.data.collate import Collator
    from texocr.models.qwen_speed import PixelNormalizer

    loaded = tiny_loaded("qwen2_vl")
    padded = dict(Collator(loaded, 1024, worker_side=True)(_samples()))  # worker-side: positions, unpacked
    packed = dict(Collator(loaded, 1024, pack=True)(_samples()))
    lengths = padded["attention_mask"].sum(1)
    assert packed["texocr_cu_seqlens"].tolist() == [0, *lengths.cumsum(0).tolist()]
    assert packed["texocr_max_seqlen"] == int(lengths.max()) and len(set(lengths.tolist())) > 1
    starts = packed["texocr_cu_seqlens"].tolist()
    for r, n in enumerate(lengths.tolist()):
        row = slice(starts[r], starts[r] + n)
        assert torch.equal(packed["input_ids"][0, row], padded["input_ids"][r, :n])
        assert torch.equal(packed["labels"][0, row], padded["labels"][r, :n])
        assert torch.equal(packed["position_ids"][:, 0, row], padded["position_ids"][:, r, :n])
    assert torch.equal(packed["image_grid_thw"], padded["image_grid_thw"])
    # the worker-side batch's patches are uint8, one frame each: normalized, the packed batch's floats
    normalized = PixelNormalizer(loaded.processor.image_processor)(padded["pixel_values"])
    torch.testing.assert_close(packed["pixel_values"], normalized, rtol=0, atol=1e-5)


def test_pack_refuses_what_it_cannot_pack_exactly(tiny_loaded) -> None:
    from texocr.data.collate import Collator
    from texocr.models.packing import pack

    loaded = tiny_loaded("qwen2_vl")

    def batch() -> dict:
        return dict(Collator(loaded, 1024, worker_side=True)(_samples(3)))

    left = batch()
    left["attention_mask"] = left["attention_mask"].flip(1)  # padding first
    with pytest.raises(TexocrError, match="right-padded"):
        pack(left)
    trained_first = batch()
    trained_first["labels"][1, 0] = 5  # the previous row's last token would learn to predict it
    with pytest.raises(TexocrError, match="first label"):
        pack(trained_first)
    no_positions = batch()
    del no_positions["position_ids"]
    with pytest.raises(TexocrError, match="position_ids"):
        pack(no_positions)


def test_unpacked_calls_stay_sdpa(tiny_model_dir) -> None:
    """Evaluation and generation during a packed run (no row boundaries in the call) compute what SDPA does."""
    from texocr.infer import Recognizer
    from texocr.models.packing import use_packed_attention

    images = [s.image for s in _samples(3)]
    rec = Recognizer.load(str(tiny_model_dir("qwen2_vl")), device="cpu", max_new_tokens=12)
    before = [p.text for p in rec.predict(images, batch_size=3)]
    logits = rec.model(**rec._encode(images)).logits
    assert use_packed_attention(rec.model)
    assert [p.text for p in rec.predict(images, batch_size=3)] == before
    torch.testing.assert_close(rec.model(**rec._encode(images)).logits, logits)


def test_texocr_train_packs_and_takes_the_same_steps(tiny_model_dir, data_dir, tmp_path, caplog) -> None:
    from test_answer_loss import train_on_and_off

    train_on_and_off(tiny_model_dir("qwen2_vl"), data_dir, tmp_path, caplog, "--train.padding_free",
                     "padding-free rows")
