"""Which tokens of the real TRAIN formulas does texocr's formula generator never write? The generator is 40 % of
pretraining's formulas; a command it never writes is learned only from the 6,374 real formulas and their mutations,
which the model partly memorizes (bench/compact.md "What limits it"). Tokens are those of `texocr.latex.normalize`.

    PYTHONPATH=src .venv/bin/python bench/formula_coverage.py --train .carry/im2latex/train/labels.jsonl --n 20000

Prints the share of TRAIN token occurrences whose token the generator writes at least once, and the most frequent
TRAIN tokens it never writes. ~10 s on one core for 20,000 generated formulas.
"""

from __future__ import annotations

import argparse
from collections import Counter

from texocr.data.formulas import FormulaGenerator, read_formulas
from texocr.latex import normalize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True, help="labels.jsonl (or one formula per line) of the TRAIN formulas")
    p.add_argument("--n", type=int, default=20_000, help="generated formulas to sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    real = Counter(t for f in read_formulas(args.train) for t in normalize(f).split())
    gen = FormulaGenerator(args.seed)
    made = Counter(t for i in range(args.n) for t in normalize(gen.formula(i)).split())
    total = sum(real.values())
    covered = sum(c for t, c in real.items() if t in made)
    print(f"{len(real)} distinct TRAIN tokens, {total} occurrences; the generator ({args.n} formulas) writes "
          f"{sum(1 for t in real if t in made)} of them, {covered / total:.1%} of the occurrences")
    missing = [(t, c) for t, c in real.most_common() if t not in made]
    print(f"never written ({len(missing)} tokens, {sum(c for _, c in missing)} occurrences), most frequent first:")
    print(" ".join(f"{t} {c}" for t, c in missing[: args.top]))
    rare = [(t, c, made[t]) for t, c in real.most_common(200) if 0 < made[t] < args.n * 0.002]
    if rare:
        print("frequent in TRAIN (top 200) but rare in the generator (< 1 per 500 formulas): "
              + " ".join(f"{t} {c}/{m}" for t, c, m in rare))


if __name__ == "__main__":
    main()
