"""Exact match when the glyph height is chosen per image, from `texocr eval` predictions of the same images read at
several heights (bench/compact.md, "The same images at three glyph heights").

    python3 bench/scale_choice.py runs/eval-v8a-im2latex-g16 runs/eval-v8a-im2latex-g17 runs/eval-v8a-im2latex-g18

Prints each run's exact match, the oracle (any run right), agreement, a majority vote (ties: the second run) and
the choice by the highest mean log-probability (`score`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    runs = [{r["id"]: r for r in map(json.loads, (Path(d) / "predictions.jsonl").read_text().splitlines())}
            for d in sys.argv[1:]]
    ids = [i for i in runs[0] if all(i in r for r in runs)]
    n = len(ids)
    for d, r in zip(sys.argv[1:], runs):
        print(f"{d}: {sum(r[i]['exact'] for i in ids) / n:.1%}")
    print(f"oracle: {sum(any(r[i]['exact'] for r in runs) for i in ids) / n:.1%}")
    print(f"all identical: {sum(len({r[i]['prediction'] for r in runs}) == 1 for i in ids) / n:.1%}")
    order = [runs[1], runs[0], *runs[2:]] if len(runs) > 1 else runs  # ties go to the second run
    vote = sum(max(order, key=lambda r, i=i: sum(o[i]["prediction"] == r[i]["prediction"] for o in runs))[i]["exact"]
               for i in ids)
    print(f"majority vote: {vote / n:.1%}")
    best = sum(max(runs, key=lambda r, i=i: r[i]["score"] if r[i]["score"] is not None else float("-inf"))[i]["exact"]
               for i in ids)
    print(f"highest mean log-probability: {best / n:.1%}  ({n} images)")


if __name__ == "__main__":
    main()
