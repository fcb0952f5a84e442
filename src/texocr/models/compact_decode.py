"""Fast greedy decoding for Qwen2-VL-shaped models (texocr's compact model) on a CPU or a CUDA GPU.

    decoder = GreedyDecoder.for_model(model)          # None when the model is not a plain Qwen2-VL
    out = decoder.generate(enc, max_new_tokens=256, eos_ids=[eos], pad_id=pad, repeat=RepeatRule())
    out.tokens      # [B, N] generated ids, `pad_id` after a row stopped (what `generate` returns, prompt cut)
    out.logprobs    # [B, N] log-probability of each chosen token (what `compute_transition_scores` gives)

Why: the compact model's text tower is 4 layers of width 256, so a new token is a few million multiply-adds
and Hugging Face `generate` spends most of each step in framework code (logits processors, mask creation,
M-RoPE position ids, output-capturing decorators, cache objects): ~10 ms per token where the arithmetic needs
well under 1 ms (bench/compact.md). This loop runs the vision tower once (the model's own
`get_image_features`), computes M-RoPE positions with the model's own `get_rope_index` and rotary module,
then prefills and decodes the text tower with plain torch ops on the model's own weight tensors (held by
reference, so a model being trained is decoded with its current weights), into a preallocated KV cache.
Rows that finish (end token, or the caller's `stop_row`) leave the batch, so the rest decode on a smaller one.

It computes what `model.generate(do_sample=False)` computes, with the same kernels in the same order (SDPA,
grouped-query attention packed as HF packs it), and gives the same tokens (tests/test_compact.py checks it
on random models, batch 1 and left-padded batches). Anything else (beams, sampling, LoRA layers that are not
merged, another architecture) stays with `generate`: `for_model` returns None for it.

Two modes share the vision pass, the prefill and the layer code (`_prompt`, `_prefill`, `_forward`):
- dynamic (CPU default): finished rows leave the batch, a row's loop check runs in Python after every token;
  right for a CPU, where a step costs milliseconds.
- static (CUDA default, `static=True`): a GPU step of this model costs microseconds, so per-step Python,
  launches and host syncs are what limit it. Shapes are fixed per (batch bucket, cache-length bucket): the
  batch is padded to a power of two, the KV cache preallocated to a power of two of slots; the decode step
  (embed, layers, choose, loop check) reads and writes only those buffers, with device-side counters, so it
  is captured once in a CUDA graph (`graphs`) and replayed. Finished rows stay in the batch and emit `pad_id`
  (on device); the host reads "all rows done?" every `sync_every` steps. Loops are found on device by
  `RepeatTracker` (the same test as `find_repeat`). Same tokens as the dynamic mode (tests/test_decode_static.py).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from texocr.models.cuda_graphs import capture_graph
from texocr.models.qwen_speed import one_image_rope_index
from texocr.repeats import RepeatRule, RepeatTracker, find_repeat

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


@dataclass
class GreedyOutput:
    """`tokens` [B, N] (int64, `pad_id` after a row stopped) and `logprobs` [B, N] (float32, 0 after a stop)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor


Linear = Callable[["torch.Tensor"], "torch.Tensor"]

LEVERS = ("gfv", "vgraph", "norm", "compile")
"""The GPU decoder's opt-in levers (GreedyDecoder's gpu_fast_vision, vision_graphs, fused_norm, compile_step), as
`TEXOCR_GPU_LEVERS` and `bench/infer.py --paths fast+LEVER` name them."""


def env_levers() -> set[str]:
    """The levers `TEXOCR_GPU_LEVERS` turns on for decoders made on CUDA (comma-separated names of `LEVERS`;
    "all" for every one): how `texocr eval`, `predict` or `serve` use them (opt-in: see `GreedyDecoder`)."""
    raw = os.environ.get("TEXOCR_GPU_LEVERS", "").replace(" ", "")
    names = set(LEVERS) if raw == "all" else {n for n in raw.split(",") if n}
    if names - set(LEVERS):
        raise ValueError(f"TEXOCR_GPU_LEVERS: unknown lever(s) {sorted(names - set(LEVERS))}; "
                         f"choose from {', '.join(LEVERS)} or all")
    return names


GRAPH_IMAGES = 4
"""`vision_graphs`: batches up to this many images replay a captured vision tower. Larger ones are compute-bound
(launches are a small share) and would need a graph per image count."""


@dataclass
class _Layer:
    """One decoder layer, ready to run: q/k/v fused into one projection, gate/up into another."""

    ln1: torch.Tensor
    ln2: torch.Tensor
    eps1: float
    eps2: float
    qkv: Linear  # [.., D] -> [.., (H + 2 KV) * hd]
    o: Linear  # [.., H * hd] -> [.., D]
    gate_up: Linear  # [.., D] -> [.., 2 F]
    down: Linear  # [.., F] -> [.., D]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, half: bool) -> Linear:
    """`x -> x @ weight.T + bias`, with the weight stored in float16 (fbgemm, fp32 arithmetic) when `half`."""
    import torch
    import torch.nn.functional as F

    if half:
        packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), None if bias is None else bias.float())
        return lambda x: torch.ops.quantized.linear_dynamic_fp16(x, packed)
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    return lambda x: F.linear(x, weight, bias)


