"""Fast greedy decoding for Qwen2-VL-shaped models (texocr's compact model) on a CPU.

    decoder = GreedyDecoder.for_model(model)          # None when the model is not a plain Qwen2-VL
    out = decoder.generate(enc, max_new_tokens=256, eos_ids=[eos], pad_id=pad)
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class GreedyOutput:
    """`tokens` [B, N] (int64, `pad_id` after a row stopped) and `logprobs` [B, N] (float32, 0 after a stop)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor


Linear = Callable[["torch.Tensor"], "torch.Tensor"]


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


class GreedyDecoder:
    """Greedy decoding of a `Qwen2VLForConditionalGeneration` with plain torch ops (see the module docstring)."""

    def __init__(self, model: Any, *, half: bool | None = None, vision_batch: int = 4,
                 fast_vision: bool = True, group_prefill: bool = True) -> None:
        """`half`: keep the text tower's matrices in float16 (half the bytes read per token; fp32 arithmetic).
        None (default): only when that is lossless, i.e. the weights came from a bfloat16 checkpoint.
        `vision_batch`: images per vision-tower call. `fast_vision`: run the vision tower through
        `compact_vision.FastVision` (CPU; fewer, larger ops) where it supports the model, else its own forward.
        `group_prefill`: prefill a padded batch in groups of similar prompt length (`compact_prefill`)."""
        from texocr.models.compact_vision import FastVision

        text = model.model.language_model
        cfg = text.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.image_token_id = model.config.image_token_id
        self.half_option = half
        self.vision_batch = max(1, vision_batch)
        visual = model.model.visual
        self.fast_vision = FastVision(visual) if fast_vision and FastVision.supports(visual) else None
        self.group_prefill = group_prefill
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
        stop_row: Callable[[list[int]], bool] | None = None,
        streamer: Any = None,
    ) -> GreedyOutput:
        """Greedy tokens for a left-padded generation batch `enc` (a family's `encode_for_generation`).

        A row stops at an id of `eos_ids` (kept), when `stop_row(its generated ids)` is true (checked after
        every token, like a `StoppingCriteria`), or after `max_new_tokens`. `min_new_tokens` forbids the end
        tokens before that many tokens (as `generate` does). `streamer` gets `put(ids)` / `end()` like
        `generate`'s (batch 1).
        """
        import torch

        with torch.inference_mode():
            self._prepare()
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

        core = self.model.model
        patches = grid.prod(-1).tolist()  # patches per image
        feats, offset = [], 0
        for i in range(0, len(patches), self.vision_batch):
            n = sum(patches[i: i + self.vision_batch])
            if self.fast_vision is not None:
                feats.append(self.fast_vision(pixels[offset: offset + n], grid[i: i + self.vision_batch]))
            else:
                feats.extend(core.get_image_features(pixels[offset: offset + n], grid[i: i + self.vision_batch]).pooler_output)
            offset += n
        return torch.cat(feats, dim=0)  # [image tokens of all images, D]

    def _generate(self, enc: dict[str, Any], max_new: int, eos_ids: list[int], pad_id: int, min_new: int,
                  stop_row: Callable[[list[int]], bool] | None, streamer: Any) -> GreedyOutput:
        import torch
        import torch.nn.functional as F

        ids = enc["input_ids"]
        batch, prompt_len = ids.shape
        attn = enc.get("attention_mask")
        attn = torch.ones_like(ids) if attn is None else attn
        x, positions = self._prompt_embeddings(enc)  # [B, T, D], [3, B, T]
        rotary = self.model.model.language_model.rotary_emb
        cos, sin = rotary(x, positions)  # [B, T, hd] each
        sin = _signed(sin)
        # Decode step s sits at the prompt's last position + 1 + s on every axis (generate's rule).
        steps = torch.arange(1, max_new + 1, device=ids.device)
        dec_cos, dec_sin = rotary(x, positions[:, :, -1:] + steps)  # [B, N, hd]
        dec_sin = _signed(dec_sin)

        total = prompt_len + max_new
        shape = (batch, self.kv_heads, total, self.head_dim)
        cache = [(x.new_zeros(shape), x.new_zeros(shape)) for _ in self.layers]  # [B, KV, T + N, hd] each
        padded = bool((attn == 0).any())
        valid = torch.ones((batch, total), dtype=torch.bool, device=ids.device)
        valid[:, :prompt_len] = attn.bool()
        mask = None
        if padded:  # causal and padding; a padding query sees itself (no empty rows, no NaN)
            causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=ids.device).tril()
            mask = causal & valid[:, None, None, :prompt_len]
            mask |= torch.eye(prompt_len, dtype=torch.bool, device=ids.device)
        if padded and self.group_prefill:  # rows of similar length together: no prefill of the padding
            from texocr.models.compact_prefill import grouped_prefill

            h = grouped_prefill(self._forward, x, cos.unsqueeze(1), sin.unsqueeze(1), cache, mask, attn)  # [B, 1, D]
        else:
            h = self._forward(x, cos.unsqueeze(1), sin.unsqueeze(1), cache, 0, mask)  # [B, T, D]

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
            logits = self.lm_head(_rms(h[:, -1], self.norm, self.eps)).float()  # [b, V]
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

    def _forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 cache: list[tuple[torch.Tensor, torch.Tensor]], start: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The text tower on `x` [B, T, D] whose tokens go to cache slots start..start+T-1; cos/sin [B, 1, T, hd]
        (sin signed, see `_rotate`)."""
        import torch.nn.functional as F

        b, t, _ = x.shape
        hd, h_q, h_kv = self.head_dim, self.heads, self.kv_heads
        group = h_q // h_kv
        end = start + t
        for layer, (kc, vc) in zip(self.layers, cache):
            qkv = layer.qkv(_rms(x, layer.ln1, layer.eps1)).view(b, t, -1, hd).transpose(1, 2)  # [B, H+2KV, T, hd]
            qk = _rotate(qkv[:, : h_q + h_kv], cos, sin)
            q = qk[:, :h_q]  # [B, H, T, hd]
            kc[:, :, start:end] = qk[:, h_q:]
            vc[:, :, start:end] = qkv[:, h_q + h_kv:]
            keys, values = kc[:, :, :end], vc[:, :, :end]  # [B, KV, L, hd]
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
            gate, up = layer.gate_up(_rms(x, layer.ln2, layer.eps2)).chunk(2, dim=-1)  # [B, T, F] each
            x = x + layer.down(F.silu(gate) * up)
        return x


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
