"""Does the standard normalization change what a formula looks like? Render every formula of a corpus that two
versions of `texocr.latex.normalize` write differently, both ways, with TeX, and count pixel-identical pairs.

    PYTHONPATH=src .venv/bin/python bench/normalize_pixels.py --old /tmp/oldsrc/src \\
        --corpus ../shared/data/im2latex-val-formulas/labels.jsonl

`--old`: a `src` folder holding the other version
(`git archive REV src/texocr/__init__.py src/texocr/latex | tar -x -C DIR`).
Prints the counts and up to 10 differing pairs; TeX (latex + dvipng) must be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from texocr.data.render import TexRenderer
from texocr.latex import normalize


def old_normalized(src: Path, formulas: list[str]) -> list[str]:
    """`normalize` of the texocr.latex package under `src` (stdlib only), run in its own interpreter."""
    code = ("import json, sys\nimport texocr.latex as L\n"
            f"assert L.__file__.startswith({str(src.resolve())!r}), 'imported ' + L.__file__\n"
            "print(json.dumps([L.normalize(f) for f in json.load(sys.stdin)]))")
    env = dict(os.environ, PYTHONPATH=str(src))
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps(formulas), capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(run.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--dpi", type=int, default=200)
    a = p.parse_args()
    formulas = [json.loads(line)["latex"] for line in a.corpus.open()]
    changed = [(old, normalize(f)) for old, f in zip(old_normalized(a.old, formulas), formulas)]
    changed = [(x, y) for x, y in changed if x != y]
    images = TexRenderer().render_batch([s for pair in changed for s in pair], font="cm", dpi=a.dpi)
    same, differ, failed = 0, [], 0
    for i, (x, y) in enumerate(changed):
        u, v = images[2 * i], images[2 * i + 1]
        if u is None or v is None:
            failed += 1
        elif np.asarray(u).shape == np.asarray(v).shape and np.array_equal(np.asarray(u), np.asarray(v)):
            same += 1
        else:
            differ.append((x, y))
    print(f"{len(formulas)} formulas, {len(changed)} normalized differently; of those rendered both ways: "
          f"{same} pixel-identical, {len(differ)} different ({failed} failed to render)")
    for x, y in differ[:10]:
        print(f"  old: {x}\n  new: {y}")


if __name__ == "__main__":
    main()
