"""Training-step levers (`texocr.fast_train`, `model.vision_no_grad`): each keeps the loss and the gradients of the
path it replaces, on tiny models on the CPU. Liger's kernels and the host offload need CUDA; their full-size check
is bench/fast_train_gpu.py."""

# ruff: noqa: F811 -- the fixture imported from test_train is the test's parameter of the same name
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import ALL_FAMILIES, LATEX, _image, data_dir  # noqa: F401 -- data_dir is a fixture


def _loss_and_grads(model_dir: Path, family: str, vision_no_grad: bool) -> tuple[torch.Tensor, dict, bool | None]:
    """LoRA with gradient checkpointing (the hooks that made the frozen tower record a graph): the model's loss on
    one batch, every trainable gradient, and whether the vision tower's output required grad."""
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.models.loading import _submodule, load_model
    from texocr.sample import Sample

    torch.manual_seed(0)  # the same LoRA initialization for both loads
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), method="lora", dtype="float32",
                                    gradient_checkpointing=True, vision_no_grad=vision_no_grad),
                        training=True, device="cpu")
    model = loaded.model
    vision = _submodule(model.get_base_model(), loaded.family.vision_module)
    seen: list[bool] = []

    def record(_module: object, _args: object, out: object) -> None:
        first = out if torch.is_tensor(out) else (out[0] if isinstance(out, tuple) else next(iter(out.values())))
        seen.append(first.requires_grad)

    handle = vision.register_forward_hook(record)
    images = [_image(t) for t in LATEX[:3]]
    batch = dict(Collator(loaded, 1024)([Sample(im, t, str(i)) for i, (im, t) in enumerate(zip(images, LATEX))]))
    loss = model(**batch).loss
    loss.backward()
    handle.remove()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, seen[0]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_frozen_vision_tower_without_grad_keeps_the_loss_and_gradients(tiny_model_dir, family) -> None:
    """`model.vision_no_grad`: the frozen tower records no graph (its output needs no grad), and the loss and every
    LoRA gradient are what they are when autograd goes through it."""
    ref, want, ref_grad = _loss_and_grads(tiny_model_dir(family), family, vision_no_grad=False)
    got, grads, got_grad = _loss_and_grads(tiny_model_dir(family), family, vision_no_grad=True)
    assert got_grad is False
    if family == "qwen2_vl":  # what the lever is for: without it, the checkpointing hooks reach the tower
        assert ref_grad is True
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], rtol=1e-5, atol=1e-7, msg=name)


