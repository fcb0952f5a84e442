"""Qwen2-VL training speed-ups (the compact model is a Qwen2-VL): what the training step would otherwise
compute in the main process, moved into DataLoader workers, and one attention call per vision layer.

    collate = Collator(loaded, max_length, worker_side=True)   # uint8 patches + M-RoPE positions, in workers
    normalize = PixelNormalizer(loaded.processor.image_processor)  # rescale + normalize on the GPU
    batch_vision_attention()                                    # padded SDPA over the batch's images

Why: the first H200 run of the compact model was bound by the main process (GPU ~30 % busy, no data wait).
Qwen2-VL's M-RoPE position ids (`get_rope_index`, a Python loop over the rows: ~45 ms per batch of 128 on
one core) are computed in the workers by transformers' own function; the workers' image processor stops after
resizing and patchifying, so `pixel_values` travel as uint8 (a quarter of the fp32 bytes to pass between
processes and to pin), and `PixelNormalizer` rescales and normalizes them on the GPU; without flash-attn,
transformers' SDPA vision path calls attention once per image (~900 small kernels per step at batch 128).
Each is equivalent to the plain path (tests/test_qwen_speed.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FAMILIES = ("compact", "qwen2_vl")
"""Families whose model is transformers' Qwen2-VL (the vision attention and rope index patched here)."""


def supports(family_name: str) -> bool:
    return family_name in FAMILIES


