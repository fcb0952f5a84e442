"""The im2latex hold-out used to measure texocr's default model: split the real formulas, render the test part.

    .venv/bin/python scripts/heldout.py split  --out .carry/im2latex        # train.jsonl + test.jsonl (labels only)
    .venv/bin/python scripts/heldout.py render --out runs/im2latex-test     # TeX (Computer Modern) renders of test
    .venv/bin/python scripts/heldout.py render --part train --limit 300 --out .carry/val-train  # ... of trained-on
                                                                            # formulas: how much is memorized
    .venv/bin/texocr data overlap .carry/im2latex/train .carry/im2latex/test  # proves: 0 shared formulas

The split rule (`is_test`): a formula is TEST when the first 8 hex digits of the SHA-256 of its *normalized*
LaTeX, read as an integer, are below 25% of 2^32. Hashing the normalized text rather than the row id puts
duplicate formulas (the corpus repeats some) on the same side, so no test formula is ever trained on, even
written differently. About 2,100 of the 8,475 formulas are TEST; the rest may be mixed into pretraining.

The test renders imitate im2latex-100k: pdfLaTeX-style Computer Modern, display style, no augmentation, at
a resolution drawn per formula from (120, 150, 180, 200) dpi by the same hash (deterministic).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

DEFAULT_SOURCE = "../shared/data/im2latex-val-formulas/labels.jsonl"
TEST_FRACTION = 0.25
DPIS = (120, 150, 180, 200)


def formula_hash(latex: str) -> int:
    """A stable 32-bit hash of the normalized formula (the split's key)."""
    from texocr.latex import normalize

    key = normalize(latex) or latex.strip()
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


def is_test(latex: str, fraction: float = TEST_FRACTION) -> bool:
    """True when `latex` belongs to the held-out TEST part (never trained on)."""
    return formula_hash(latex) < fraction * 2**32


def read_rows(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if isinstance(row.get("latex"), str) and row["latex"].strip():
                    rows.append({"id": row.get("id", f"row{len(rows)}"), "latex": row["latex"].strip()})
    return rows


def split(source: str | Path, out: str | Path, fraction: float = TEST_FRACTION) -> dict[str, int]:
    """Write `out/train/labels.jsonl` and `out/test/labels.jsonl` (id + latex, no images); counts."""
    rows = read_rows(source)
    parts: dict[str, list[dict]] = {"train": [], "test": []}
    for row in rows:
        parts["test" if is_test(row["latex"], fraction) else "train"].append(row)
    for name, part in parts.items():
        d = Path(out) / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "labels.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {name: len(part) for name, part in parts.items()}


def render(source: str | Path, out: str | Path, *, limit: int | None = None, chunk: int = 200,
           fraction: float = TEST_FRACTION, part: str = "test") -> dict[str, int]:
    """Render the TEST (or TRAIN) formulas of `source` with TeX into `out` (labels.jsonl + images/); counts."""
    from texocr.data.render import TexRenderer
    from texocr.latex import normalize

    if part not in ("test", "train"):
        raise ValueError(f"part must be test or train, not {part!r}")
    rows = [r for r in read_rows(source) if is_test(r["latex"], fraction) == (part == "test")][:limit]
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    renderer = TexRenderer()
    written, failed = 0, 0
    with open(out / "labels.jsonl", "w", encoding="utf-8") as f:
        for dpi in DPIS:  # one TeX run per (dpi, chunk): TeX is fast when formulas share a document
            group = [r for r in rows if DPIS[formula_hash(r["latex"]) % len(DPIS)] == dpi]
            for start in range(0, len(group), chunk):
                batch = group[start:start + chunk]
                results = renderer.render_detailed([r["latex"] for r in batch], font="cm", dpi=dpi, display=True)
                for row, res in zip(batch, results):
                    if res.image is None:
                        failed += 1
                        continue
                    rel = f"images/{row['id']}.png"
                    res.image.save(out / rel)
                    f.write(json.dumps({"image": rel, "latex": normalize(row["latex"]), "id": row["id"],
                                        "dpi": dpi, "renderer": "tex", "font": "cm"}, ensure_ascii=False) + "\n")
                    written += 1
    return {"written": written, "failed": failed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write train/ and test/ label files")
    r = sub.add_parser("render", help="render the TEST (or TRAIN) formulas with TeX (Computer Modern)")
    for q in (s, r):
        q.add_argument("--source", default=DEFAULT_SOURCE, help="labels.jsonl of the real formulas")
        q.add_argument("--out", required=True)
    r.add_argument("--limit", type=int, default=None, help="render only the first N formulas")
    r.add_argument("--part", default="test", choices=["test", "train"],
                   help="train: formulas pretraining uses, to compare with test (memorization)")
    args = p.parse_args(argv)
    counts = split(args.source, args.out) if args.cmd == "split" else render(args.source, args.out, limit=args.limit,
                                                                             part=args.part)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
