"""The metrics LaTeX-OCR papers publish, as pure functions `(preds, refs) -> number`.

    m = compute_metrics(preds, refs, renderer=get_renderer())   # the metrics.json keys (timing added by evaluate)

Every text metric works on the token sequence of `texocr.latex.normalize(s)` (the im2latex space-separated
token convention), so `x^2` and `x^{2}`, or `\\frac12` and `\\frac{1}{2}`, are the same prediction everywhere:

- `exact_match`   fraction of predictions whose normalized token sequence equals the reference's;
- `bleu4`         corpus BLEU-4 over those tokens (sacrebleu, `tokenize="none"`, no smoothing: multi-bleu.perl,
                  as im2latex papers report it), as a fraction in [0, 1];
- `edit_score`    1 - sum(token Levenshtein) / sum(max(len(pred), len(ref)))  (im2latex "edit distance" score);
- `cer`           character error rate: sum(Levenshtein over characters) / sum(len(ref)), on the normalized
                  strings with the spaces removed; clipped at 1 (a prediction far longer than its reference
                  would otherwise push it above 1);
- `exprate_le1/2` CROHME expression rate allowing at most 1 / 2 token edits (exact match is `<= 0`);
- `valid_rate`    fraction of predictions that `texocr.latex.is_valid` accepts (syntactically sound LaTeX);
- `image_match`   im2latex "image exact match (-ws)": prediction and reference rendered, binarized, cropped to ink,
                  whitespace-only columns dropped, compared pixel by pixel (a tiny tolerance for antialiasing).

Empty inputs give 0.0 (never NaN); `preds` and `refs` of different lengths are a ValueError.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

from texocr.latex import is_valid, normalize

METRIC_KEYS = ("n", "exact_match", "bleu4", "edit_score", "cer", "exprate_le1", "exprate_le2", "valid_rate")
"""Keys of `compute_metrics` without a renderer; `image_match` is added with one, timing keys by evaluate."""


class Renderer(Protocol):
    def render_batch(self, formulas: list[str]) -> list[Any]: ...  # PIL.Image or None per formula


_TOKENS: dict[str, tuple[str, ...]] = {}
"""`tokens` of the strings seen so far: every metric, the per-record distances and the confusions of one evaluation
read each string's normalization (a LaTeX parse, ~1 ms) once instead of four or five times."""
_CACHE_LIMIT = 1 << 18


def tokens(s: str) -> list[str]:
    """The normalized token sequence every metric compares (`normalize(s).split()`)."""
    s = s or ""
    cached = _TOKENS.get(s)
    if cached is None:
        if len(_TOKENS) >= _CACHE_LIMIT:
            _TOKENS.clear()
        cached = _TOKENS[s] = _split_normalized(s)
    return list(cached)


