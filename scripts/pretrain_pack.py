"""Pre-render a pretraining pack with real TeX here, for the GPU machine that has no TeX (issue 6).

    .venv/bin/python scripts/heldout.py split --out .carry/im2latex
    .venv/bin/python scripts/pretrain_pack.py --out .carry/pack --n 52000 --workers 2    # ~3 min on 2 cores
    python scripts/pretrain_compact.py ... --pack .carry/pack                           # on the GPU machine

Why: the pip renderer does ~12 formulas/s per core, so 16 GPU-machine cores render ~190 formulas/s while the
GPU trains the compact model ~10x faster; TeX here renders ~220 formulas/s per core in Computer Modern, the
typeface of the im2latex test renders. Only 64 MiB travel to the GPU machine, so each clean render is
stored as a 1-bit PNG (~1.1 KB, a third of an 8-bit one) in one `pack.bin`; `index.jsonl.gz` holds per image
its byte range, target and render settings. `pretrain_compact.py` restores anti-aliased edges with a small
blur and augments on the fly. Formulas: `texocr.data.synth.SyntheticSource` (generator formulas mixed with
the TRAIN part of the im2latex hold-out at `--real-ratio`; the TEST part is never read), printed and
handwriting-style fonts (the handwriting distortion itself is applied at training time).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

THRESHOLD = 140
"""Grey level below which a pixel is ink: keeps strokes about as wide as the anti-aliased render's."""


_SOURCES: dict[str, Any] = {}
"""One SyntheticSource per style and worker process: built once (it reads the formula file and probes TeX)."""


def render_chunk(job: tuple[int, str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Render chunk `c` of a SyntheticSource of `style`; rows with their 1-bit PNG bytes."""
    from texocr.data.synth import SyntheticSource
    from texocr.sample import Sample

    c, style, opts = job
    if style not in _SOURCES:
        _SOURCES[style] = SyntheticSource(
            n=2**40, seed=opts["seed"] + (0 if style == "printed" else 1), style=style, renderer="tex",
            formulas=opts["formulas"], real_ratio=opts["real_ratio"], mutate_ratio=opts["mutate_ratio"],
            augment=False, chunk=opts["chunk"],
            cache_chunks=1)
    src = _SOURCES[style]
    rows = []
    for s in src.render_chunk(c):
        if not isinstance(s, Sample):
            continue
        buf = io.BytesIO()
        s.image.convert("L").point(lambda v: 255 if v > THRESHOLD else 0).convert("1").save(buf, "PNG", optimize=True)
        rows.append({"png": buf.getvalue(), "latex": s.latex, "style": style, "font": s.meta.get("font"),
                     "dpi": s.meta.get("dpi"), "origin": s.meta.get("origin")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=52000, help="formulas to render (failures are dropped)")
    p.add_argument("--handwritten", type=float, default=0.2, help="share rendered with handwriting-style fonts")
    p.add_argument("--formulas", default=".carry/im2latex/train/labels.jsonl")
    p.add_argument("--real-ratio", type=float, default=0.5)
    p.add_argument("--mutate-ratio", type=float, default=0.0,
                   help="share of the real draws replaced by a mutation of them (texocr.data.mutate)")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-mb", type=float, default=54.0, help="stop once pack.bin reaches this size")
    args = p.parse_args(argv)

    opts = {"seed": args.seed, "formulas": args.formulas, "real_ratio": args.real_ratio,
            "mutate_ratio": args.mutate_ratio, "chunk": args.chunk}
    n_chunks = (args.n + args.chunk - 1) // args.chunk
    n_hand = round(n_chunks * args.handwritten)
    jobs = [(c, "printed", opts) for c in range(n_chunks - n_hand)] + [(c, "handwritten", opts) for c in range(n_hand)]
    jobs.sort(key=lambda j: (j[0], j[1]))  # interleave styles so a size cap keeps both
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    offset, count = 0, 0
    with open(out / "pack.bin", "wb") as data, gzip.open(out / "index.jsonl.gz", "wt", encoding="utf-8") as index, \
            ProcessPoolExecutor(args.workers) as pool:
        for rows in pool.map(render_chunk, jobs):
            for row in rows:
                png = row.pop("png")
                data.write(png)
                index.write(json.dumps({"offset": offset, "length": len(png), **row}, ensure_ascii=False) + "\n")
                offset += len(png)
                count += 1
            if offset > args.max_mb * 2**20:
                pool.shutdown(cancel_futures=True)  # the chunks not started yet are not rendered
                break
    print(json.dumps({"images": count, "mb": round(offset / 2**20, 1), "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
