"""Benchmark texocr.data.mutate on the real corpus: speed, validity, distinctness, lengths, TeX render rate.

    .venv/bin/python bench/mutate.py                 # ~1 minute on 2 cores (TeX renders 2,000 formulas)
    .venv/bin/python bench/mutate.py --render 0      # without TeX

Corpus: the first 6,000 formulas of ../shared/data/im2latex-val-formulas. Prints a markdown report
(recorded in bench/mutate.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import time
from collections import Counter
from pathlib import Path

from texocr.data.mutate import Mutator, columns_ok
from texocr.latex import is_valid, normalize, tokenize

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "im2latex-val-formulas" / "labels.jsonl"


def quantiles(xs: list[int]) -> str:
    xs = sorted(xs)
    q = lambda p: xs[round(p * (len(xs) - 1))]
    return f"{q(0.1)} / {q(0.5)} / {q(0.9)} / {xs[-1]}"


def render_rate(formulas: list[str], font: str, dpi: int) -> tuple[float, Counter, list[str]]:
    from texocr.data.render import get_renderer

    r = get_renderer("tex")
    ok, reasons, failed = 0, Counter(), []
    for k in range(0, len(formulas), 250):
        batch = formulas[k:k + 250]
        for f, res in zip(batch, r.render_detailed(batch, font=font, dpi=dpi)):
            if res.image is not None:
                ok += 1
            else:
                reasons[res.reason or "failed"] += 1
                failed.append(f)
    return ok / len(formulas), reasons, failed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", type=int, default=6000)
    p.add_argument("--n", type=int, default=6000, help="mutations for speed, validity, distinctness, lengths")
    p.add_argument("--render", type=int, default=1000, help="mutations and real formulas rendered with TeX")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = [json.loads(line)["latex"] for line in REAL.read_text(encoding="utf-8").splitlines()[:args.corpus]]
    t0 = time.perf_counter()
    m = Mutator(rows)
    build = time.perf_counter() - t0
    r = random.Random(args.seed)
    sources = [rows[r.randrange(len(rows))] for _ in range(args.n)]
    t0 = time.perf_counter()
    muts = [m.mutate(s, random.Random(f"{args.seed}:{i}")) for i, s in enumerate(sources)]
    dt = time.perf_counter() - t0
    corpus = {normalize(f) for f in rows}
    valid = sum(is_valid(x) and normalize(x) == x and columns_ok(tokenize(x)) for x in muts)
    same = sum(x == normalize(s) for x, s in zip(muts, sources))
    fresh = sum(x not in corpus for x in muts)
    sim = sum(difflib.SequenceMatcher(None, tokenize(normalize(s)), tokenize(x), autojunk=False).ratio()
              for s, x in zip(sources[:1000], muts[:1000])) / min(1000, len(muts))
    print(f"corpus: {len(rows)} formulas ({len(m.formulas)} valid and distinct after normalize); "
          f"analysis {build:.1f} s")
    print(f"\n| | value |\n|---|---|\n| mutations | {len(muts)} |\n| rate (one core) | {len(muts) / dt:.0f} /s |")
    print(f"| valid + normalized + columns | {valid / len(muts):.2%} |\n| equal to their source | {same} |")
    print(f"| distinct | {len(set(muts)) / len(muts):.2%} |\n| not in the corpus | {fresh / len(muts):.2%} |")
    print(f"| token similarity to the source (difflib ratio, mean of 1,000) | {sim:.2f} |")
    pairs = [(tokenize(normalize(s)), tokenize(x)) for s, x in zip(sources, muts)]
    first5 = sum(a[:5] == b[:5] for a, b in pairs) / len(pairs)
    diff_at = sorted(next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
                     for a, b in pairs)
    print(f"| first 5 tokens equal to the source's | {first5:.0%} |")
    print(f"| first differing token (median, 0-based) | {diff_at[len(diff_at) // 2]} |")
    print("\ntokens, p10 / median / p90 / max:\n")
    print(f"| | p10 / median / p90 / max |\n|---|---|\n| corpus ({len(rows)}) | "
          f"{quantiles([len(tokenize(normalize(f))) for f in rows])} |")
    print(f"| mutations ({len(muts)}) | {quantiles([len(tokenize(x)) for x in muts])} |")
    if args.render:
        k = args.render
        print(f"\nTeX render (latex + dvipng, Computer Modern, 150 dpi), {k} mutations vs their {k} sources:\n")
        print("| | rendered | failures |\n|---|---|---|")
        for name, fs in (("real (sources)", sources[:k]), ("mutations", muts[:k])):
            t0 = time.perf_counter()
            rate, reasons, failed = render_rate(fs, "cm", 150)
            print(f"| {name} | {rate:.1%} ({time.perf_counter() - t0:.0f} s) | {dict(reasons)} |")
            for f in failed[:3]:
                print(f"|  | e.g. | `{f[:110]}` |")
    print("\nexamples (source -> mutation):\n")
    for s, x in list(zip(sources, muts))[:10]:
        print(f"- `{normalize(s)}`\n  -> `{x}`")


if __name__ == "__main__":
    main()
