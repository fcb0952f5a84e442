"""Split the real data sets in ../shared/data into training and held-out parts, and pack the training parts
small enough to travel to the GPU machine (issue 15).

    .venv/bin/python scripts/real_data.py --shared ../shared/data --carry .carry/real --val runs/real-val

Held out (never trained on, kept on this machine and, 300 of each, in `.carry/val-*` for probes on the GPU):
- im2latex-train-real: a formula is held out when the hash of its normalized LaTeX falls in the lowest 20 %
  (`scripts/heldout.py`'s rule, so repeated formulas stay on one side);
- CROHME 2014 train: whole writers are held out (the InkML `writer` annotation; where a file has none, its
  sub-folder and file-name prefix stand for the writer): 10 % of the writers by hash, so the number says
  how the model reads people it never saw;
- handwritten-small keeps its own `val` split (68 images); its 1,200 `train` images are trained on.

Written: `carry/im2latex/` and `carry/hand/` (grey PNGs + labels.jsonl with normalized targets),
`carry/crohme.jsonl.gz` (strokes, integer coordinates), `val/im2latex/`, `val/crohme/` (the held-out inks
rasterized as `texocr eval` reads an InkML folder: height 128, pen 2.5 px) and `val/crohme-inkml.txt`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

from PIL import Image

from texocr.data.inkml import InkError, crohme_truth, rasterize, read_inkml
from texocr.latex import normalize

IM2LATEX_VAL = 0.20
CROHME_VAL = 0.10
PROBE = 200


def _frac(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def _write_rows(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _grey_copy(src: Path, dst: Path, max_height: int | None = None, levels: int = 0) -> None:
    """A grey copy, at most `max_height` tall, with `levels` grey levels (a 4-bit PNG: a third of the bytes,
    and the anti-aliasing stays); what travels to the GPU machine must fit 64 MiB with TeX and the model."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("L")
        if max_height and im.height > max_height:
            im = im.resize((max(1, round(im.width * max_height / im.height)), max_height), Image.Resampling.LANCZOS)
        if levels:
            im = im.quantize(levels, dither=Image.Dither.NONE)
        im.save(dst, optimize=True, **({"bits": 4} if levels and levels <= 16 else {}))


