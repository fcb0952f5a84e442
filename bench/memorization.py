"""Does the model read formulas, or recall the ones it trained on? Exact match on a TEST evaluation, split by how
close each reference is to its nearest trained-on formula (rapidfuzz ratio of the normalized strings), within
token-length bins so that "similar" does not just mean "short".

    PYTHONPATH=src .venv/bin/python bench/memorization.py --predictions runs/eval-v3/predictions.jsonl \\
        --train .carry/im2latex/train/labels.jsonl

`--predictions`: a `texocr eval` predictions.jsonl; `--train`: the labels.jsonl of the formulas trained on
(`scripts/heldout.py split`). ~1 minute on one core for 2,096 x 6,374 pairs. Prints a table.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from rapidfuzz import fuzz, process

from texocr.latex import normalize
from texocr.metrics import exact_match

SIMILARITY_BINS = ((0, 70), (70, 101))
LENGTH_BINS = ((0, 25), (25, 50), (50, 75), (75, 10_000))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--predictions", required=True)
    p.add_argument("--train", required=True)
    args = p.parse_args()
    with open(args.train, encoding="utf-8") as f:
        train = [normalize(json.loads(line)["latex"]) for line in f]
    with open(args.predictions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    refs = [normalize(r["reference"]) for r in rows]
    exact = np.array([exact_match([r["prediction"] or ""], [r["reference"]]) for r in rows])
    nearest = process.cdist(refs, train, scorer=fuzz.ratio, dtype=np.uint8).max(axis=1)  # (n_test,)
    length = np.array([len(r.split()) for r in refs])
    print(f"{len(rows)} predictions, {len(train)} trained-on formulas; exact match {exact.mean():.3f}")
    print("| tokens | nearest trained-on formula < 70 % similar: n, EM | >= 70 %: n, EM |")
    print("|---|---|---|")
    for a, b in LENGTH_BINS:
        cells = []
        for lo, hi in SIMILARITY_BINS:
            m = (length >= a) & (length < b) & (nearest >= lo) & (nearest < hi)
            cells.append(f"{m.sum()}, {exact[m].mean():.3f}" if m.any() else "0, -")
        print(f"| {a}-{b if b < 10_000 else ''} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