def rope_positions(batch: Any, model_config: Any) -> Any:
    """Qwen2-VL's M-RoPE position ids of a collated batch, by transformers' own `get_rope_index`: [3, B, T]."""
    import functools
    from types import SimpleNamespace

    import torch
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    # get_rope_index reads only config.vision_config and get_vision_position_ids (which uses no state)
    core = SimpleNamespace(config=model_config)
    core.get_vision_position_ids = functools.partial(Qwen2VLModel.get_vision_position_ids, core)
    with torch.no_grad():
        positions, _ = Qwen2VLModel.get_rope_index(
            core, batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    return positions


def one_image_rope_index(ids: Any, attention_mask: Any, image_grid_thw: Any, image_token_id: int,
                         merge: int) -> Any:
    """`get_rope_index`'s M-RoPE positions [3, B, T] of a left-padded batch with one image per row (what
    `encode_for_generation` makes), in a few whole-batch tensor ops; None when the batch is not of that shape
    (no image, several, a split block), for the caller to use `get_rope_index`.

    Why: transformers' function loops over the rows in Python with a host read each (~0.6 ms a row on a GPU:
    300 ms of a batch of 512, more than decoding it). Positions of padding are 0, as there; tests check equality.
    """
    import torch

    b = ids.shape[0]
    if image_grid_thw is None or image_grid_thw.shape[0] != b:
        return None
    attn = attention_mask.bool() if attention_mask is not None else torch.ones_like(ids, dtype=torch.bool)
    img = (ids == image_token_id) & attn  # [B, T]
    idx = attn.long().cumsum(1) - 1  # [B, T]: index in the unpadded row
    grid = image_grid_thw.to(ids.device)
    t, h, w = grid[:, 0], grid[:, 1] // merge, grid[:, 2] // merge  # [B] each: the LLM grid
    n = img.sum(1)  # [B]
    big = torch.iinfo(idx.dtype).max
    first = torch.where(img, idx, big).min(1).values  # [B]: where the image block starts
    last = torch.where(img, idx, -1).max(1).values
    if not bool(((n == t * h * w) & (n > 0) & (last - first + 1 == n)).all()):  # one host read per batch
        return None
    k = (idx - first[:, None]).clamp(min=0)  # [B, T]: offset inside the image block
    hw = (h * w)[:, None]
    image_pos = torch.stack([k // hw, (k % hw) // w[:, None], k % w[:, None]]) + first[None, :, None]  # [3, B, T]
    after = idx - n[:, None] + torch.maximum(h, w)[:, None]  # text after the block continues at first + max(h, w)
    text_pos = torch.where(idx >= (first + n)[:, None], after, idx)  # [B, T]
    pos = torch.where(img[None], image_pos, text_pos[None].expand(3, -1, -1))
    return torch.where(attn[None], pos, 0)


def uint8_processor(processor: Any) -> Any:
    """A copy of `processor` whose image processor (PIL backend) leaves patches as 0..255 uint8."""
    import copy
    import functools

    processor = copy.deepcopy(processor)  # the model's own processor (evaluation, export) keeps normalizing
    processor.image_processor = ip = pil_image_processor(processor.image_processor)
    ip.do_rescale = ip.do_normalize = False
    ip.patchify = functools.partial(uint8_patchify, ip)
    return processor


def pil_image_processor(ip: Any) -> Any:
    """The PIL backend of a Qwen2-VL image processor with `ip`'s settings (`ip` itself if it is one).

    Where torchvision is installed (the GPU image) `AutoProcessor` picks the torchvision backend, whose
    patchify works on batched tensors; a laptop without torchvision runs the PIL one, so training on PIL
    resizes also matches what most users' inference will see.
    """
    from transformers import Qwen2VLImageProcessorPil

    if isinstance(ip, Qwen2VLImageProcessorPil):
        return ip
    keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor",
            "min_pixels", "max_pixels")
    size = {k: v for k, v in dict(ip.size or {}).items() if k in ("shortest_edge", "longest_edge")}
    return Qwen2VLImageProcessorPil(size=size or None, **{k: getattr(ip, k) for k in keys if getattr(ip, k, None)})


def uint8_patchify(ip: Any, image: Any, patch_size: int, merge_size: int,
                   temporal_patch_size: int) -> tuple[Any, int, int]:
    """Qwen2-VL's `patchify` (the same reshape as transformers' `image_processing_pil_qwen2_vl`) kept in uint8 and
    with one temporal frame: [patches, C * P * P].

    Transformers' version casts to float32 and repeats a still image `temporal_patch_size` times in every patch
    row. With rescaling and normalizing moved to the GPU (`PixelNormalizer`, which also repeats the frame there),
    the patch copy, a worker's hand-over and the batch concatenation move 8x fewer bytes than float32 frames
    (measured here on one core: collating a sample 7.8 -> 3.8 ms for uint8; bench/infer.md for the single frame).
    """
    import numpy as np

    image = np.asarray(image)
    if image.dtype != np.uint8:  # a resize that returned floats: round back to the pixel grid
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    c, h, w = image.shape
    gh, gw = h // patch_size, w // patch_size
    p = image.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    p = p.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh, gw, mh, mw, C, ph, pw)
    return p.reshape(gh * gw, c * patch_size * patch_size), gh, gw


class PixelNormalizer:
    """The image processor's rescale + normalize, on whatever device the uint8 patches are on, and the temporal
    repeat of a still image that `uint8_patchify` leaves out.

    A patch row is laid out channel-major (C x T x P x P): [patches, C * P * P] uint8 (one frame) becomes
    [patches, C * T * P * P] floats, each channel's frame normalized once and repeated T times. Rows that already
    hold T frames are normalized as they are.
    """

    def __init__(self, image_processor: Any) -> None:
        import torch

        ip = image_processor
        self.frames, self.area = int(ip.temporal_patch_size), int(ip.patch_size) ** 2
        self.scale = float(ip.rescale_factor)
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32)[:, None, None]  # [C, 1, 1]
        self.std = torch.tensor(ip.image_std, dtype=torch.float32)[:, None, None]

    def __call__(self, pixels: Any) -> Any:
        import torch

        if self.mean.device != pixels.device:  # moved once, not every step
            self.mean, self.std = self.mean.to(pixels.device), self.std.to(pixels.device)
        n, c = pixels.shape[0], self.mean.shape[0]
        x = pixels.to(torch.float32).view(n, c, -1, self.area)  # [n, C, 1 or T, P * P]
        x = (x * self.scale - self.mean) / self.std
        return x.expand(n, c, self.frames, self.area).reshape(n, -1)  # [patches, C * T * P * P]


