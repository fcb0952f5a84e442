"""`texocr data stats` and `texocr data overlap`: look at a data set before training on it.

    texocr data stats ../shared/data/handwritten-small --split val
    texocr data overlap data/train data/test --json

`stats`: sample count, skipped rows per reason, image width/height (min/median/max), label length in
tokens (with a text histogram), token vocabulary size and the most frequent tokens. A text-only data set
(labels without images, e.g. a formula list) gets its label statistics only.
`overlap`: how many TEST labels also appear in TRAIN, compared exactly and after `texocr.latex.normalize`
(so `x^2` and `x^{2}` count as the same formula): a leak check before trusting a test score.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from typing import Any

from texocr.latex import normalize, tokenize


def _summary(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": round(statistics.fmean(values), 2)}


def histogram(values: list[int], bins: int = 10) -> list[dict[str, int]]:
    """Equal-width integer bins over [min, max]: `[{"lo", "hi", "count"}, ...]` (inclusive bounds)."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))  # ceil: every value falls in one of at most `bins` bins
    counts = Counter((v - lo) // width for v in values)
    n_bins = (hi - lo) // width + 1
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width - 1, "count": counts.get(i, 0)} for i in range(n_bins)]


def compute_stats(spec: str, *, split: str | None = None, limit: int | None = None, top: int = 20,
                  skipped_out: str | None = None) -> dict[str, Any]:
    """Statistics of one data source as a JSON-ready dict; `skipped_out` also writes its skipped.jsonl."""
    from texocr.data.sources import open_source, skip_counts, write_skipped

    src = open_source(spec, split=split)
    quiet = _Quiet()  # the report below carries the skip counts; the source's own warning would repeat them
    widths: list[int] = []
    heights: list[int] = []
    labels: list[str] = []
    with quiet:
        for sample in islice(src, limit):
            widths.append(sample.image.width)
            heights.append(sample.image.height)
            labels.append(sample.latex)
        skipped = list(getattr(src, "skipped", []))  # (a synthetic source may keep no such list)
        text_only = not labels and bool(skipped) and all(s.reason == "missing_image" for s in skipped)
        if text_only:  # a formula list: label statistics are still worth having
            labels = [latex for _, latex in islice(src.labels(), limit)]
            skipped = list(src.skipped)
    if skipped_out:
        write_skipped(skipped, skipped_out)
    tokens = [tokenize(lab) for lab in labels]
    vocab = Counter(t for toks in tokens for t in toks)
    lengths = [len(toks) for toks in tokens]
    return {
        "data": spec,
        "split": split,
        "samples": len(labels),
        "text_only": text_only,
        "skipped": len(skipped),
        "skipped_by_reason": skip_counts(skipped),
        "image_width": _summary(widths),
        "image_height": _summary(heights),
        "label_tokens": _summary(lengths),
        "label_tokens_histogram": histogram(lengths),
        "vocab_size": len(vocab),
        "top_tokens": [[tok, n] for tok, n in vocab.most_common(top)],
    }


class _Quiet:
    """Silence the `texocr.data` logger's warnings inside a `with` block."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("texocr.data")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def _bar_chart(hist: list[dict[str, int]], width: int = 40) -> list[str]:
    peak = max((b["count"] for b in hist), default=0) or 1
    span = len(str(hist[-1]["hi"])) if hist else 1
    return [f"  {b['lo']:>{span}}-{b['hi']:<{span}} {'█' * round(b['count'] / peak * width):<{width}} {b['count']}"
            for b in hist]


def format_stats(st: dict[str, Any]) -> str:
    def fmt(s: dict[str, float] | None) -> str:
        return "-" if s is None else f"min {s['min']}  median {s['median']:g}  max {s['max']}"

    lines = [(f"{st['data']}{' [' + st['split'] + ']' if st['split'] else ''}: {st['samples']} samples, "
             f"{st['skipped']} skipped")]
    if st["skipped"]:
        lines.append("skipped: " + ", ".join(f"{r} {n}" for r, n in st["skipped_by_reason"].items()))
    if st["text_only"]:
        lines.append("images: none (text-only data set): label statistics only")
    else:
        lines += [f"image width:  {fmt(st['image_width'])}", f"image height: {fmt(st['image_height'])}"]
    if st["label_tokens"]:
        lines.append(f"label length (tokens): {fmt(st['label_tokens'])}  mean {st['label_tokens']['mean']:g}")
        lines += _bar_chart(st["label_tokens_histogram"])
    lines.append(f"vocabulary: {st['vocab_size']} distinct tokens")
    if st["top_tokens"]:
        lines.append("top tokens: " + "  ".join(f"{tok} ({n})" for tok, n in st["top_tokens"]))
    return "\n".join(lines)


def _safe_normalize(latex: str) -> str:
    try:
        return normalize(latex)
    except Exception:  # noqa: BLE001 - one odd label must not stop an overlap report; compare its tokens
        return " ".join(tokenize(latex))


def _labels(src: Any) -> Iterator[tuple[str, str]]:
    """`(id, latex)` pairs; sources without a labels-only path (synthetic) are iterated in full."""
    return src.labels() if hasattr(src, "labels") else ((s.id, s.latex) for s in src)


def compute_overlap(train: str, test: str, *, train_split: str | None = None, test_split: str | None = None,
                    show: int = 10) -> dict[str, Any]:
    """How many TEST rows have a label that also appears in TRAIN, exactly and after normalization."""
    from texocr.data.sources import open_source

    train_labels = [lab for _, lab in _labels(open_source(train, split=train_split))]
    test_rows = list(_labels(open_source(test, split=test_split)))
    exact_set = set(train_labels)
    norm_set = {_safe_normalize(lab) for lab in train_labels}
    exact_hits = [(rid, lab) for rid, lab in test_rows if lab in exact_set]
    norm_hits = [(rid, lab) for rid, lab in test_rows if _safe_normalize(lab) in norm_set]
    n = len(test_rows)
    return {
        "train": train, "test": test, "train_labels": len(train_labels), "test_labels": n,
        "exact": {"count": len(exact_hits), "fraction": round(len(exact_hits) / n, 4) if n else 0.0},
        "normalized": {"count": len(norm_hits), "fraction": round(len(norm_hits) / n, 4) if n else 0.0},
        "examples": [{"id": rid, "latex": lab, "exact": lab in exact_set} for rid, lab in norm_hits[:show]],
    }


def format_overlap(ov: dict[str, Any]) -> str:
    lines = [f"train {ov['train']}: {ov['train_labels']} labels; test {ov['test']}: {ov['test_labels']} labels"]
    for kind in ("exact", "normalized"):
        lines.append(f"{kind + ':':<12}{ov[kind]['count']} of {ov['test_labels']} test labels appear in train "
                     f"({ov[kind]['fraction']:.2%})")
    if ov["examples"]:
        lines.append("examples:")
        lines += [f"  {e['id']}: {e['latex']}{'' if e['exact'] else '   (after normalization)'}" for e in ov["examples"]]
    return "\n".join(lines)


def stats_main(args: argparse.Namespace) -> int:
    st = compute_stats(args.data, split=args.split, limit=args.limit, skipped_out=args.skipped)
    print(json.dumps(st, ensure_ascii=False, indent=2) if args.json else format_stats(st))
    return 0


def overlap_main(args: argparse.Namespace) -> int:
    ov = compute_overlap(args.train, args.test, train_split=args.train_split,
                         test_split=args.test_split, show=args.show)
    print(json.dumps(ov, ensure_ascii=False, indent=2) if args.json else format_overlap(ov))
    return 0