def metric_pool(work: int, workers: int | None = None) -> contextlib.AbstractContextManager[Executor | None]:
    """A process pool for `work` units of metric work (a normalization is one unit, ~1 ms on one core; BLEU
    counts eight pairs per unit), or a null context (None) below 2,000 units, where spawning processes costs
    more than it saves. By default one process per core beyond the first, one per thousand units, from two on.
    Spawned, not forked: a fork of a process holding a CUDA context or threads is unsafe; the workers import
    only the LaTeX core and sacrebleu."""
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        workers = min(cores - 1, work // 1000)
    if workers < 2 or work < 2000:
        return contextlib.nullcontext(None)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _unknown(strings: Sequence[str]) -> list[str]:
    """The distinct strings of `strings` that `tokens` has not normalized yet."""
    return [s for s in dict.fromkeys(x or "" for x in strings) if s not in _TOKENS]


def prepare_tokens(strings: Sequence[str], workers: int | None = None, *, pool: Executor | None = None) -> None:
    """Normalize the distinct strings of `strings` not yet known to `tokens`, in `pool` (default: a `metric_pool`
    of `workers`, when there are thousands): an evaluation of tens of thousands of formulas would otherwise spend
    more time here than a GPU spends reading them (bench/infer.md)."""
    todo = _unknown(strings)
    with contextlib.nullcontext(pool) if pool is not None else metric_pool(len(todo), workers) as use:
        if use is None:
            for s in todo:
                tokens(s)
        else:
            _TOKENS.update(zip(todo, use.map(_split_normalized, todo, chunksize=max(1, len(todo) // 64))))


def _split_normalized(s: str) -> tuple[str, ...]:
    return tuple(normalize(s).split())


def _check(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")


def _pairs(preds: Sequence[str], refs: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    _check(preds, refs)
    return [(tokens(p), tokens(r)) for p, r in zip(preds, refs)]


def token_distance(pred: str | list[str], ref: str | list[str]) -> int:
    """Levenshtein distance between two token sequences (strings are normalized and tokenized first)."""
    from rapidfuzz.distance import Levenshtein

    a = tokens(pred) if isinstance(pred, str) else pred
    b = tokens(ref) if isinstance(ref, str) else ref
    return int(Levenshtein.distance(a, b))


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Fraction of predictions whose normalized tokens equal the reference's."""
    pairs = _pairs(preds, refs)
    return sum(p == r for p, r in pairs) / len(pairs) if pairs else 0.0


def expression_rate(preds: Sequence[str], refs: Sequence[str], max_errors: int = 0) -> float:
    """CROHME ExpRate: fraction of predictions within `max_errors` token edits of the reference."""
    pairs = _pairs(preds, refs)
    return sum(token_distance(p, r) <= max_errors for p, r in pairs) / len(pairs) if pairs else 0.0


def bleu4(preds: Sequence[str], refs: Sequence[str], *, pool: Executor | None = None) -> float:
    """Corpus BLEU-4 over normalized LaTeX tokens, in [0, 1] (sacrebleu, no smoothing, no retokenization).

    With `pool` (`metric_pool`), sacrebleu's sufficient statistics (clipped n-gram matches and totals per order,
    lengths) are counted over slices of the pairs in its processes and summed: sacrebleu's n-gram counting is
    pure Python, ~0.25 ms per pair on one core. The score is sacrebleu's `compute_bleu` of the sums, which is
    what `corpus_bleu` computes from the same sums."""
    from sacrebleu.metrics.bleu import BLEU

    pairs = _pairs(preds, refs)
    if not pairs or not any(r for _, r in pairs):
        return 0.0
    lines = [(" ".join(p), " ".join(r)) for p, r in pairs]
    if pool is None:
        parts = [_bleu_stats(lines)]
    else:
        step = max(500, -(-len(lines) // 32))
        parts = list(pool.map(_bleu_stats, [lines[i: i + step] for i in range(0, len(lines), step)]))
    correct = [sum(p[0][k] for p in parts) for k in range(4)]
    total = [sum(p[1][k] for p in parts) for k in range(4)]
    score = BLEU.compute_bleu(correct, total, sum(p[2] for p in parts), sum(p[3] for p in parts),
                              smooth_method="none")
    return score.score / 100.0


def _bleu_stats(lines: list[tuple[str, str]]) -> tuple[list[int], list[int], int, int]:
    """sacrebleu's sufficient statistics of (hypothesis, reference) lines: matches and totals per n-gram order,
    hypothesis and reference lengths."""
    import sacrebleu

    s = sacrebleu.corpus_bleu([h for h, _ in lines], [[r for _, r in lines]], tokenize="none",
                              smooth_method="none", force=True)
    return list(s.counts), list(s.totals), int(s.sys_len), int(s.ref_len)


def edit_score(preds: Sequence[str], refs: Sequence[str]) -> float:
    """1 - sum(token Levenshtein) / sum(max(len(pred), len(ref))); 1.0 when every pair is empty."""
    pairs = _pairs(preds, refs)
    total = sum(max(len(p), len(r)) for p, r in pairs)
    if not pairs:
        return 0.0
    return 1.0 - sum(token_distance(p, r) for p, r in pairs) / total if total else 1.0


def cer(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Character error rate on normalized strings without spaces: sum(lev) / sum(len(ref)), clipped at 1."""
    from rapidfuzz.distance import Levenshtein

    _check(preds, refs)
    hyp = ["".join(tokens(p)) for p in preds]
    ref = ["".join(tokens(r)) for r in refs]
    total = sum(len(r) for r in ref)
    errors = sum(Levenshtein.distance(h, r) for h, r in zip(hyp, ref))
    if total == 0:
        return 0.0 if errors == 0 else 1.0
    return min(1.0, errors / total)


@functools.lru_cache(maxsize=1 << 16)
def valid(s: str) -> bool:
    """`texocr.latex.is_valid`, remembered: the corpus rate and each record ask it of the same predictions."""
    return is_valid(s)


def valid_rate(preds: Sequence[str]) -> float:
    """Fraction of predictions that are syntactically valid LaTeX (`texocr.latex.is_valid`)."""
    return sum(valid(p) for p in preds) / len(preds) if preds else 0.0


# ---------------------------------------------------------------- image match


def _ink(img: Any, threshold: int = 160) -> Any:
    """Binarized ink mask cropped to its bounding box, whitespace-only columns dropped -> bool [H, W'] or None."""
    import numpy as np

    gray = np.asarray(img.convert("L"), dtype=np.uint8)
    mask = gray < threshold  # [H, W] True where there is ink
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    mask = mask[rows[0]: rows[-1] + 1]
    return mask[:, mask.any(axis=0)]  # "-ws": spacing differences between symbols do not count


def images_match(a: Any, b: Any, *, tolerance: float = 0.01) -> bool:
    """Do two renderings show the same formula? Binarize, crop to ink, drop blank columns, compare pixels.

    Shapes must agree within one pixel (rounding in the renderer); then at most `tolerance` of the ink
    pixels (of the larger image) may differ. Two blank images match; a blank and an inked one do not.
    """
    import numpy as np

    ma, mb = _ink(a), _ink(b)
    if ma is None or mb is None:
        return ma is None and mb is None
    if abs(ma.shape[0] - mb.shape[0]) > 1 or abs(ma.shape[1] - mb.shape[1]) > 1:
        return False
    h, w = max(ma.shape[0], mb.shape[0]), max(ma.shape[1], mb.shape[1])
    ma = np.pad(ma, ((0, h - ma.shape[0]), (0, w - ma.shape[1])))  # a one-pixel difference still counts
    mb = np.pad(mb, ((0, h - mb.shape[0]), (0, w - mb.shape[1])))
    ink = max(int(ma.sum()), int(mb.sum()), 1)
    return int(np.logical_xor(ma, mb).sum()) <= tolerance * ink


def image_match_flags(preds: Sequence[str], refs: Sequence[str], renderer: Renderer) -> list[bool | None]:
    """Per pair: True/False, or None when the reference itself does not render (the pair cannot be judged).

    A prediction that does not render is a mismatch. Everything is rendered in one batch.
    """
    _check(preds, refs)
    n = len(preds)
    images = renderer.render_batch([p or "" for p in preds] + list(refs)) if n else []
    flags: list[bool | None] = []
    for i in range(n):
        pred_img, ref_img = images[i], images[n + i]
        if ref_img is None:
            flags.append(None)
        elif pred_img is None or not (preds[i] or "").strip():
            flags.append(False)
        else:
            flags.append(images_match(pred_img, ref_img))
    return flags


def image_match(preds: Sequence[str], refs: Sequence[str], renderer: Renderer) -> float:
    """Fraction of pairs whose renderings match, over the pairs whose reference renders."""
    judged = [f for f in image_match_flags(preds, refs, renderer) if f is not None]
    return sum(judged) / len(judged) if judged else 0.0


# ---------------------------------------------------------------- corpus summary


def token_confusions(preds: Sequence[str], refs: Sequence[str], top: int = 20) -> list[tuple[str, str, int]]:
    """The most frequent `(reference token, predicted token, count)` edits of the Levenshtein alignment.

    A deletion (reference token missing from the prediction) has predicted token `""`; an insertion has
    reference token `""`.
    """
    from rapidfuzz.distance import Levenshtein

    counts: Counter[tuple[str, str]] = Counter()
    for p, r in _pairs(preds, refs):
        for op in Levenshtein.editops(r, p):
            if op.tag == "replace":
                counts[(r[op.src_pos], p[op.dest_pos])] += 1
            elif op.tag == "delete":
                counts[(r[op.src_pos], "")] += 1
            else:
                counts[("", p[op.dest_pos])] += 1
    return [(a, b, c) for (a, b), c in counts.most_common(top)]


def compute_metrics(preds: Sequence[str], refs: Sequence[str], *, renderer: Renderer | None = None) -> dict[str, Any]:
    """All corpus metrics as the DESIGN.md `metrics.json` keys (fractions in [0, 1]; `n` the pair count).

    `image_match` is included only when `renderer` is given. Tokenization happens once per string.
    """
    from rapidfuzz.distance import Levenshtein

    todo = _unknown([*preds, *refs])
    with metric_pool(len(todo) + len(preds) // 8) as pool:
        prepare_tokens(todo, pool=pool)
        bleu = bleu4(preds, refs, pool=pool)
    pairs = _pairs(preds, refs)
    n = len(pairs)
    dists = [int(Levenshtein.distance(p, r)) for p, r in pairs]
    total_len = sum(max(len(p), len(r)) for p, r in pairs)
    out: dict[str, Any] = {
        "n": n,
        "exact_match": sum(d == 0 for d in dists) / n if n else 0.0,
        "bleu4": bleu,
        "edit_score": (1.0 - sum(dists) / total_len if total_len else 1.0) if n else 0.0,
        "cer": cer(preds, refs),
        "exprate_le1": sum(d <= 1 for d in dists) / n if n else 0.0,
        "exprate_le2": sum(d <= 2 for d in dists) / n if n else 0.0,
        "valid_rate": valid_rate(preds),
    }
    if renderer is not None:
        out["image_match"] = image_match(preds, refs, renderer)
    for key, value in out.items():  # a contract: no NaN/inf ever reaches metrics.json
        assert key == "n" or math.isfinite(value), (key, value)
    return out
