"""Benchmark the LaTeX core (texocr.latex): speed on the im2latex validation formulas, and how often
`validate` agrees with real TeX, and how often `repair` makes a broken formula compile.

Run (CPU, a few minutes with --tex; needs `latex` on PATH for --tex):
    .venv/bin/python bench/latex_core.py [--data ../shared/data/im2latex-val-formulas/labels.jsonl] [--tex 200]
Results are recorded in bench/latex_core.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from texocr.latex import (
    LEVELS,
    STRUCTURAL_KINDS,
    detokenize,
    normalize,
    repair,
    tokenize,
    validate,
)

DOC = ("\\documentclass{article}\\usepackage{amsmath,amssymb}\\pagestyle{empty}\\begin{document}\n"
       "$\\displaystyle %s $\n\\end{document}\n")
_STRUCTURAL_TOKENS = {"{", "}", "^", "_", "&"}


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def compiles(formula: str) -> bool:
    """True when LaTeX (no shell escape, no file reads outside the work dir) typesets the formula."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "f.tex").write_text(DOC % detokenize(tokenize(formula)))  # dimensions written whole
        env = dict(os.environ, openin_any="p", openout_any="p", shell_escape="f")
        try:
            r = subprocess.run(["latex", "-no-shell-escape", "-interaction=nonstopmode", "-halt-on-error",
                                "f.tex"], cwd=d, env=env, capture_output=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0


def corrupt(formula: str, rng: random.Random) -> str:
    """Delete one token, preferring structural ones (braces, scripts, \\left/\\right, \\begin/\\end)."""
    tokens = tokenize(formula)
    picks = [i for i, t in enumerate(tokens) if t in _STRUCTURAL_TOKENS
             or t.startswith(("\\left", "\\right", "\\begin", "\\end", "\\frac"))]
    i = rng.choice(picks) if picks and rng.random() < 0.8 else rng.randrange(len(tokens))
    return " ".join(tokens[:i] + tokens[i + 1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/im2latex-val-formulas/labels.jsonl")
    ap.add_argument("--tex", type=int, default=0, help="compile this many clean + corrupted formulas")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with open(args.data) as f:
        formulas = [json.loads(line)["latex"] for line in f]
    n = len(formulas)
    print(f"{n} formulas, {sum(len(f.split()) for f in formulas)} tokens")
    print(f"tokenize             {best_of(lambda: [tokenize(f) for f in formulas]):.3f} s")
    for level in LEVELS:
        print(f"normalize {level:<11}{best_of(lambda level=level: [normalize(f, level) for f in formulas]):.3f} s")
    print(f"validate             {best_of(lambda: [validate(f) for f in formulas]):.3f} s")
    print(f"repair               {best_of(lambda: [repair(f) for f in formulas]):.3f} s")
    same = sum(tokenize(f) == f.split() for f in formulas)
    valid = sum(not validate(f) for f in formulas)
    print(f"tokenize == split: {same}/{n} ({same / n:.4%});  validate finds no issue: {valid}/{n} ({valid / n:.4%})")
    if not args.tex:
        return
    rng = random.Random(args.seed)
    clean = rng.sample(formulas, args.tex)
    broken = [corrupt(f, rng) for f in rng.sample(formulas, args.tex)]
    repaired = [repair(f) for f in broken]
    with ThreadPoolExecutor(2) as pool:
        ok_clean = list(pool.map(compiles, clean))
        ok_broken = list(pool.map(compiles, broken))
        changed = [i for i, (a, b) in enumerate(zip(broken, repaired)) if a != b]
        ok_repaired = dict(zip(changed, pool.map(compiles, [repaired[i] for i in changed])))
    for name, group, ok in (("clean", clean, ok_clean), ("corrupted", broken, ok_broken)):
        says_valid = [not any(i.kind in STRUCTURAL_KINDS for i in validate(f)) for f in group]
        agree = sum(a == b for a, b in zip(says_valid, ok))
        false_ok = sum(a and not b for a, b in zip(says_valid, ok))
        false_bad = sum(b and not a for a, b in zip(says_valid, ok))
        print(f"{name:>9}: TeX compiles {sum(ok)}/{len(group)}; structural verdict agrees with TeX on "
              f"{agree}/{len(group)} (says fine but TeX fails: {false_ok}; flags but TeX compiles: {false_bad})")
    failing = [i for i, ok in enumerate(ok_broken) if not ok]
    fixed = sum(ok_repaired.get(i, False) for i in failing)
    print(f"repair: changed {len(changed)}/{len(broken)} corrupted formulas; of the {len(failing)} that TeX "
          f"rejects, {fixed} compile after repair")


if __name__ == "__main__":
    main()