def _autocast_step(model_dir: Path, switch: bool) -> tuple[torch.Tensor, dict, int]:
    """bf16 weights, float32 LoRA adapters, a bf16-autocast forward and backward (as `texocr train` runs on a GPU):
    loss, adapter gradients, and how many bfloat16 -> float32 copies of activations the forward made."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.fast_train import lora_autocast_inputs
    from texocr.models.loading import load_model
    from texocr.sample import Sample

    class Upcasts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if (func is torch.ops.aten._to_copy.default and args[0].dtype == torch.bfloat16
                    and out.dtype == torch.float32 and args[0].dim() >= 2):
                Upcasts.n += 1
            return out

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), method="lora", dtype="bfloat16"), training=True,
                        device="cpu")
    model = loaded.model
    assert lora_autocast_inputs(model) > 0 if switch else True
    images = [_image(t) for t in LATEX[:3]]
    batch = dict(Collator(loaded, 1024)([Sample(im, t, str(i)) for i, (im, t) in enumerate(zip(images, LATEX))]))
    with torch.autocast("cpu", dtype=torch.bfloat16), Upcasts():
        loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g.dtype == torch.float32 for g in grads.values())  # the adapters stay float32
    return loss.detach(), grads, Upcasts.n


def test_lora_autocast_inputs_makes_no_float32_copies_and_the_same_step(tiny_model_dir) -> None:
    """`train.lora_autocast_inputs`: PEFT's float32 copy of each adapter's input is gone; autocast would have cast it
    back to bf16 for the matmul, so the loss and every adapter gradient are bit for bit the same."""
    ref, want, copies_peft = _autocast_step(tiny_model_dir("qwen2_vl"), switch=False)
    got, grads, copies = _autocast_step(tiny_model_dir("qwen2_vl"), switch=True)
    assert copies_peft >= 7 * 2  # one per adapter (q k v o gate up down) per layer, at least
    assert copies <= copies_peft - 7 * 2
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], rtol=0, atol=0, msg=name)


def _lora_step(model_dir: Path, *, fused: bool, dtype: str = "float32", autocast: bool = False,
               dropout: float = 0.0) -> tuple[torch.Tensor, dict, int]:
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.fast_train import fuse_lora
    from texocr.models.loading import load_model
    from texocr.sample import Sample

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), method="lora", dtype=dtype, lora_dropout=dropout),
                        training=True, device="cpu")
    model = loaded.model
    with torch.no_grad():  # LoRA B starts at zero: give it values, so the adapter path changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    n = fuse_lora(model) if fused else 0
    images = [_image(t) for t in LATEX[:3]]
    batch = dict(Collator(loaded, 1024)([Sample(im, t, str(i)) for i, (im, t) in enumerate(zip(images, LATEX))]))
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}, n


@pytest.mark.parametrize("family", ["qwen2_vl", "paligemma", "mllama"])
def test_fused_lora_keeps_the_loss_and_gradients(tiny_model_dir, family) -> None:
    """`train.fused_lora`: every adapter layer takes the addmm forward; in float32 the loss and every adapter
    gradient equal PEFT's."""
    ref, want, _ = _lora_step(tiny_model_dir(family), fused=False)
    got, grads, n = _lora_step(tiny_model_dir(family), fused=True)
    assert n > 0 and n == sum(1 for k in grads if "lora_A" in k)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    scale = max(float(g.abs().max()) for g in want.values())
    for name, g in grads.items():
        torch.testing.assert_close(g, want[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_fused_lora_under_bf16_autocast_within_rounding(tiny_model_dir) -> None:
    """bf16 weights, float32 adapters, bf16 autocast (a GPU run): the fused sum is rounded once, PEFT's three
    times, so they agree to bf16 rounding, and the adapter gradients stay float32."""
    ref, want, _ = _lora_step(tiny_model_dir("qwen2_vl"), fused=False, dtype="bfloat16", autocast=True)
    got, grads, _ = _lora_step(tiny_model_dir("qwen2_vl"), fused=True, dtype="bfloat16", autocast=True)
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)
    flat_ref = torch.cat([want[k].flatten() for k in sorted(want)])
    flat = torch.cat([grads[k].flatten() for k in sorted(grads)])
    assert flat.dtype == torch.float32
    assert float((flat - flat_ref).norm() / flat_ref.norm()) < 0.05


def test_fused_lora_leaves_dropout_layers_to_peft(tiny_model_dir) -> None:
    """With LoRA dropout the adapter sees a different input than the base layer: not fusable, PEFT's forward."""
    _, _, n = _lora_step(tiny_model_dir("qwen2_vl"), fused=True, dropout=0.1)
    assert n == 0


def test_fused_lora_follows_disabled_adapters(tiny_model_dir) -> None:
    """PEFT's `disable_adapter()` (GRPO's reference model) still gives the base model's output after fusion."""
    from texocr.config import ModelConfig
    from texocr.fast_train import fuse_lora
    from texocr.models.loading import load_model

    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="lora", dtype="float32"),
                        training=True, device="cpu")
    model = loaded.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    x = torch.randn(2, 5, layer.base_layer.in_features)
    with torch.no_grad():
        peft_on = layer(x)
        with model.disable_adapter():
            base = layer(x)
        assert fuse_lora(model) > 0
        torch.testing.assert_close(layer(x), peft_on, rtol=1e-6, atol=1e-6)
        with model.disable_adapter():
            torch.testing.assert_close(layer(x), base, rtol=0, atol=0)
    assert not torch.allclose(peft_on, base)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "mllama", "paligemma"])