VISION_WIDTH: dict[str, int | None] = {"patches": None}
"""Most patches of one image in the current batch, set by the training loop from the CPU copy of
`image_grid_thw`, so the patched vision attention need not read it back from the GPU (one sync per layer)."""


def batch_vision_attention() -> None:
    """Make Qwen2-VL's vision attention one padded SDPA call per layer instead of one call per image.

    Without flash-attn, transformers' SDPA path splits the packed patches at `cu_seqlens` and calls attention
    once per image: at batch 128 that is ~900 small kernels per step, and the first GPU run measured the step
    CPU-bound (GPU ~30% busy, 290 samples/s). Here the images are scattered into a [B, L, H, D] block with a
    key mask, attended together, and gathered back: the same result (a test checks it), one kernel.
    """
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    if not getattr(m.VisionAttention.forward, "texocr_batched", False):
        m.VisionAttention.forward = _batched_forward()


@contextmanager
def batched_vision_attention(widest: int | None = None) -> Iterator[None]:
    """`batch_vision_attention()` for the duration of a block (restored after unless it was already on), with
    `widest` (most patches of one image, known on the host) as the `VISION_WIDTH` hint: no GPU read per layer.
    For decoding, where the plain attention must stay what `generate` uses elsewhere in the process."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    original, hint = m.VisionAttention.forward, VISION_WIDTH["patches"]
    batch_vision_attention()
    VISION_WIDTH["patches"] = widest
    try:
        yield
    finally:
        m.VisionAttention.forward, VISION_WIDTH["patches"] = original, hint


def _batched_forward() -> Any:
    """The one-call-per-layer `VisionAttention.forward` (see `batch_vision_attention`): variable-length Flash
    Attention on a GPU in 16 bits (`packing.flash_varlen`), else a padded SDPA call with a key mask."""
    import torch
    import torch.nn.functional as F
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    from texocr.models.packing import flash_varlen

    def forward(self: Any, hidden_states: Any, cu_seqlens: Any, position_embeddings: Any = None,
                **kwargs: Any) -> Any:
        n = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = m.apply_rotary_pos_emb_vision(q, k, cos, sin)  # [N, H, D]
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # [B]
        b = lengths.shape[0]
        width = VISION_WIDTH["patches"] or int(lengths.max())  # the hint avoids a GPU -> CPU read per layer
        # on a GPU in 16 bits: one variable-length Flash Attention call over the packed patches, no padding at all
        o = flash_varlen(q, k, v, cu_seqlens, width, self.scaling, causal=False)
        if o is not None:
            return self.proj(o.reshape(n, -1))
        row = torch.repeat_interleave(torch.arange(b, device=q.device), lengths, output_size=n)  # [N]: its image
        col = torch.arange(n, device=q.device) - torch.repeat_interleave(cu_seqlens[:-1], lengths, output_size=n)

        def pad(t: Any) -> Any:
            out = t.new_zeros(b, width, *t.shape[1:])
            out[row, col] = t
            return out.transpose(1, 2)  # [B, H, L, D]

        keep = torch.arange(width, device=q.device)[None, :] < lengths[:, None]  # [B, L]
        o = F.scaled_dot_product_attention(pad(q), pad(k.to(q.dtype)), pad(v.to(q.dtype)),
                                           attn_mask=keep[:, None, None, :], scale=self.scaling)
        o = o.transpose(1, 2)[row, col]  # [N, H, D]
        return self.proj(o.reshape(n, -1))

    forward.texocr_batched = True  # type: ignore[attr-defined]
    return forward
