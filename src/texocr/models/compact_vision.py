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
On a GPU in 16 bits (`GreedyDecoder(gpu_fast_vision=True)`, opt-in: bench/infer.md) the attention of
every image is one variable-length Flash Attention call (`packing.flash_varlen`) instead.
Layer norms, the MLPs, the merger and the weights are the model's own modules. The result equals the model's
own `get_image_features` up to float rounding (tests/test_compact.py); the predictions of the shipped model on
the 589 published im2latex images are the same (bench/compact.md, "CPU fast paths").
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


class FastVision:
    """`visual` (a `Qwen2VisionTransformerPretrainedModel`) as a function of (pixel_values, grid) (module doc)."""

    def __init__(self, visual: Any) -> None:
        self.visual = visual
        self._stamp: tuple[int, ...] = ()
        self._kernel: torch.Tensor | None = None  # [E, C * P * P]: the temporal halves summed
        self._full: torch.Tensor | None = None  # [E, C * T * P * P]
        self._graphs: dict[tuple[Any, ...], _PaddedRun] = {}  # `padded`'s captured shapes, oldest first
        self._graph_failed = False

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
            self._graphs.clear()  # they read the old kernel's memory
        return self._kernel, self._full

    def _one_frame(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """[N, C * P * P]: the first temporal frame of every patch when all frames are equal (a still image, which
        the processor repeats to fill `temporal_patch_size`), else None (a video)."""
        pe = self.visual.patch_embed
        frames = pixels.view(pixels.shape[0], pe.in_channels, pe.temporal_patch_size, -1)  # [N, C, T, P * P]
        if all(frames[:, :, 0].equal(frames[:, :, t]) for t in range(1, pe.temporal_patch_size)):
            return frames[:, :, 0].reshape(pixels.shape[0], -1)
        return None

    def patch_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, C * T * P * P] -> [N, E], as PatchEmbed's Conv3d (stride = kernel: one product per patch)."""
        kernel, full = self._weights()
        x = pixels.to(kernel.dtype)
        one = self._one_frame(x)
        return one @ kernel.T if one is not None else x @ full.T  # one frame with the summed kernel, or all

    def __call__(self, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C * T * P * P] of images with `grid` [n, 3] (t, h, w) -> merged features [N / m^2, D]."""
        sizes = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()  # patches per image (one segment: t = 1)
        segments = [h * w for t, h, w in grid.tolist() for _ in range(t)]  # attention segments (frames)
        x = self.patch_embed(pixels)  # [N, E]
        if sum(sizes) != x.shape[0]:
            raise ValueError(f"pixel_values has {x.shape[0]} patches, image_grid_thw {sum(sizes)}")
        cos, signed_sin = self._rotary(x, grid)
        return self._blocks(x, cos, signed_sin, segments)

    def _rotary(self, x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos [N, 1, hd] and sin with its first half negated (`x * cos + roll(x) * signed_sin` rotates)."""
        import torch
        from transformers.vision_utils import get_vision_position_ids

        vis = self.visual
        cos, sin = vis.rotary_pos_emb(x, get_vision_position_ids(grid, vis.spatial_merge_size))  # [N, hd] each
        half = cos.shape[-1] // 2
        return cos[:, None, :], torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)[:, None, :]

    def _blocks(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, segments: list[int],
                cu: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embeddings x [N, E] through the blocks and the merger -> [N / m^2, D]; attention within each of
        `segments` (patch counts). `cu` [segments + 1] int32 on the device: their starts, read by Flash Attention
        from there (a CUDA graph's replay changes them; `segments` then only gives their number), so Flash
        Attention must run and takes N as the longest segment."""
        import torch
        import torch.nn.functional as F

        from texocr.models.packing import flash_varlen

        vis = self.visual
        n, half = x.shape[0], cos.shape[-1] // 2
        bounds = [0, *itertools.accumulate(segments)]
        on_device = cu is not None
        cu = cu if on_device else torch.tensor(bounds)
        for block in vis.blocks:
            at = block.attn
            h = at.qkv(block.norm1(x)).view(n, 3, at.num_heads, -1)  # [N, 3, H, hd]
            qk = h[:, :2]
            # rotary in float32 (cos/sin are), back to the activations' dtype, as transformers' vision attention
            qk = (qk.float() * cos[:, None] + qk.float().roll(half, dims=-1) * signed_sin[:, None]).to(h.dtype)
            # on a GPU in 16 bits: every image in one variable-length Flash Attention call ([N, H, hd] each)
            o = flash_varlen(qk[:, 0], qk[:, 1], h[:, 2], cu, n if on_device else max(segments), at.scaling,
                             causal=False)
            if o is None and on_device:
                raise RuntimeError("Flash Attention's varlen kernel is not available for the segment starts on device")
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

    def padded(self, pixels: torch.Tensor, grid: torch.Tensor, graphs: bool = False) -> torch.Tensor | None:
        """What `__call__` gives, computed on the patches padded to a power of two (the padding one more
        attention segment of zeros, which no image attends to, cut off after the merger), so that a few shapes
        cover every small batch: on CUDA (`graphs`) each (images, padded patches) shape is captured once in a
        CUDA graph and replayed, instead of ~150 kernel launches per call. Why: at batch 1 the tower is a few
        microseconds of arithmetic per kernel, and launching them was 10 ms of a 40 ms prediction on an H100
        (bench/infer.md). None where it does not apply (a video's frames, a kernel that fails to capture)."""
        kernel, _ = self._weights()
        one = self._one_frame(pixels.to(kernel.dtype))  # [N, C * P * P]
        if one is None or grid[:, 0].ne(1).any():
            return None
        sizes = (grid[:, 1] * grid[:, 2]).tolist()
        n = sum(sizes)
        if n != pixels.shape[0]:
            raise ValueError(f"pixel_values has {pixels.shape[0]} patches, image_grid_thw {n}")
        rows = 1 << n.bit_length()  # > n: the padding segment is never empty
        key = (len(sizes), rows, pixels.dtype, pixels.device, self._stamp)
        cos, signed_sin = self._rotary(one, grid)
        run = self._graphs.get(key) if graphs else None
        if run is None:
            run = _PaddedRun(self, len(sizes), rows, one, cos)
            if graphs:
                if self._graph_failed or not run.capture():
                    self._graph_failed = True  # said once; the caller's path runs from now on
                    return None
                while len(self._graphs) >= 8:
                    self._graphs.pop(next(iter(self._graphs)))
                self._graphs[key] = run
        return run(one, cos, signed_sin, sizes)


class _PaddedRun:
    """The static buffers (and, on CUDA, the captured graph) of one padded shape of `FastVision.padded`."""

    def __init__(self, vision: FastVision, images: int, rows: int, like: torch.Tensor, cos: torch.Tensor) -> None:
        self.vision, self.images, self.rows = vision, images, rows
        self.x = like.new_zeros((rows, like.shape[1]))  # [rows, C * P * P]
        self.cos = cos.new_ones((rows, *cos.shape[1:]))  # [rows, 1, hd]
        self.sin = cos.new_zeros((rows, *cos.shape[1:]))
        self.cu = _int32(rows, [4] * images, like.device)  # [images + 2]: image starts, padding start, rows
        self.graph: Any = None
        self.out: torch.Tensor | None = None  # the captured run's output buffer

    def _run(self, sizes: list[int], on_device: bool) -> torch.Tensor:
        kernel, _ = self.vision._weights()
        return self.vision._blocks(self.x @ kernel.T, self.cos, self.sin, [*sizes, self.rows - sum(sizes)],
                                   self.cu if on_device else None)  # [rows / m^2, D]

    def capture(self) -> bool:
        """Capture one run (the segment sizes do not matter, only the buffers' addresses: a replay reads the
        starts from `cu`). False, said in the log, when it cannot be captured."""
        from texocr.models.cuda_graphs import capture_graph

        sizes, made = [4] * self.images, {}
        try:
            self.graph = capture_graph(lambda: made.update(out=self._run(sizes, True)))
            self.out = made["out"]  # the captured run's output: its memory is what every replay writes
            return True
        except RuntimeError as e:
            log.warning("the vision tower's CUDA graph failed (%s); running it without", e)
            return False

    def __call__(self, one: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor,
                 sizes: list[int]) -> torch.Tensor:
        n = one.shape[0]
        self.x[:n].copy_(one)
        self.x[n:].zero_()
        self.cos[:n].copy_(cos)
        self.cos[n:].fill_(1)
        self.sin[:n].copy_(signed_sin)
        self.sin[n:].zero_()
        if self.graph is None or self.out is None:  # (no graph: the CPU test of the padding)
            out = self._run(sizes, False)
        else:
            self.cu.copy_(_int32(self.rows, sizes, self.cu.device))
            self.graph.replay()
            out = self.out
        return out[: n // self.vision.visual.spatial_merge_size**2].clone()  # [N / m^2, D]


def _int32(rows: int, sizes: list[int], device: Any) -> torch.Tensor:
    """Segment starts, int32 on `device`: each image's, the padding's, then `rows` ([images + 2])."""
    import torch

    return torch.tensor([0, *itertools.accumulate(sizes), rows], dtype=torch.int32).to(device)
