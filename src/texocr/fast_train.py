"""Training-step levers for adapter fine-tuning of large VLMs (issue 16), each behind a `train.*` key.

Measured on the Qwen2-VL-7B shape (bench/train_speed.md), a LoRA step is mostly the decoder's matrix products
plus element-wise passes over [tokens, 18944] MLP activations. What PEFT and transformers do there costs time
and memory without changing the result; these functions remove it:

- `lora_autocast_inputs`: PEFT copies each adapter input to float32, autocast casts it back to bf16.
- `fuse_lora`: `result + lora_B(lora_A(x)) * scaling` is three passes over the output ([tokens, out]); one
  `addmm` with `alpha=scaling` accumulates the adapter into the base output inside the GEMM instead.
- `liger_kernels`: Liger's fused RMSNorm and SiLU-and-multiply (one kernel each way, instead of ~6 passes in
  float32 for the norm and 3 for the MLP gate), patched on this model's instances only (Liger's own
  `apply_liger_kernel_to_*` also replaces transformers' classes for the whole process).
- `offloaded_checkpoints`: the layer inputs that gradient checkpointing keeps (one [tokens, hidden] per layer)
  go to pinned host memory until the backward pass needs them, as Unsloth's checkpointing does.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch


def lora_autocast_inputs(model: Any) -> int:
    """`train.lora_autocast_inputs`: stop PEFT's cast of each LoRA adapter's input to the adapter's dtype; autocast
    casts the matmul operands itself (bf16 -> float32 -> bf16 is exact, so the numbers do not change). Returns how
    many adapter layers were switched (0 for a model without adapters)."""
    n = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", None) is True:  # peft's BaseTunerLayer flag (peft >= 0.15)
            module.cast_input_dtype_enabled = False
            n += 1
    return n


def _fusable(module: Any) -> bool:
    """A PEFT LoRA layer whose forward is exactly `base(x) + lora_B(lora_A(x)) * scaling` for its adapters:
    linear A/B, no dropout, no DoRA, no adapter bias, no per-token adapter mixing."""
    from peft.tuners.lora.layer import LoraLayer

    if not isinstance(module, LoraLayer) or getattr(module, "_texocr_fused", False):
        return False
    for name in module.lora_A:
        a, b = module.lora_A[name], module.lora_B[name]
        if not (type(a) is torch.nn.Linear and type(b) is torch.nn.Linear and a.bias is None and b.bias is None):
            return False
        if module.use_dora.get(name, False) or not isinstance(module.lora_dropout[name], torch.nn.Identity):
            return False
    return True


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """base(x) with each active adapter added by `addmm(result, x A^T, B^T, alpha=scaling)`.

    Shapes: x [..., in], A [r, in], B [out, r], result [..., out]. Anything unusual (adapters disabled or merged,
    extra arguments such as `adapter_names`, mismatched dtypes without autocast) goes to PEFT's own forward."""
    active = [n for n in self.active_adapters if n in self.lora_A]
    autocast = torch.is_autocast_enabled(x.device.type)
    if (self.disable_adapters or self.merged or args or kwargs or not active
            or (not autocast and any(self.lora_A[n].weight.dtype != x.dtype for n in active))):
        return self._texocr_peft_forward(x, *args, **kwargs)
    result = self.base_layer(x)
    out = result.shape[-1]
    flat = result.reshape(-1, out)
    for name in active:
        a = torch.nn.functional.linear(x, self.lora_A[name].weight)  # [..., r]
        flat = torch.addmm(flat, a.reshape(-1, a.shape[-1]), self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return flat.view(result.shape)


def fuse_lora(model: Any) -> int:
    """`train.fused_lora`: give every fusable LoRA layer the one-GEMM adapter forward; returns how many."""
    n = 0
    for module in model.modules():
        if _fusable(module):
            module._texocr_peft_forward = module.forward  # the fallback, PEFT's bound forward
            module.forward = types.MethodType(_fused_forward, module)
            module._texocr_fused = True
            n += 1
    return n


_NORMS = {"Qwen2RMSNorm", "Qwen2VLRMSNorm", "Qwen2_5_VLRMSNorm", "Qwen3VLTextRMSNorm", "LlamaRMSNorm",
          "MllamaTextRMSNorm"}
"""RMSNorm classes computing `weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)`: Liger's `llama` casting
mode, offset 0. Gemma's (1 + weight, float32 throughout) are left alone."""


def liger_kernels(model: Any) -> int:
    """`train.liger_kernels`: on a CUDA model with liger-kernel installed, route this model's RMSNorm and
    SiLU-gated MLP instances through Liger's fused autograd functions. Returns how many modules were patched
    (0 where Liger is absent, the model is not on CUDA, or nothing matches)."""
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    except ImportError:
        return 0
    if not any(p.is_cuda for p in model.parameters()):
        return 0
    return patch_norms_and_mlps(model, LigerRMSNormFunction.apply, LigerSiLUMulFunction.apply)


def _is_silu(mlp: Any) -> bool:
    """The MLP's activation is plain SiLU (torch's, or transformers' `SiLUActivation`, which calls F.silu)."""
    act = getattr(mlp, "act_fn", None)
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def patch_norms_and_mlps(model: Any, rms_norm: Any, silu_mul: Any) -> int:
    """Give this model's standard RMSNorm instances `rms_norm(x, weight, eps, offset=0.0, casting_mode="llama",
    in_place)` and its SiLU-gated MLPs `down(silu_mul(gate(x), up(x)))` (Liger's argument order); returns
    how many modules changed. Split from `liger_kernels` so the selection is tested without CUDA."""

    def norm_forward(self: Any, hidden: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden, self.weight, self.variance_epsilon, 0.0, "llama", self._texocr_in_place)

    def mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))

    n = 0
    for name, module in model.named_modules():
        if type(module).__name__ in _NORMS and hasattr(module, "variance_epsilon"):
            # Liger overwrites the incoming gradient with the input's, as its own Llama/Qwen patches do for the
            # decoder's norms; not for Qwen3's per-head q/k norms, whose gradient arrives through views
            module._texocr_in_place = not name.endswith(("q_norm", "k_norm"))
            module.forward = types.MethodType(norm_forward, module)
            n += 1
        elif all(hasattr(module, k) for k in ("gate_proj", "up_proj", "down_proj")) and _is_silu(module):
            module.forward = types.MethodType(mlp_forward, module)
            n += 1
    return n