def im2latex(shared: Path, carry: Path, val: Path) -> dict[str, int]:
    src = shared / "im2latex-train-real"
    train, held = [], []
    for line in (src / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        target = normalize(r["latex"])
        (held if _frac(target) < IM2LATEX_VAL else train).append((r, target))
    for i, (r, target) in enumerate(train):
        _grey_copy(src / r["image"], carry / "im2latex" / "images" / f"{i}.png", levels=16)
    _write_rows(carry / "im2latex", [{"image": f"images/{i}.png", "latex": t, "id": r["id"]}
                                     for i, (r, t) in enumerate(train)])
    for i, (r, _) in enumerate(held):
        _grey_copy(src / r["image"], val / "im2latex" / "images" / f"{i}.png")
    _write_rows(val / "im2latex", [{"image": f"images/{i}.png", "latex": r["latex"], "id": r["id"]}
                                   for i, (r, _) in enumerate(held)])
    return {"im2latex_train": len(train), "im2latex_val": len(held)}


def writer_of(path: Path, meta: dict) -> str:
    """The writer's id, or the folder + file-name prefix where the file names none (MathBrush
    `2009210-947-12` -> `MathBrush/2009210-947`)."""
    w = meta.get("writer", "").strip()
    if w and w.lower() != "unknown":
        return w
    stem = path.stem
    for sep in ("-", "_"):
        if sep in stem:
            stem = stem.rsplit(sep, 1)[0]
            break
    return f"{path.parent.name}/{stem}"


def crohme(shared: Path, carry: Path, val: Path) -> dict[str, int]:
    src = shared / "crohme2014-train-inkml"
    train, held, skipped = [], [], 0
    writers_train, writers_val = set(), set()
    for line in (src / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        path = src / r["inkml"]
        try:
            ink = read_inkml(path)
        except InkError as e:
            print(f"skip {path}: {e}", file=sys.stderr)
            skipped += 1
            continue
        target = normalize(crohme_truth(ink.label or ""))
        if not target:
            skipped += 1
            continue
        w = writer_of(path, ink.meta)
        if _frac("writer:" + w) < CROHME_VAL:
            held.append((r, ink, target))
            writers_val.add(w)
        else:
            train.append((r, ink, target))
            writers_train.add(w)
    with gzip.open(carry / "crohme.jsonl.gz", "wt", encoding="utf-8") as f:
        for r, ink, target in train:
            # integer coordinates relative to the ink's corner (rasterize() rescales anyway), repeats dropped
            strokes = [_dedupe([round(v) for v in flat]) for flat in _relative(ink.strokes)]
            f.write(json.dumps({"id": r["id"], "latex": target, "strokes": strokes}) + "\n")
    rows = []
    for i, (r, ink, target) in enumerate(held):
        name = f"images/{i}.png"
        (val / "crohme" / "images").mkdir(parents=True, exist_ok=True)
        rasterize(ink.strokes).convert("L").save(val / "crohme" / name, optimize=True)
        rows.append({"image": name, "latex": target, "id": r["id"], "inkml": r["inkml"]})
    _write_rows(val / "crohme", rows)
    (val / "crohme-inkml.txt").write_text("".join(str(src / r["inkml"]) + "\n" for r, _, _ in held))
    return {"crohme_train": len(train), "crohme_val": len(held), "crohme_skipped": skipped,
            "writers_train": len(writers_train), "writers_val": len(writers_val)}


def _dedupe(flat: list[int]) -> list[int]:  # consecutive repeated points (integer rounding makes many) dropped
    out: list[int] = []
    for x, y in zip(flat[::2], flat[1::2]):
        if len(out) < 2 or (out[-2], out[-1]) != (x, y):
            out += [x, y]
    return out


def _relative(strokes) -> list[list[float]]:  # [N, 2] point lists -> flat [x0, y0, ...], ~500 units, from the corner
    import numpy as np

    arrays = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes]
    allpts = np.concatenate(arrays)
    lo = allpts.min(axis=0)
    scale = 500.0 / float(max(1e-9, (allpts.max(axis=0) - lo).max()))
    return [((a - lo) * scale).reshape(-1).tolist() for a in arrays]


def hand(shared: Path, carry: Path) -> dict[str, int]:
    src = shared / "handwritten-small"
    rows = []
    for line in (src / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("split") != "train":
            continue
        name = f"images/{len(rows)}.png"
        _grey_copy(src / r["image"], carry / "hand" / name, max_height=96, levels=16)
        rows.append({"image": name, "latex": normalize(r["latex"]), "id": r["id"]})
    _write_rows(carry / "hand", rows)
    return {"hand_train": len(rows)}


def probes(val: Path, carry_root: Path) -> None:
    """The first PROBE rows of each held-out set, for the evaluation the GPU run does after each command."""
    for name in ("im2latex", "crohme"):
        rows = [json.loads(line) for line in (val / name / "labels.jsonl").read_text(encoding="utf-8").splitlines()][:PROBE]
        out = carry_root / f"val-real-{name}"
        for r in rows:
            (out / r["image"]).parent.mkdir(parents=True, exist_ok=True)
            (out / r["image"]).write_bytes((val / name / r["image"]).read_bytes())
        _write_rows(out, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--carry", default=".carry/real")
    p.add_argument("--val", default="runs/real-val")
    a = p.parse_args(argv)
    shared, carry, val = Path(a.shared), Path(a.carry), Path(a.val)
    for d in (carry, val):
        if d.exists() and any(d.iterdir()):
            p.error(f"{d} is not empty: remove it first")
        d.mkdir(parents=True, exist_ok=True)
    counts = {**im2latex(shared, carry, val), **crohme(shared, carry, val), **hand(shared, carry)}
    probes(val, carry.parent)
    (val / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
