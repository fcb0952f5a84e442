"""Benchmark the synthetic engine: renderer speed, generator coverage and lengths, real-formula render rate.

Run on a CPU machine (TeX optional; the pip renderer needs the `render` extra):

    .venv/bin/python bench/render.py                       # everything; ~2-4 minutes on 2 cores
    .venv/bin/python bench/render.py --real-limit 1000     # fewer real formulas through TeX

Prints a markdown report (record it in bench/render.md). Speeds are per core: formulas divided by the CPU
seconds of this process and its children (latex, dvipng), so a busy shared machine does not distort them;
wall-clock rates are shown beside them. Real formulas come from ../shared/data/im2latex-val-formulas when
present (skipped otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import time
from collections import Counter
from pathlib import Path

from texocr.data.formulas import CONSTRUCTS, FormulaGenerator
from texocr.data.render import available_renderers, get_renderer
from texocr.latex import normalize

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "im2latex-val-formulas" / "labels.jsonl"


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def speed(kind: str, formulas: list[str], batch: int, dpi: int) -> dict:
    r = get_renderer(kind)
    r.render_batch(formulas[:4], dpi=dpi)  # warm caches (fonts, format file)
    c0, t0 = cpu_seconds(), time.perf_counter()
    for s in range(0, len(formulas), batch):
        r.render_batch(formulas[s:s + batch], dpi=dpi)
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    return {"n": len(formulas), "per_core": len(formulas) / cpu, "wall": len(formulas) / wall,
            "failures": dict(r.failures)}


def success(kind: str, formulas: list[str], batch: int) -> dict:
    r = get_renderer(kind)
    examples: dict[str, str] = {}
    for s in range(0, len(formulas), batch):
        chunk = formulas[s:s + batch]
        for f, res in zip(chunk, r.render_detailed(chunk, dpi=100)):
            if res.reason:
                examples.setdefault(res.reason, f"{res.detail[:60]} | {f[:70]}")
    return {"n": len(formulas), "ok": r.rendered / len(formulas), "failures": dict(r.failures),
            "examples": examples}


def coverage(formulas: list[str]) -> dict[str, float]:
    return {k: sum(bool(re.search(p, f)) for f in formulas) / len(formulas) for k, p in CONSTRUCTS.items()}


def histogram(formulas: list[str]) -> Counter:
    return Counter(min(len(normalize(f).split()) // 10, 20) for f in formulas)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="generated formulas for coverage/lengths")
    ap.add_argument("--speed-n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--real-limit", type=int, default=0, help="real formulas through TeX (0 = all)")
    ap.add_argument("--pip-real", type=int, default=1000)
    args = ap.parse_args()

    gen = FormulaGenerator(seed=0)
    generated = [gen.formula(i) for i in range(args.n)]
    real = [json.loads(line)["latex"] for line in REAL.read_text().splitlines()] if REAL.exists() else []
    print(f"# bench/render.py — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, renderers: {', '.join(available_renderers())}\n")

    t0 = time.perf_counter()
    [gen.formula(i) for i in range(args.n, 2 * args.n)]
    print(f"generator: {args.n / (time.perf_counter() - t0):.0f} formulas/s (one core)\n")

    print("## Renderer speed (generated formulas, dpi 150)\n\n| renderer | batch | formulas | per core/s | wall/s |"
          "\n|---|---|---|---|---|")
    for kind in available_renderers():
        n = args.speed_n if kind == "tex" else min(args.speed_n, 300)
        pool = generated if n <= len(generated) else [gen.formula(i) for i in range(n)]  # --n may be smaller
        s = speed(kind, pool[:n], args.batch if kind == "tex" else 1, 150)
        print(f"| {kind} | {args.batch if kind == 'tex' else 1} | {s['n']} | {s['per_core']:.0f} | {s['wall']:.0f} |")

    print("\n## Constructs: fraction of formulas containing each\n\n| construct | generated | real im2latex |"
          "\n|---|---|---|")
    cg, cr = coverage(generated), coverage(real) if real else {}
    for k in CONSTRUCTS:
        print(f"| {k} | {cg[k]:.3f} | {cr.get(k, float('nan')):.3f} |")

    print("\n## Token lengths (normalized), bins of 10 tokens\n\n| tokens | generated | real |\n|---|---|---|")
    hg, hr = histogram(generated), histogram(real) if real else Counter()
    for b in range(21):
        label = f"{b * 10}-{b * 10 + 9}" if b < 20 else "200+"
        print(f"| {label} | {hg[b] / len(generated):.3f} | {hr[b] / max(1, len(real)):.3f} |")

    if real:
        print("\n## Real im2latex validation formulas rendered without error\n\n| renderer | formulas | rendered |"
              " failures | examples |\n|---|---|---|---|---|")
        for kind in available_renderers():
            n = (args.real_limit or len(real)) if kind == "tex" else args.pip_real
            sample = real if n >= len(real) else random.Random(0).sample(real, n)
            s = success(kind, sample, args.batch)
            ex = "; ".join(f"{k}: `{v}`" for k, v in s["examples"].items())
            print(f"| {kind} | {len(sample)} | {s['ok']:.4f} | {s['failures']} | {ex} |")


if __name__ == "__main__":
    main()
