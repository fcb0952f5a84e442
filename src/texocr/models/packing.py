"""Padding-free training batches for Qwen2-VL and Qwen2.5-VL models (`train.padding_free`): a batch's rows laid end to end in one
sequence, attention kept inside each row.

    batch = pack(collated)              # [B, T] right-padded rows -> [1, N], N = the real tokens of all rows
    use_packed_attention(model)         # the decoder's attention reads the row boundaries (`cu_seqlens`)
    loss = model(**batch).loss          # what the padded batch gives, without computing the padding

Why: formula answers vary in length (on the anchors' data 150-290 tokens per sample with the image), and a padded
batch computes every row at the longest row's length: at batch 32 on the Qwen2-VL-7B shape ~29 % of the decoder's
matrix products and activation memory went to padding. Laid end to end, the linear layers, norms, MLPs and LoRA
see only real tokens; attention runs per row through Flash Attention's variable-length kernel
(`torch.nn.attention.varlen`, no flash-attn package needed) on a GPU, or one SDPA call per row elsewhere.
Qwen's 3-D rotary positions stay right because they are computed per row first (the collator's `rope_positions`,
transformers' own `get_rope_index`) and packed with the tokens. The loss needs nothing: the first label of every
row is the prompt's (ignored), so the step from one row's last token to the next row's first predicts nothing.
Equivalence with the padded batch (loss and every gradient): tests/test_packing.py.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from typing import Any

from texocr.errors import TexocrError
from texocr.models.base import IGNORE_INDEX

log = logging.getLogger("texocr.train")

FAMILIES = ("compact", "qwen2_vl", "qwen2_5_vl")
"""Families packed: transformers' Qwen2-VL and Qwen2.5-VL (whose M-RoPE positions of still images are Qwen2-VL's,
computed per row by `qwen_speed.rope_positions`; tests/test_packing.py compares with each model's own)."""

ATTENTION = "texocr_packed"
"""The attention implementation name registered with transformers: packed rows when the batch says where they
start (`cu_seqlens`), transformers' SDPA otherwise (evaluation, generation, unpacked batches)."""

CU_SEQLENS, MAX_SEQLEN = "texocr_cu_seqlens", "texocr_max_seqlen"
"""Batch keys (model keyword arguments) of a packed batch: row starts, int32 [B + 1]; the longest row, an int."""

TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids", "token_type_ids")


def supports(family_name: str) -> bool:
    return family_name in FAMILIES


def pack(batch: Any) -> Any:
    """A right-padded collated batch (input_ids, attention_mask, labels, position_ids [3, B, T], ...) with its rows
    laid end to end: the per-token tensors become [1, N], position_ids [3, 1, N], attention_mask is dropped and
    CU_SEQLENS / MAX_SEQLEN are added. Images (pixel_values, image_grid_thw) keep their order, which is the rows'."""
    import torch

    if "position_ids" not in batch:
        raise TexocrError("pack() needs the rows' own position_ids (the collator's rope_positions) before packing")
    keep = batch.pop("attention_mask").bool()  # [B, T]
    lengths = keep.sum(1)
    if not bool((keep == (torch.arange(keep.shape[1], device=keep.device)[None, :] < lengths[:, None])).all()):
        raise TexocrError("pack() needs right-padded rows (real tokens first)")
    labels = batch.get("labels")
    if labels is not None and bool((labels[:, 0] != IGNORE_INDEX).any()):
        # the last token of one row would be trained to predict the next row's first
        raise TexocrError("pack() needs every row's first label ignored (a prompt before the answer)")
    for key in TOKEN_KEYS:
        if key in batch and batch[key] is not None:
            batch[key] = batch[key][keep][None]  # [1, N], rows in order
    batch["position_ids"] = batch["position_ids"][:, keep][:, None]  # [3, 1, N]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=keep.device)
    cu[1:] = lengths.cumsum(0)
    batch[CU_SEQLENS], batch[MAX_SEQLEN] = cu, int(lengths.max())
    return batch


def use_packed_attention(model: Any) -> bool:
    """Make `model`'s language model attend through `packed_attention` (registered once with transformers); False
    and nothing changed when its text attention is not SDPA (the implementation an unpacked batch falls back to)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = getattr(base.config, "text_config", base.config)
    if text._attn_implementation not in ("sdpa", ATTENTION):
        return False
    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # unpacked batches get SDPA's mask, as before
    text._attn_implementation = ATTENTION
    return True


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """A transformers attention function. query [1, H, N, D], key/value [1, Hkv, N, D] of a packed batch ->
    [1, N, H, D], causal within each row of `kwargs[CU_SEQLENS]`; any other call is transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.pop(CU_SEQLENS, None)
    longest = kwargs.pop(MAX_SEQLEN, None)
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1 or dropout:
        raise TexocrError("packed attention takes one packed row and no attention dropout")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [N, H(kv), D]
    out = flash_varlen(q, k, v, cu, longest, scaling, causal=True)
    if out is None:
        out = _sdpa_rows(q, k, v, cu, scaling)
    return out[None], None  # [1, N, H, D]


_FLASH_FAILED: list[str] = []


def flash_varlen(q: Any, k: Any, v: Any, cu: Any, longest: int, scale: float | None, *, causal: bool) -> Any:
    """Flash Attention's variable-length kernel (`torch.nn.attention.varlen`) over the rows that `cu` (int32
    [B + 1] row starts) delimits: q [N, H, D], k/v [N, Hkv, D] -> [N, H, D] in 16 bits. None where it cannot run:
    a CPU tensor, float32 without autocast, a torch without the kernel, or a kernel that failed once (logged)."""
    import torch

    if not q.is_cuda or _FLASH_FAILED or _varlen() is None or (dtype := _half(q)) is None:
        return None
    varlen_attn, window, gqa = _varlen()
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    extra: dict[str, Any] = ({"window_size": (-1, 0) if causal else (-1, -1)} if window else {"is_causal": causal})
    if k.shape[1] != q.shape[1]:
        if gqa:
            extra["enable_gqa"] = True
        else:  # an older varlen_attn: give every query head its key/value head
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    cu = cu.to(device=q.device, dtype=torch.int32)
    try:
        return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale, **extra)
    except (RuntimeError, TypeError, ValueError) as e:  # a torch whose kernel refuses these shapes / arguments
        _FLASH_FAILED.append(repr(e))
        log.warning("Flash Attention's varlen kernel failed (%s); texocr's attention falls back to SDPA from now on "
                    "(correct, slower)", e)
        return None


def _half(t: Any) -> Any:
    """The 16-bit dtype Flash Attention runs in here: the tensor's own, else autocast's; None for float32 without
    autocast (then the per-row SDPA path keeps float32)."""
    import torch

    if t.dtype in (torch.float16, torch.bfloat16):
        return t.dtype
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


@functools.cache
def _varlen() -> Any:
    """(varlen_attn, whether it spells causality as `window_size`, whether it takes enable_gqa), or None on a
    torch without it. torch 2.10 spells causal `is_causal=True`; later versions `window_size=(-1, 0)`."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn, "window_size" in params, "enable_gqa" in params


def _sdpa_rows(q: Any, k: Any, v: Any, cu: Any, scaling: float | None) -> Any:
    """One causal SDPA call per row: [N, H, D] -> [N, H, D] (CPU, or a GPU without varlen_attn)."""
    import torch
    import torch.nn.functional as F

    bounds = cu.tolist()
    groups = q.shape[1] // k.shape[1]
    out = []
    for s, e in itertools.pairwise(bounds):
        qs, ks, vs = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))  # [1, H, L, D]
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling)[0].transpose(0, 1))
    return torch.cat(out)