def _fp16_exact(weights: Sequence[torch.Tensor]) -> bool:
    """True when storing `weights` in float16 changes none by more than 2**-25 (true of bfloat16 checkpoints,
    texocr's shipping format, except values over 65504; false of ordinary float32 weights)."""
    import torch

    return all(w.dtype != torch.float64 and float((w.half().float() - w.float()).abs().max()) <= 2.0**-25
               for w in weights)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2VLRMSNorm, op for op (float32 statistics, weight applied in the input dtype)."""
    import torch

    if x.dtype == torch.float32:  # the casts are no-ops: skip their dispatch (this runs 9 times per token)
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding: x * cos + rotate_half(x) * sin, with rotate_half(x) * sin written as
    roll(x, half) * signed_sin (`signed_sin` = sin with its first half negated: the same numbers, fewer ops)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _signed(sin: torch.Tensor) -> torch.Tensor:
    """`sin` with the first half of its last dimension negated (see `_rotate`)."""
    half = sin.shape[-1] // 2
    out = sin.clone()
    out[..., :half] = -sin[..., :half]
    return out


def _bucket_rows(n: int) -> int:
    """Rows of the static batch that holds `n` rows: the next power of two (few graphs, at most 2x padding)."""
    return 1 << max(0, n - 1).bit_length()


def _bucket_slots(n: int) -> int:
    """KV-cache slots of the static batch for prompt + new tokens `n`: the next power of two (at least 64).
    Coarse on purpose: every new bucket is a new graph capture (~20 ms), and prompt lengths vary with every
    image, while attending to unused (masked) slots costs a decode step next to nothing (bench/infer.md)."""
    return max(64, 1 << max(0, n - 1).bit_length())


@dataclass
class _Static:
    """The buffers of one static decoding shape (B rows, L cache slots) and, on CUDA, its captured step.

    Every tensor is allocated once and updated in place, so the captured graph's addresses stay valid."""

    cache: list[tuple[torch.Tensor, torch.Tensor]]  # [B, KV, L, hd] per layer
    valid: torch.Tensor  # [B, L] bool: cache slots a row attends to (its prompt, then each fed token)
    cos: torch.Tensor  # [B, L, hd]: rotary of the k-th chosen token (fed at slot T + k); sin likewise, signed
    sin: torch.Tensor
    eos: torch.Tensor  # [E] long
    pad: torch.Tensor  # [] long
    min_new: torch.Tensor  # [] long: the end tokens are forbidden while count < min_new
    nxt: torch.Tensor  # [B] long: the last chosen token, fed next
    count: torch.Tensor  # [1] long: tokens chosen so far (the next one goes to tokens[:, count])
    slot: torch.Tensor  # [1] long: cache slot of the token fed next
    done: torch.Tensor  # [B] bool
    tokens: torch.Tensor  # [B, L] long
    logprobs: torch.Tensor  # [B, L] float32
    repeats: RepeatTracker | None
    graph: Any = field(default=None)  # torch.cuda.CUDAGraph of one `_step`


