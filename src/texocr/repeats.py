"""Loops in generated output: `find_repeat` on a list of ids, and `RepeatTracker`, the same test kept on a device.

    find_repeat(ids)                    # (start, n) if ids end in a block of n ids repeated back to back, else None
    tracker = RepeatTracker(batch, device)
    looping = tracker.push(new_ids)     # [B] bool: find_repeat(ids so far) is not None, per row, no host sync

Why two: the CPU decoding loop checks a row's ids after every token in Python (cheap next to a CPU step); a
GPU step takes microseconds, and reading ids back to the host each step would cost more than the step. The
tracker keeps, per row and per period n, the length of the run of positions i (newest first) with
ids[i] == ids[i - n]; find_repeat's test "the last `need(n)` ids are periodic with period n" is exactly
"that run is at least need(n) - n long", so both say the same thing at every step (tests/test_repeats.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RepeatRule:
    """What counts as a loop: a block of at most `max_ngram` ids, repeated `max(min_repeats, ceil(min_span / n))`
    times back to back at the end of the output (so a single id must repeat `min_span` times)."""

    max_ngram: int = 48
    min_repeats: int = 3
    min_span: int = 32

    def need(self, n: int) -> int:
        """Ids the periodic tail must span for period `n`."""
        return max(self.min_repeats, math.ceil(self.min_span / n)) * n


def find_repeat(ids: Sequence[int], *, max_ngram: int = 48, min_repeats: int = 3,
                min_span: int = 32) -> tuple[int, int] | None:
    """`(start, n)` if `ids` ends in a loop of period `n` (a block repeated back to back), else None.

    The periodic tail `ids[start:]` must span at least `max(min_repeats, ceil(min_span / n))` copies of the
    block, so a single token must repeat `min_span` times but a 16-token block only `min_repeats` times.
    `start` is the earliest position from which the rest is periodic, so `ids[:start + n]` keeps exactly one
    copy, aligned where the loop began (not wherever generation happened to stop inside it).
    """
    rule = RepeatRule(max_ngram, min_repeats, min_span)
    length = len(ids)
    for n in range(1, min(max_ngram, length // min_repeats) + 1):
        need = rule.need(n)
        if need > length:
            continue
        start = length - n
        while start > 0 and ids[start - 1] == ids[start - 1 + n]:
            start -= 1
        if length - start >= need:
            return start, n
    return None


class RepeatTracker:
    """`find_repeat(row) is not None` for every row of a batch, updated one id per row per step on the device.

    State (all on `device`, updated in place so a CUDA graph can capture `push`):
      recent [B, P]  the last P ids of each row, newest first (-1 where there is none yet); P = max_ngram
      runs   [B, P]  runs[:, n - 1]: consecutive newest positions i with ids[i] == ids[i - n]
      limit  [P]     need(n) - n: the run that makes period n a loop
    """

    def __init__(self, batch: int, device: torch.device | str, rule: RepeatRule = RepeatRule()) -> None:
        import torch

        periods = rule.max_ngram
        self.recent = torch.full((batch, periods), -1, dtype=torch.long, device=device)
        self.runs = torch.zeros((batch, periods), dtype=torch.int32, device=device)
        self.limit = torch.tensor([rule.need(n) - n for n in range(1, periods + 1)], dtype=torch.int32,
                                  device=device)

    def reset(self) -> None:
        self.recent.fill_(-1)
        self.runs.zero_()

    def push(self, ids: torch.Tensor) -> torch.Tensor:
        """Append `ids` [B] (one new id per row); [B] bool: the row's ids so far end in a loop."""
        import torch

        same = self.recent == ids[:, None]  # [B, P]: new id equals the id n steps back
        self.runs.copy_(torch.where(same, self.runs + 1, torch.zeros_like(self.runs)))
        self.recent.copy_(torch.cat([ids[:, None], self.recent[:, :-1]], dim=1))
        return (self.runs >= self.limit).any(dim=1)
