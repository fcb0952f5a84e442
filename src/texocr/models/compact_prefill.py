"""Prefill of a left-padded batch in groups of similar prompt length (texocr's compact model on a CPU).

    h = grouped_prefill(decoder._forward, x, cos, sin, cache, mask, attention_mask)   # [B, 1, D]

Why: a batch's prompts are left-padded to its longest, and a prompt is mostly image tokens, so in a batch of
32 formulas of different sizes the text tower's prefill ran on ~3x more (padding) positions than real ones
(589 published im2latex images at glyph height 16: 8,096 positions for 2,733 tokens in two batches of 32;
bench/compact.md). Here the rows are sorted by prompt length and split into groups (`groups`: fewest
positions plus a cost per call); each group runs the text tower on its own rows and positions only, into a
small cache that is then copied into the batch's cache at the same slots. The batch's other slots stay zero
and masked, as padding, so decoding continues exactly as after one padded prefill. The numbers are those of
the one padded call up to float rounding (other matrix shapes, fewer masked keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GROUP_COST = 48
"""What one more group costs, in prompt positions of one row (a text-tower call's fixed cost on the CPU)."""


def groups(lengths: list[int], group_cost: int = GROUP_COST) -> list[list[int]]:
    """Row indices split into groups (each sorted by length) that minimize sum(rows x longest) + group_cost
    per group: a dynamic program over the rows sorted by length (contiguous runs are optimal)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of rows i..j-1
        for i in range(j):
            cost = best[i] + (j - i) * width + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j > 0:
        out.append(order[cut[j]: j])
        j = cut[j]
    return out[::-1]


def grouped_prefill(forward: Callable[..., torch.Tensor], x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    cache: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """The last position's hidden state of each row [B, 1, D], and `cache` filled, as
    `forward(x, cos, sin, cache, 0, mask)[:, -1:]` would give for the left-padded `x` [B, T, D].

    `forward(x, cos, sin, cache, start, mask)`: the text tower (`GreedyDecoder._forward`); cos/sin [B, 1, T, hd];
    `mask` [B, 1, T, T] (causal, padding; a padding query sees itself); `attention_mask` [B, T] (1 = token)."""
    import torch

    b, t, d = x.shape
    lengths = attention_mask.sum(dim=1).tolist()
    out = x.new_empty(b, 1, d)
    for rows in groups(lengths):
        width = max(lengths[r] for r in rows)
        idx = torch.tensor(rows, device=x.device)
        part = slice(t - width, t)  # left padding: the group's tokens are in the last `width` slots
        sub = [(k.new_zeros(len(rows), k.shape[1], width, k.shape[3]),
                v.new_zeros(len(rows), v.shape[1], width, v.shape[3])) for k, v in cache]
        full = all(lengths[r] == width for r in rows)
        sub_mask = None if full else mask[idx][:, :, part, part]
        h = forward(x[idx, part], cos[idx][:, :, part], sin[idx][:, :, part], sub, 0, sub_mask)  # [g, width, D]
        out[idx] = h[:, -1:]
        for (k, v), (sk, sv) in zip(cache, sub):
            k[idx, :, part] = sk
            v[idx, :, part] = sv
    return out
