"""The Qwen2-VL vision tower for inference on a CPU, with fewer and larger ops (texocr's compact model).

    vision = FastVision(model.model.visual)        # holds the tower's modules by reference
    feats = vision(pixel_values, image_grid_thw)   # [image tokens, D]: what get_image_features' pooler_output,
                                                   # concatenated, gives

Why: on the 2-core CPU the vision tower is ~40 % of a batch-32 prediction. Most of it is its matrix products
(at ~75 % of this CPU's peak already), but transformers' forward adds a Conv3d patch embedding through oneDNN
(~10 % of the tower), a rotary embedding built from concatenations and negations, and copies around the
attention of each image. Here:
  - the patch embedding is one matrix product; an image's two temporal frames are equal (the processor repeats
    a still image to fill `temporal_patch_size`), so the kernel's two temporal halves are summed into one
    kernel over one frame (half the products; checked per call: a video's frames keep the full kernel);
  - the rotary embedding is `x * cos + roll(x) * signed_sin` (the same numbers as rotate_half), on q and k at once;
  - attention stays one SDPA call per image, on views of the packed q/k/v: one padded call with a key mask for
    all images (`qwen_speed.batch_vision_attention`, which pays on a GPU in training) was 1.5x slower than
    per-image calls on this CPU (the scatter into the padded block and the mask cost more than the calls).
On a GPU in 16 bits (`GreedyDecoder(gpu_fast_vision=True)`, opt-in until measured there) the attention of
every image is one variable-length Flash Attention call (`packing.flash_varlen`) instead.
Layer norms, the MLPs, the merger and the weights are the model's own modules. The result equals the model's
own `get_image_features` up to float rounding (tests/test_compact.py); the predictions of the shipped model on
the 589 published im2latex images are the same (bench/compact.md, "CPU fast paths").
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class FastVision:
    """`visual` (a `Qwen2VisionTransformerPretrainedModel`) as a function of (pixel_values, grid) (module doc)."""

    def __init__(self, visual: Any) -> None:
        self.visual = visual
        self._stamp: tuple[int, ...] = ()
        self._kernel: torch.Tensor | None = None  # [E, C * P * P]: the temporal halves summed
        self._full: torch.Tensor | None = None  # [E, C * T * P * P]

    @staticmethod
    def supports(visual: Any) -> bool:
        """True for the plain transformers Qwen2-VL vision tower this re-implements (not Qwen2.5-VL's windows)."""
        import torch
        from transformers.models.qwen2_vl import modeling_qwen2_vl as m

        return (type(visual) is m.Qwen2VisionTransformerPretrainedModel
                and type(visual.patch_embed.proj) is torch.nn.Conv3d and visual.patch_embed.proj.bias is None
                and all(type(b) is m.Qwen2VLVisionBlock and type(b.attn) is m.VisionAttention
                        and type(b.attn.qkv) is torch.nn.Linear for b in visual.blocks))

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The patch kernel as matrices, rebuilt when the Conv3d weight changed (a training step in place)."""
        w = self.visual.patch_embed.proj.weight  # [E, C, T, P, P]
        stamp = (w._version, w.data_ptr())
        if stamp != self._stamp or self._kernel is None or self._full is None:
            e = w.shape[0]
            self._full = w.detach().reshape(e, -1)
            self._kernel = w.detach().sum(dim=2).reshape(e, -1)
            self._stamp = stamp
        return self._kernel, self._full

    def patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, C * T * P * P] -> [N, E], as PatchEmbed's Conv3d (stride = kernel: one product per patch)."""
        pe = self.visual.patch_embed
        kernel, full = self._weights()
        x = pixels.to(kernel.dtype)
        frames = x.view(x.shape[0], pe.in_channels, pe.temporal_patch_size, -1)  # [N, C, T, P * P]
        if pe.temporal_patch_size > 1 and all(
                frames[:, :, 0].equal(frames[:, :, t]) for t in range(1, pe.temporal_patch_size)):
            return frames[:, :, 0].reshape(x.shape[0], -1) @ kernel.T  # one frame, summed kernel
        return x @ full.T

    def __call__(self, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C * T * P * P] of images with `grid` [n, 3] (t, h, w) -> merged features [N / m^2, D]."""
        import torch
        import torch.nn.functional as F
        from transformers.vision_utils import get_vision_position_ids

        from texocr.models.packing import flash_varlen

        vis = self.visual
        sizes = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()  # patches per image (one segment: t = 1)
        segments = [h * w for t, h, w in grid.tolist() for _ in range(t)]  # attention segments (frames)
        x = self.patch_embed(pixels)  # [N, E]
        n = x.shape[0]
        if sum(sizes) != n:
            raise ValueError(f"pixel_values has {n} patches, image_grid_thw {sum(sizes)}")
        cos, sin = vis.rotary_pos_emb(x, get_vision_position_ids(grid, vis.spatial_merge_size))  # [N, hd] each
        half = cos.shape[-1] // 2
        signed_sin = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)[:, None, :]  # [N, 1, hd]
        cos = cos[:, None, :]
        cu = torch.tensor([0] + segments).cumsum(0)  # [segments + 1] starts
        bounds, longest = cu.tolist(), max(segments)
        for block in vis.blocks:
            at = block.attn
            h = at.qkv(block.norm1(x)).view(n, 3, at.num_heads, -1)  # [N, 3, H, hd]
            qk = h[:, :2]
            qk = qk * cos[:, None] + qk.roll(half, dims=-1) * signed_sin[:, None]  # [N, 2, H, hd] (rotary)
            # on a GPU in 16 bits: every image in one variable-length Flash Attention call ([N, H, hd] each)
            o = flash_varlen(qk[:, 0], qk[:, 1], h[:, 2], cu, longest, at.scaling, causal=False)
            if o is None:
                q, k, v = (t.transpose(0, 1)[None] for t in (qk[:, 0], qk[:, 1], h[:, 2]))  # [1, H, N, hd] views
                o = x.new_empty(n, at.num_heads, q.shape[-1])  # [N, H, hd]
                for s, e in itertools.pairwise(bounds):  # one image (frame) at a time, as transformers' SDPA path
                    o[s:e] = F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                            scale=at.scaling)[0].transpose(0, 1)
            o = o.reshape(n, -1).to(x.dtype)
            x = x + at.proj(o)
            x = x + block.mlp(block.norm2(x))
        return vis.merger(x)  # [N / m^2, D]