class GreedyDecoder:
    """Greedy decoding of a `Qwen2VLForConditionalGeneration` with plain torch ops (see the module docstring)."""

    def __init__(self, model: Any, *, half: bool | None = None, vision_batch: int | None = None,
                 static: bool | None = None, graphs: bool | None = None, sync_every: int = 8,
                 max_shapes: int = 6, fast_vision: bool = True, group_prefill: bool = True,
                 gpu_fast_vision: bool = False, fused_norm: bool = False, compile_step: bool = False,
                 vision_graphs: bool = False) -> None:
        """`half`: keep the text tower's matrices in float16 (half the bytes read per token; fp32 arithmetic).
        None (default): only when that is lossless, i.e. the weights came from a bfloat16 checkpoint.
        `vision_batch`: images per vision-tower call (default: 4 on a CPU, all at once on a GPU, with the
        padded one-call-per-layer attention of `qwen_speed`).
        `static`: the static-shape mode (module docstring); None: on CUDA only. `graphs`: capture its step in a
        CUDA graph (None: on CUDA, unless the environment sets TEXOCR_CUDA_GRAPHS=0). `sync_every`: steps between
        host checks of "all rows done". `max_shapes`: static shapes (buffers + graph) kept; the least recently
        used beyond it are freed.
        `fast_vision` (CPU): run the vision tower through `compact_vision.FastVision` (fewer, larger ops) where
        it supports the model, else its own forward. `gpu_fast_vision`: the same on CUDA (its attention one
        varlen Flash Attention call), instead of the model's forward with `qwen_speed`'s batched attention
        (`bench/infer.py --paths fast+gfv`). `group_prefill` (CPU): prefill a padded batch in
        groups of similar prompt length (`compact_prefill`).
        `fused_norm`: RMSNorm as torch's `F.rms_norm` (one fused kernel on CUDA instead of ~7 small ones; the
        weight is applied before the one rounding to 16 bits, not after, so bf16 results can differ in near ties).
        `compile_step` (static mode; for CUDA): the decode step through `torch.compile` (Inductor fuses its ~100
        small kernels) before it is captured in a CUDA graph; costs a compilation per static shape.
        `vision_graphs` (CUDA, with `gpu_fast_vision`): batches of up to `GRAPH_IMAGES` images through the vision
        tower as CUDA-graph replays of padded shapes (`FastVision.padded`). These four are opt-in: together they
        took batch-1 p50 from 29.8 to 16.8 ms on an H200 for 0.1 point of exact match (bf16 near-ties), but a
        short `texocr eval` is slower with them, its compilations per shape costing more than they save
        (bench/infer.md, seventh run): for long-lived, latency-bound processes. On CUDA, `TEXOCR_GPU_LEVERS`
        (`env_levers`) turns them on too."""
        from texocr.models.compact_vision import FastVision

        text = model.model.language_model
        cfg = text.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.image_token_id = model.config.image_token_id
        self.merge = model.config.vision_config.spatial_merge_size
        self.half_option = half
        cuda = model.device.type == "cuda"
        self.vision_batch = max(1, vision_batch) if vision_batch else (1 << 30 if cuda else 4)
        self.static = cuda if static is None else static
        # TEXOCR_CUDA_GRAPHS=0: the static mode without graph capture (to tell a capture problem from others)
        self.graphs = (cuda and os.environ.get("TEXOCR_CUDA_GRAPHS", "1") != "0") if graphs is None else graphs
        self.sync_every = max(1, sync_every)
        self.max_shapes = max(1, max_shapes)
        self._shapes: OrderedDict[tuple[Any, ...], _Static] = OrderedDict()
        visual = model.model.visual
        self.cuda = cuda
        self.fast_vision = FastVision(visual) if fast_vision and not cuda and FastVision.supports(visual) else None
        self.group_prefill = group_prefill and not cuda
        self._compiled: Callable[[_Static], None] | None = None
        given = {name for name, on in zip(LEVERS, (gpu_fast_vision, vision_graphs, fused_norm, compile_step)) if on}
        self.use_levers(given | (env_levers() if cuda else set()))
        self.half = False
        self._params = [p for p in text.parameters()] + [model.lm_head.weight]
        self._stamp: tuple[int, ...] = ()
        self.layers: list[_Layer] = []

    def _prepare(self) -> None:
        """(Re)build the fused / packed weights when a parameter changed since (e.g. between training evals)."""
        import torch

        stamp = tuple(p._version for p in self._params) + tuple(p.data_ptr() for p in self._params)
        if stamp == self._stamp:
            return
        model, text = self.model, self.model.model.language_model
        mats = [p for p in self._params if p.dim() == 2 and p is not text.embed_tokens.weight]
        can_half = (model.device.type == "cpu" and text.embed_tokens.weight.dtype == torch.float32
                    and hasattr(torch.ops.quantized, "linear_prepack_fp16"))
        self.half = can_half and (self.half_option if self.half_option is not None else _fp16_exact(mats))
        with torch.no_grad():
            self.embed = text.embed_tokens.weight.detach()  # [V, D]
            self.norm, self.eps = text.norm.weight.detach(), text.norm.variance_epsilon
            self.lm_head = _linear(model.lm_head.weight, None, self.half)  # [.., D] -> [.., V]
            self.layers = []
            for layer in text.layers:
                at, mlp = layer.self_attn, layer.mlp
                self.layers.append(_Layer(
                    ln1=layer.input_layernorm.weight.detach(), ln2=layer.post_attention_layernorm.weight.detach(),
                    eps1=layer.input_layernorm.variance_epsilon, eps2=layer.post_attention_layernorm.variance_epsilon,
                    qkv=_linear(torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]),
                                torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]), self.half),
                    o=_linear(at.o_proj.weight, None, self.half),
                    gate_up=_linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), None, self.half),
                    down=_linear(mlp.down_proj.weight, None, self.half),
                ))
        self._stamp = stamp
        self._shapes.clear()  # captured graphs read the old tensors' addresses

    def use_levers(self, levers: set[str]) -> None:
        """Turn the opt-in levers named in `levers` (`LEVERS`) on and the others off, dropping the static shapes
        made under other settings. `gfv` and `vgraph` act on CUDA only (a CPU keeps its own `fast_vision`)."""
        from texocr.models.compact_vision import FastVision

        visual = self.model.model.visual
        if self.cuda:
            self.fast_vision = FastVision(visual) if "gfv" in levers and FastVision.supports(visual) else None
        self.vision_graphs = "vgraph" in levers and self.cuda
        self.fused_norm = "norm" in levers
        self.compile_step = "compile" in levers
        self._shapes.clear()

    # ------------------------------------------------------------ eligibility

    @classmethod
    def for_model(cls, model: Any) -> GreedyDecoder | None:
        """A decoder for `model`, or None when this loop would not compute exactly what `generate` does."""
        import torch
        from transformers import Qwen2VLForConditionalGeneration

        if type(model) is not Qwen2VLForConditionalGeneration:  # PeftModel, Qwen2.5/3-VL, ...: generate
            return None
        cfg = model.config.text_config
        rope = getattr(cfg, "rope_parameters", None) or {}
        if (cfg.hidden_act != "silu" or getattr(cfg, "use_sliding_window", False)
                or rope.get("rope_type", "default") != "default"
                or cfg.hidden_size != cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)):
            return None
        text = model.model.language_model
        linears = [model.lm_head] + [m for layer in text.layers
                                     for m in (*_attn_linears(layer.self_attn), *_mlp_linears(layer.mlp))]
        if any(type(m) is not torch.nn.Linear for m in linears):  # LoRA or quantized layers wrap the Linear
            return None
        if type(text.embed_tokens) is not torch.nn.Embedding:
            return None
        return cls(model)

    # ------------------------------------------------------------ decoding

    def generate(
        self,
        enc: dict[str, Any],
        *,
        max_new_tokens: int,
        eos_ids: Sequence[int],
        pad_id: int,
        min_new_tokens: int = 0,
        repeat: RepeatRule | None = None,
        stop_row: Callable[[list[int]], bool] | None = None,
        streamer: Any = None,
    ) -> GreedyOutput:
        """Greedy tokens for a left-padded generation batch `enc` (a family's `encode_for_generation`).

        A row stops at an id of `eos_ids` (kept), when its ids so far end in a loop by `repeat`
        (`find_repeat`), when `stop_row(its generated ids)` is true (both checked after every token, like a
        `StoppingCriteria`), or after `max_new_tokens`. `min_new_tokens` forbids the end tokens before that
        many tokens (as `generate` does). `streamer` gets `put(ids)` / `end()` like `generate`'s (batch 1).
        `stop_row` and `streamer` need the host every step: they run in the dynamic mode.
        """
        import torch

        with torch.inference_mode(), _attention_backends(self.model.device.type == "cuda"):
            self._prepare()
            if self.static and stop_row is None and streamer is None:
                try:
                    return self._generate_static(enc, max_new_tokens, list(eos_ids), pad_id, min_new_tokens, repeat)
                except RuntimeError as e:  # a CUDA/driver limit the CPU tests cannot reach: read on, said once
                    log.warning("static GPU decoding failed (%s); this decoder uses the dynamic loop from now on", e)
                    self.static = False
                    self._shapes.clear()
            if repeat is not None:
                rule, other = asdict(repeat), stop_row
                stop_row = lambda ids: find_repeat(ids, **rule) is not None or (
                    other is not None and other(ids))
            return self._generate(enc, max_new_tokens, list(eos_ids), pad_id, min_new_tokens, stop_row, streamer)

    def _prompt_embeddings(self, enc: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings with the image features scattered in ([B, T, D]) and M-RoPE positions [3, B, T]."""
        import torch

        ids = enc["input_ids"]
        core = self.model.model
        x = torch.nn.functional.embedding(ids, self.embed)  # [B, T, D]
        if enc.get("pixel_values") is not None:
            feats = self._image_features(enc["pixel_values"], enc["image_grid_thw"]).to(x.dtype)  # [n tokens, D]
            image_mask = (ids == self.image_token_id).unsqueeze(-1)
            if int(image_mask.sum()) != feats.shape[0]:
                raise ValueError(f"image features and image tokens do not match: tokens "
                                 f"{int(image_mask.sum())}, features {feats.shape[0]}")
            x = x.masked_scatter(image_mask, feats)
        positions = one_image_rope_index(ids, enc.get("attention_mask"), enc.get("image_grid_thw"),
                                         self.image_token_id, self.merge)
        if positions is None:  # not one image per row: the model's own (row by row) function
            mm = enc.get("mm_token_type_ids")
            if mm is None:
                mm = (ids == self.image_token_id).int()
            positions, _ = core.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=enc.get("image_grid_thw"),
                                               attention_mask=enc.get("attention_mask"))
        return x, positions

    def _image_features(self, pixels: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The vision tower (the model's own `get_image_features`) over `vision_batch` images at a time.

        Images are independent in it (attention stays within an image), so chunks change nothing but speed:
        a whole batch of 32 images makes activations of tens of MB that fall out of the CPU caches and run
        slower per image than a few images at a time (bench/compact.md)."""
        import torch

        from texocr.models.qwen_speed import batched_vision_attention

        core = self.model.model
        patches = grid.prod(-1).tolist()  # patches per image
        feats, offset = [], 0
        for i in range(0, len(patches), self.vision_batch):
            n = sum(patches[i: i + self.vision_batch])
            chunk, part = pixels[offset: offset + n], grid[i: i + self.vision_batch]
            out = (self.fast_vision.padded(chunk, part, graphs=True)
                   if self.fast_vision is not None and self.vision_graphs and len(part) <= GRAPH_IMAGES else None)
            if out is not None:
                feats.append(out)
            elif self.fast_vision is not None:
                feats.append(self.fast_vision(chunk, part))
            elif pixels.device.type == "cuda":  # one padded attention call per layer, not one per image
                with batched_vision_attention(max(patches[i: i + self.vision_batch])):
                    feats.extend(core.get_image_features(chunk, part).pooler_output)
            else:
                feats.extend(core.get_image_features(chunk, part).pooler_output)
            offset += n
        return torch.cat(feats, dim=0)  # [image tokens of all images, D]

    def _prompt(self, enc: dict[str, Any], max_new: int) -> dict[str, Any]:
        """What prefill and decoding need of a prompt batch: embeddings `x` [B, T, D], rotary `cos`/`sin`
        [B, T, hd] of the prompt and `dec_cos`/`dec_sin` [B, N, hd] of the N new tokens (sin signed),
        `attn` [B, T] and `padded` (any left padding)."""
        import torch

        ids = enc["input_ids"]
        attn = enc.get("attention_mask")
        attn = torch.ones_like(ids) if attn is None else attn
        x, positions = self._prompt_embeddings(enc)  # [B, T, D], [3, B, T]
        rotary = self.model.model.language_model.rotary_emb
        cos, sin = rotary(x, positions)  # [B, T, hd] each
        # Decode step s sits at the prompt's last position + 1 + s on every axis (generate's rule).
        steps = torch.arange(1, max_new + 1, device=ids.device)
        dec_cos, dec_sin = rotary(x, positions[:, :, -1:] + steps)  # [B, N, hd]
        return {"x": x, "cos": cos, "sin": _signed(sin), "dec_cos": dec_cos, "dec_sin": _signed(dec_sin),
                "attn": attn, "padded": bool((attn == 0).any())}

    def _prefill(self, p: dict[str, Any], cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The prompt through the text tower into cache slots 0..T-1: hidden states [B, T, D]."""
        return self._forward(p["x"], p["cos"].unsqueeze(1), p["sin"].unsqueeze(1), cache, 0,
                             self._prefill_mask(p))  # [B, T, D]

    @staticmethod
    def _prefill_mask(p: dict[str, Any]) -> torch.Tensor | None:
        """[B, 1, T, T] bool: causal and padding (a padding query sees itself: no empty rows, no NaN); None
        without padding."""
        import torch

        if not p["padded"]:
            return None
        attn, prompt_len = p["attn"], p["attn"].shape[1]
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=attn.device).tril()
        mask = causal & attn.bool()[:, None, None, :]
        return mask | torch.eye(prompt_len, dtype=torch.bool, device=attn.device)

    def _generate(self, enc: dict[str, Any], max_new: int, eos_ids: list[int], pad_id: int, min_new: int,
                  stop_row: Callable[[list[int]], bool] | None, streamer: Any) -> GreedyOutput:
        import torch
        import torch.nn.functional as F

        ids = enc["input_ids"]
        batch, prompt_len = ids.shape
        p = self._prompt(enc, max_new)
        x, dec_cos, dec_sin, padded = p["x"], p["dec_cos"], p["dec_sin"], p["padded"]
        total = prompt_len + max_new
        shape = (batch, self.kv_heads, total, self.head_dim)
        cache = [(x.new_zeros(shape), x.new_zeros(shape)) for _ in self.layers]  # [B, KV, T + N, hd] each
        valid = torch.ones((batch, total), dtype=torch.bool, device=ids.device)
        valid[:, :prompt_len] = p["attn"].bool()
        if padded and self.group_prefill:  # rows of similar length together: no prefill of the padding
            from texocr.models.compact_prefill import grouped_prefill

            h = grouped_prefill(self._forward, x, p["cos"].unsqueeze(1), p["sin"].unsqueeze(1), cache,
                                self._prefill_mask(p), p["attn"])  # [B, 1, D]
        else:
            h = self._prefill(p, cache)  # [B, T, D]

        tokens = torch.full((batch, max_new), pad_id, dtype=torch.long, device=ids.device)
        logprobs = torch.zeros((batch, max_new), dtype=torch.float32, device=ids.device)
        rows = torch.arange(batch, device=ids.device)  # original index of each row still decoding
        generated: list[list[int]] = [[] for _ in range(batch)]
        eos = torch.tensor(eos_ids, device=ids.device)
        # (rows, step, best logit, logits [b, V]) of every step: one logsumexp after the loop instead of one per
        # token (a dozen small ops each); at most B x N x V floats (32 x 256 x 1.3k: 42 MB), typically a tenth
        scored: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []
        # the padding as an additive mask (0 / -inf) for decode steps: what SDPA makes of a boolean mask, once
        bias = torch.zeros(valid.shape, device=ids.device).masked_fill_(~valid, float("-inf")) if padded else None
        if streamer is not None:
            streamer.put(ids.cpu())
        for step in range(max_new):
            logits = self._logits(h[:, -1])  # [b, V]
            if step < min_new:
                logits[:, eos] = float("-inf")
            best, nxt = logits.max(dim=-1)  # [b] each; the first maximum, as argmax
            tokens[rows, step] = nxt
            scored.append((rows, step, best, logits))
            if streamer is not None:
                streamer.put(nxt.cpu())
            done = torch.isin(nxt, eos)
            new_ids = nxt.tolist()
            if stop_row is not None:
                flags = done.tolist()
                for j, (r, t) in enumerate(zip(rows.tolist(), new_ids)):
                    generated[r].append(t)
                    if not flags[j] and stop_row(generated[r]):
                        flags[j] = True
                done = torch.tensor(flags, device=ids.device)
            if step + 1 == max_new or bool(done.all()):
                break
            if bool(done.any()):  # finished rows leave: a smaller batch for the rest
                keep = (~done).nonzero()[:, 0]
                rows, nxt = rows[keep], nxt[keep]
                filled = prompt_len + step  # slots written so far: the prompt and the tokens fed before this step
                cache = [(_keep_rows(k, keep, filled), _keep_rows(v, keep, filled)) for k, v in cache]
                valid, dec_cos, dec_sin = valid[keep], dec_cos[keep], dec_sin[keep]
                bias = bias[keep] if bias is not None else None
            pos = prompt_len + step  # cache slot of the token being fed
            step_mask = bias[:, None, None, : pos + 1] if bias is not None else None  # [b, 1, 1, L]
            x = F.embedding(nxt[:, None], self.embed)  # [b, 1, D]
            h = self._forward(x, dec_cos[:, None, step: step + 1], dec_sin[:, None, step: step + 1], cache, pos,
                              step_mask)
        if streamer is not None:
            streamer.end()
        if scored:
            where = torch.cat([r for r, _, _, _ in scored]), torch.cat([torch.full_like(r, s) for r, s, _, _ in scored])
            logprobs[where] = torch.cat([b for _, _, b, _ in scored]) - torch.logsumexp(
                torch.cat([lg for _, _, _, lg in scored]), dim=-1)
        return GreedyOutput(tokens, logprobs)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm: `_rms` (the model's own arithmetic), or torch's fused kernel under `fused_norm`."""
        if self.fused_norm:
            import torch.nn.functional as F

            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        return _rms(x, weight, eps)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Last hidden states [B, D] -> float32 logits [B, V] (what `generate` scores)."""
        return self.lm_head(self._norm(h, self.norm, self.eps)).float()

    # ------------------------------------------------------------ static mode (CUDA graphs)

    def _generate_static(self, enc: dict[str, Any], max_new: int, eos_ids: list[int], pad_id: int, min_new: int,
                         repeat: RepeatRule | None) -> GreedyOutput:
        """The static-shape loop (module docstring): prefill eagerly, then one `_step` (a graph replay on
        CUDA) per token, the host reading `done` every `sync_every` steps."""
        ids = enc["input_ids"]
        batch, prompt_len = ids.shape
        p = self._prompt(enc, max_new)
        s = self._static_state(_bucket_rows(batch), _bucket_slots(prompt_len + max_new), len(eos_ids), repeat,
                               p["x"])
        self._reset(s, p, batch, eos_ids, pad_id, min_new)
        h = self._prefill(p, [(k[:batch], v[:batch]) for k, v in s.cache])  # [b, T, D]
        last = h.new_zeros((s.nxt.shape[0], h.shape[-1]))  # [B, D]; padded rows stay zero (and done)
        last[:batch] = h[:, -1]
        self._choose(s, last)
        step_fn = self._compiled_step() if self.compile_step else self._step
        for step in range(1, max_new):
            if s.graph is not None:
                s.graph.replay()
            else:
                step_fn(s)
            if step % self.sync_every == 0 and bool(s.done[:batch].all()):  # the one host sync
                break
        return GreedyOutput(s.tokens[:batch, :max_new].clone(), s.logprobs[:batch, :max_new].clone())

    def _static_state(self, rows: int, slots: int, n_eos: int, repeat: RepeatRule | None,
                      like: torch.Tensor) -> _Static:
        """The buffers (and captured step) of this shape, made on first use; least recently used freed."""
        import torch

        key = (rows, slots, n_eos, repeat, like.dtype, like.device)
        if key in self._shapes:
            self._shapes.move_to_end(key)
            return self._shapes[key]
        while len(self._shapes) >= self.max_shapes:
            self._shapes.popitem(last=False)
        dev, long = like.device, torch.long
        shape = (rows, self.kv_heads, slots, self.head_dim)
        s = _Static(
            cache=[(like.new_zeros(shape), like.new_zeros(shape)) for _ in self.layers],
            valid=torch.zeros((rows, slots), dtype=torch.bool, device=dev),
            cos=like.new_zeros((rows, slots, self.head_dim)), sin=like.new_zeros((rows, slots, self.head_dim)),
            eos=torch.zeros(n_eos, dtype=long, device=dev), pad=torch.zeros((), dtype=long, device=dev),
            min_new=torch.zeros((), dtype=long, device=dev), nxt=torch.zeros(rows, dtype=long, device=dev),
            count=torch.ones(1, dtype=long, device=dev), slot=torch.zeros(1, dtype=long, device=dev),
            done=torch.ones(rows, dtype=torch.bool, device=dev),
            tokens=torch.zeros((rows, slots), dtype=long, device=dev),
            logprobs=torch.zeros((rows, slots), dtype=torch.float32, device=dev),
            repeats=RepeatTracker(rows, dev, repeat) if repeat is not None else None,
        )
        if self.graphs and dev.type == "cuda":
            s.valid[:, 0] = True  # a harmless state for the warm-up steps (count 1, slot 0, all rows done)
            try:
                s.graph = self._capture_step(s)
            except RuntimeError as e:  # the static step still runs, eagerly
                log.warning("CUDA graph capture failed (%s); decoding without graphs", e)
                self.graphs = False
        self._shapes[key] = s
        return s

    def _capture_step(self, s: _Static) -> Any:
        """`s`'s step captured in a CUDA graph; compiled first under `compile_step`, and if compiling fails
        (no Triton, a Dynamo limit), said once and captured eagerly."""
        if self.compile_step:
            try:
                compiled = self._compiled_step()
                return capture_graph(lambda: compiled(s))
            except Exception as e:  # noqa: BLE001 - Inductor's failures have many types; eager still decodes
                log.warning("torch.compile of the decode step failed (%s: %s); decoding uncompiled",
                            type(e).__name__, str(e)[:300])
                self.compile_step = False
        return capture_graph(lambda: self._step(s))

    def _compiled_step(self) -> Callable[[_Static], None]:
        """`_step` through `torch.compile` (made once; Dynamo recompiles it per static shape). Inductor's own
        CUDA graphs stay off: the compiled step is captured by `capture_graph` like the eager one."""
        import torch

        if self._compiled is None:
            self._compiled = torch.compile(self._step, dynamic=False, fullgraph=False)
        return self._compiled

    def _reset(self, s: _Static, p: dict[str, Any], batch: int, eos_ids: list[int], pad_id: int,
               min_new: int) -> None:
        """Load a new batch (`batch` real rows of prompt length T) into the buffers, in place."""
        import torch

        prompt_len = p["attn"].shape[1]
        for k, v in s.cache:  # stale values under a mask weigh 0, but 0 x inf is NaN: start from zeros
            k.zero_()
            v.zero_()
        s.valid.zero_()
        s.valid[:batch, :prompt_len] = p["attn"].bool()
        s.valid[batch:, 0] = True  # padded rows attend to one (zero) slot: no empty softmax, no NaN
        n = p["dec_cos"].shape[1]
        s.cos.zero_()
        s.sin.zero_()
        s.cos[:batch, :n] = p["dec_cos"]
        s.sin[:batch, :n] = p["dec_sin"]
        s.eos.copy_(torch.tensor(eos_ids))
        s.pad.fill_(pad_id)
        s.min_new.fill_(min_new)
        s.count.zero_()
        s.slot.fill_(prompt_len)
        s.done.fill_(True)
        s.done[:batch] = False
        s.tokens.fill_(pad_id)
        s.logprobs.zero_()
        if s.repeats is not None:
            s.repeats.reset()

    def _step(self, s: _Static) -> None:
        """Feed each row's last chosen token at cache slot `slot` and choose the next. Only in-place updates of
        `s`, no host reads: captured as a CUDA graph."""
        import torch.nn.functional as F

        x = F.embedding(s.nxt[:, None], self.embed)  # [B, 1, D]
        k = s.count - 1  # [1]: the fed token's index among the new tokens
        cos = s.cos.index_select(1, k)[:, None]  # [B, 1, 1, hd]
        sin = s.sin.index_select(1, k)[:, None]
        s.valid.index_fill_(1, s.slot, True)
        h = self._forward(x, cos, sin, s.cache, s.slot, s.valid[:, None, None, :])  # [B, 1, D]
        s.slot += 1
        self._choose(s, h[:, -1])

    def _choose(self, s: _Static, h: torch.Tensor) -> None:
        """The greedy token of each row from its last hidden state `h` [B, D] into `tokens[:, count]` (`pad` for
        finished rows), its log-probability, and the rows it finishes (end token, loop)."""
        import torch

        logits = self._logits(h)  # [B, V]
        forbid = s.count < s.min_new  # [1]: the end tokens are not allowed yet
        logits.index_copy_(1, s.eos, torch.where(forbid, float("-inf"), logits.index_select(1, s.eos)))
        best, nxt = logits.max(dim=-1)  # [B] each; the first maximum, as argmax
        logp = best - torch.logsumexp(logits, dim=-1)
        nxt = torch.where(s.done, s.pad, nxt)
        s.tokens.index_copy_(1, s.count, nxt[:, None])
        s.logprobs.index_copy_(1, s.count, torch.where(s.done, 0.0, logp)[:, None])
        ended = (nxt[:, None] == s.eos).any(dim=-1)  # [B]
        if s.repeats is not None:
            ended |= s.repeats.push(nxt)
        s.done |= ended
        s.nxt.copy_(nxt)
        s.count += 1

    def _forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 cache: list[tuple[torch.Tensor, torch.Tensor]], start: int | torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """The text tower on `x` [B, T, D] whose tokens go to cache slots start..start+T-1; cos/sin [B, 1, T, hd]
        (sin signed, see `_rotate`). `start` a [1] tensor: one token (T = 1), attending to the whole cache
        under `mask` [B, 1, 1, L] (the static step: no host value, so it can be captured)."""
        import torch
        import torch.nn.functional as F

        b, t, _ = x.shape
        hd, h_q, h_kv = self.head_dim, self.heads, self.kv_heads
        group = h_q // h_kv
        for layer, (kc, vc) in zip(self.layers, cache):
            qkv = layer.qkv(self._norm(x, layer.ln1, layer.eps1)).view(b, t, -1, hd).transpose(1, 2)  # [B, H+2KV, T, hd]
            qk = _rotate(qkv[:, : h_q + h_kv], cos, sin)
            q = qk[:, :h_q]  # [B, H, T, hd]
            if isinstance(start, torch.Tensor):  # static step (t == 1): slot on device, every slot attended, masked
                kc.index_copy_(2, start, qk[:, h_q:])
                vc.index_copy_(2, start, qkv[:, h_q + h_kv:])
                keys, values = kc, vc  # [B, KV, L, hd]
            else:
                kc[:, :, start:start + t] = qk[:, h_q:]
                vc[:, :, start:start + t] = qkv[:, h_q + h_kv:]
                keys, values = kc[:, :, :start + t], vc[:, :, :start + t]  # [B, KV, L, hd]
            if t == 1:  # one query: the query heads of a group become that KV head's queries (HF's pack_gqa)
                o = F.scaled_dot_product_attention(q.reshape(b, h_kv, group, hd), keys, values, attn_mask=mask,
                                                   scale=self.scaling)  # [B, KV, group, hd]
                o = o.reshape(b, 1, -1)  # [B, 1, H * hd]
            elif mask is None:
                o = F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=self.scaling,
                                                   enable_gqa=group > 1)  # [B, H, T, hd]
                o = o.transpose(1, 2).reshape(b, t, -1)
            else:
                keys = keys.repeat_interleave(group, dim=1) if group > 1 else keys
                values = values.repeat_interleave(group, dim=1) if group > 1 else values
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
                o = o.transpose(1, 2).reshape(b, t, -1)
            x = x + layer.o(o)
            gate, up = layer.gate_up(self._norm(x, layer.ln2, layer.eps2)).chunk(2, dim=-1)  # [B, T, F] each
            x = x + layer.down(F.silu(gate) * up)
        return x


def _attention_backends(cuda: bool) -> Any:
    """On CUDA, SDPA without its cuDNN backend (flash, memory-efficient or math instead). Why: cuDNN builds an
    execution plan for every new shape, tens of ms each, and every batch of images brings new prompt and patch
    lengths (vision tower, prefill): measured on an H100, 45 + 35 ms of a 130 ms batch-1 call (bench/infer.md)."""
    import contextlib

    if not cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _keep_rows(cache: torch.Tensor, keep: torch.Tensor, filled: int) -> torch.Tensor:
    """`cache[keep]` [b, KV, S, hd] as the first b rows of `cache` itself, moved up in place: only rows after the
    first dropped one move, and only their first `filled` slots (the later ones are written before they are
    read: a decode step reads the slots up to the one it writes)."""
    import torch

    moved = (keep != torch.arange(len(keep), device=keep.device)).nonzero()
    if len(moved):
        first = int(moved[0, 0])
        cache[first: len(keep), :, :filled] = cache[keep[first:], :, :filled]
    return cache[: len(keep)]


def _attn_linears(attn: Any) -> tuple[Any, ...]:
    return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj


def _mlp_linears(mlp: Any) -> tuple[Any, ...]:
    return mlp.gate_proj, mlp.up_proj, mlp.down_proj
