"""Does the standard normalization change what a formula looks like? Render every formula of a corpus that two
versions of `texocr.latex.normalize` write differently, both ways, with TeX, and count pixel-identical pairs.

    PYTHONPATH=src .venv/bin/python bench/normalize_pixels.py --old /tmp/oldsrc/src \\
        --corpus ../shared/data/im2latex-val-formulas/labels.jsonl

`--old`: a `src` folder holding the other version (`git archive REV src/texocr/latex | tar -x -C DIR`).
Prints the counts and up to 10 differing pairs; TeX (latex + dvipng) must be installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from texocr.data.render import TexRenderer
from texocr.latex import normalize


def load_old_normalize(src: Path):
    """`normalize` of the texocr.latex package under `src`, imported under another name."""
    pkg = src / "texocr" / "latex"
    spec = importlib.util.spec_from_file_location("old_latex", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_latex"] = module
    # its modules import `texocr.latex.x`: point those names at the old files while it loads
    saved = {k: v for k, v in sys.modules.items() if k.startswith("texocr.latex")}
    for k in saved:
        del sys.modules[k]
    sys.modules["texocr.latex"] = module
    spec.loader.exec_module(module)
    old = module.normalize
    for k in [k for k in sys.modules if k.startswith("texocr.latex")]:
        del sys.modules[k]
    sys.modules.update(saved)
    return old


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--dpi", type=int, default=200)
    a = p.parse_args()
    old = load_old_normalize(a.old)
    formulas = [json.loads(line)["latex"] for line in a.corpus.open()]
    changed = [(old(f), normalize(f)) for f in formulas]
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
