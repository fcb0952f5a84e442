"""`train.answer_loss` (texocr.answer_loss): the loss at answer positions through a chunked linear cross-entropy
equals the model's own loss, and so do all gradients, for every family with a tiny model, LoRA and full
fine-tuning; `texocr train` makes the same steps with it on and off."""

# ruff: noqa: F811 -- the fixture imported from test_train is the test's parameter of the same name
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import ALL_FAMILIES, LATEX, _config, _image, data_dir  # noqa: F401 -- data_dir is a fixture


def _reference(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w).float(), t, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
@pytest.mark.parametrize("head_trains", [False, True])
def test_linear_cross_entropy_equals_cross_entropy_of_the_logits(monkeypatch, chunk_rows, head_trains) -> None:
    from texocr import answer_loss

    vocab = 50
    monkeypatch.setattr(answer_loss, "_ROW_ELEMENTS", chunk_rows * vocab)  # 1 row, 7 rows, all rows per chunk
    g = torch.Generator().manual_seed(0)
    h = torch.randn(23, 16, generator=g, requires_grad=True)
    w = torch.randn(vocab, 16, generator=g, requires_grad=head_trains)
    t = torch.randint(0, vocab, (23,), generator=g)
    want = _reference(h, w, t)
    want.backward(torch.tensor(0.5))
    gh, gw = h.grad.clone(), w.grad.clone() if head_trains else None
    h.grad = None
    if head_trains:
        w.grad = None
    got = answer_loss.linear_cross_entropy(h, w, t)
    got.backward(torch.tensor(0.5))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(h.grad, gh)
    if head_trains:
        torch.testing.assert_close(w.grad, gw)
    else:
        assert w.grad is None


def test_linear_cross_entropy_in_bfloat16_within_its_rounding() -> None:
    from texocr.answer_loss import linear_cross_entropy

    g = torch.Generator().manual_seed(1)
    h = torch.randn(40, 32, generator=g).bfloat16().requires_grad_()
    w = torch.randn(300, 32, generator=g).bfloat16()
    t = torch.randint(0, 300, (40,), generator=g)
    want = _reference(h, w, t)
    want.backward()
    gh = h.grad.clone()
    h.grad = None
    got = linear_cross_entropy(h, w, t)
    got.backward()
    assert got.dtype == torch.float32 and h.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h.grad.float(), gh.float(), rtol=2e-2, atol=2e-2)


NOT_ATTACHED = {"paligemma2"}
"""Families whose logits are not lm_head(decoder output): Gemma 2's soft cap."""


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_answer_loss_equals_the_models_own_loss_and_gradients(tiny_model_dir, family, method) -> None:
    from texocr.answer_loss import AnswerLoss
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.models.loading import load_model
    from texocr.sample import Sample

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir(family)), method=method, dtype="float32"),
                        training=True, device="cpu")
    model = loaded.model
    loss_fn = AnswerLoss.attach(model)
    if family in NOT_ATTACHED:
        assert loss_fn is None
        return
    assert loss_fn is not None
    images = [_image(t) for t in LATEX[:3]]
    batch = dict(Collator(loaded, 1024)([Sample(im, t, str(i)) for i, (im, t) in enumerate(zip(images, LATEX))]))
    n = (batch["labels"] != -100).sum()
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    try:
        model.zero_grad()
        ref = model(**batch, num_items_in_batch=n).loss
        ref.backward()
        want = {name: p.grad.clone() for name, p in params}
        model.zero_grad()
        labels = batch.pop("labels")
        with loss_fn.capture():
            out = model(**batch, logits_to_keep=1)
        assert out.logits.shape[1] == 1  # the model's logits were made for one position only
        got = loss_fn(out, labels, num_items_in_batch=n)
        got.backward()
    finally:
        loss_fn.detach()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    scale = max(float(g.abs().max()) for g in want.values())
    for name, p in params:  # relative to the largest gradient: some are exactly 0 in theory (a key bias)
        torch.testing.assert_close(p.grad, want[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def train_on_and_off(model_dir: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, key: str,
                     log_text: str, *overrides: str) -> list[Path]:
    """`texocr train` for 3 steps with `key` true, then false: the log names the lever only when on, and both runs
    log the same losses (within float rounding). Returns the two output folders."""
    from texocr.train import train
    from texocr.train_callbacks import read_csv_log

    losses, outs = [], []
    for on in ("true", "false"):
        out = tmp_path / on
        caplog.clear()
        with caplog.at_level("INFO", logger="texocr.train"):
            result = train(_config(model_dir, data_dir, out, "--train.max_steps", "3", key, on,
                                   "--train.batch_size", "2", *overrides))
        assert result.steps == 3
        assert (log_text in caplog.text) == (on == "true")
        losses.append(read_csv_log(out / "logs" / "metrics.csv", "loss"))
        outs.append(out)
    assert set(losses[0]) == {1, 2, 3}
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    return outs


def test_texocr_train_makes_the_same_steps_with_and_without_the_answer_loss(tiny_model_dir, data_dir, tmp_path,
                                                                             caplog) -> None:
    for out in train_on_and_off(tiny_model_dir("qwen2_vl"), data_dir, tmp_path, caplog, "--train.answer_loss",
                                "loss: answer positions only", "--train.grad_accum", "2"):
        assert json.loads((out / "metrics.json").read_text())["train_seconds"] > 0