OFFLOAD_MIN_BYTES = 1 << 20
"""Saved tensors smaller than this stay on the GPU: a copy each way costs more than they take."""


def _offloadable(t: torch.Tensor) -> bool:
    """A saved activation worth moving to host memory: at least OFFLOAD_MIN_BYTES and not a parameter (a frozen
    weight saved for a backward product, e.g. the LM head's, is resident anyway and would be copied out and back
    every step); a view of a parameter (`weight.t()` saved by a matmul) is one too."""
    base = t._base if t._base is not None else t
    return not isinstance(base, torch.nn.Parameter) and t.numel() * t.element_size() >= OFFLOAD_MIN_BYTES


class HostArena:
    """Pinned host memory reused from step to step: `take(n)` hands out the next n bytes of the current chunk,
    `reset()` (at the end of a step) makes them all free again. Why: a `pin_memory=True` allocation per saved
    tensor per step is a cudaHostAlloc each time, slow and synchronizing; here a step that outgrew the arena
    allocates once more, and the next step gets one chunk as large as that step needed."""

    ALIGN = 512

    def __init__(self, device: str = "cuda") -> None:
        self.device = device
        self.chunks: list[torch.Tensor] = []  # uint8, pinned
        self.used = 0  # bytes of the last chunk taken this step
        self.step_bytes = 0  # bytes taken this step, over all chunks

    def take(self, nbytes: int) -> torch.Tensor:
        size = -(-nbytes // self.ALIGN) * self.ALIGN
        if not self.chunks or self.used + size > self.chunks[-1].numel():
            capacity = max(size, self.step_bytes, 64 << 20)
            self.chunks.append(torch.empty(capacity, dtype=torch.uint8, pin_memory=self.device == "cuda"))
            self.used = 0
        out = self.chunks[-1][self.used: self.used + nbytes]
        self.used += size
        self.step_bytes += size
        return out

    def reset(self) -> None:
        if len(self.chunks) > 1:  # this step outgrew the arena: one chunk of the whole size next time
            need = self.step_bytes
            self.chunks = [torch.empty(need + need // 8, dtype=torch.uint8, pin_memory=self.device == "cuda")]
        self.used = self.step_bytes = 0


_ARENAS: dict[str, HostArena] = {}


@contextlib.contextmanager
def offloaded_checkpoints(enabled: bool, *, device: str = "cuda") -> Iterator[dict[str, int]]:
    """`train.offload_checkpoints`: while the step (forward and backward) runs, the activations autograd saves
    outside checkpointed blocks (with gradient checkpointing: chiefly each block's input, [batch, seq, hidden])
    live in pinned host memory and come back when the backward pass reads them; parameters and small tensors stay
    (see `_offloadable`). Inside a checkpointed block the checkpoint's own hooks take precedence, so recomputed
    activations stay on the GPU. Yields counts of what moved ({"tensors", "bytes"}). No effect when not enabled
    or without CUDA (`device="cpu"`: the same mechanics without pinning, for tests).

    Copies are asynchronous on the current stream: the device memory of a saved tensor is reused only by work
    queued after its copy, and the host chunk is overwritten only by the next step's copies, queued after this
    step's reads. torch.autograd.graph.save_on_cpu does the same for every saved tensor, weights included, with a
    fresh pinned allocation each time."""
    stats = {"tensors": 0, "bytes": 0}
    if not (enabled and (device != "cuda" or torch.cuda.is_available())):
        yield stats
        return
    arena = _ARENAS.setdefault(device, HostArena(device))

    def pack(t: torch.Tensor) -> Any:
        if t.device.type != device or not _offloadable(t):
            return t
        nbytes = t.numel() * t.element_size()
        host = arena.take(nbytes).view(t.dtype).view(t.shape)
        host.copy_(t, non_blocking=True)
        stats["tensors"] += 1
        stats["bytes"] += nbytes
        return t.device, host

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        dev, host = packed
        return host.to(dev, non_blocking=True) if dev.type == "cuda" else host.clone()

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield stats
    finally:
        arena.reset()