def test_liger_patch_selects_the_standard_norms_and_gated_mlps(tiny_model_dir, family) -> None:
    """`train.liger_kernels`' module selection and argument order, with reference functions in Liger's places
    (its Triton kernels need CUDA): every Qwen/Llama-style RMSNorm and SiLU-gated MLP of the model is patched, the
    output is unchanged, and Gemma's norms (PaliGemma: 1 + weight, float32 throughout) are left alone."""
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.fast_train import _NORMS, patch_norms_and_mlps
    from texocr.models.loading import load_model
    from texocr.sample import Sample

    calls = {"norm": 0, "mlp": 0}

    def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float, mode: str, in_place: bool) -> torch.Tensor:
        assert (offset, mode) == (0.0, "llama") and isinstance(in_place, bool)
        calls["norm"] += 1
        dtype = x.dtype
        x = x.float()
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)

    def silu_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["mlp"] += 1
        return torch.nn.functional.silu(a) * b

    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir(family)), method="lora", dtype="float32"),
                        training=True, device="cpu")
    model = loaded.model
    model.eval()
    images = [_image(t) for t in LATEX[:2]]
    batch = dict(Collator(loaded, 1024)([Sample(im, t, str(i)) for i, (im, t) in enumerate(zip(images, LATEX))]))
    with torch.no_grad():
        want = model(**batch).logits
        norms = sum(type(m).__name__ in _NORMS for m in model.modules())
        n = patch_norms_and_mlps(model, rms_norm, silu_mul)
        got = model(**batch).logits
    if family == "paligemma":
        assert n == 0 and calls == {"norm": 0, "mlp": 0}
        return
    assert norms > 0 and n > norms and calls["norm"] > 0 and calls["mlp"] > 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_offload_moves_only_large_activations() -> None:
    """`train.offload_checkpoints` never copies parameters (frozen weights saved for backward products) or tensors
    under OFFLOAD_MIN_BYTES to host memory."""
    from texocr.fast_train import OFFLOAD_MIN_BYTES, _offloadable

    big = torch.zeros(OFFLOAD_MIN_BYTES // 2, dtype=torch.bfloat16)
    assert _offloadable(big)
    assert not _offloadable(big[:-1])
    assert not _offloadable(torch.nn.Parameter(big, requires_grad=False))
    assert not _offloadable(torch.nn.Parameter(big))


def test_texocr_train_applies_the_levers_and_takes_the_same_steps(tiny_model_dir, data_dir, tmp_path, caplog) -> None:
    """`texocr train` applies `train.fused_lora` (the log says so) and its losses match a run with it off."""
    from test_answer_loss import train_on_and_off

    train_on_and_off(tiny_model_dir("qwen2_vl"), data_dir, tmp_path, caplog, "--train.fused_lora",
                     "step levers: fused LoRA")


def test_offload_mechanics_keep_the_step_and_reuse_host_memory(tiny_model_dir, monkeypatch) -> None:
    """`offloaded_checkpoints` on the CPU (the same hooks and arena, without pinning): the step's loss and gradients
    do not change, only activations move (never a parameter or a view of one), and from the second step on the
    host arena is one chunk, reused."""
    from texocr import fast_train
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.models.loading import load_model
    from texocr.sample import Sample

    monkeypatch.setattr(fast_train, "OFFLOAD_MIN_BYTES", 1)  # the tiny model's activations are all small
    monkeypatch.setattr(fast_train, "_ARENAS", {})
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="lora", dtype="float32",
                                    gradient_checkpointing=True), training=True, device="cpu")
    model = loaded.model
    batch = dict(Collator(loaded, 1024)([Sample(id=str(i), image=_image(t), latex=t) for i, t in enumerate(LATEX)]))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    moved: list[torch.Tensor] = []
    real_pack = torch.autograd.graph.saved_tensors_hooks.__init__

    def spy(self, pack, unpack):  # record what the offload's pack hook copies out (not the checkpoint's hooks)
        if "offloaded_checkpoints" not in pack.__qualname__:
            return real_pack(self, pack, unpack)

        def recording(t):
            out = pack(t)
            if out is not t:
                moved.append(t)
            return out
        real_pack(self, recording, unpack)

    def step(offload: bool) -> tuple[float, dict, dict]:
        model.zero_grad(set_to_none=True)
        with fast_train.offloaded_checkpoints(offload, device="cpu") as stats:
            loss = model(**batch).loss
            loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, stats

    want_loss, want, none = step(False)
    assert none == {"tensors": 0, "bytes": 0}
    monkeypatch.setattr(torch.autograd.graph.saved_tensors_hooks, "__init__", spy)
    got_loss, got, stats = step(True)
    monkeypatch.setattr(torch.autograd.graph.saved_tensors_hooks, "__init__", real_pack)
    assert got_loss == pytest.approx(want_loss, rel=1e-6)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name)
    assert stats["tensors"] == len(moved) > 0 and stats["bytes"] > 0
    assert not any(t.untyped_storage().data_ptr() in params for t in moved), "a parameter (or a view) was offloaded"
    arena = fast_train._ARENAS["cpu"]
    step(True)
    chunk = arena.chunks[0]
    step(True)
    assert len(arena.chunks) == 1 and arena.chunks[0] is chunk  # no allocation once the arena has grown
