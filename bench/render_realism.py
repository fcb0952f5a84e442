"""How close texocr's printed renders come to the published im2latex-100k images (bench/render_realism.md).

    .venv/bin/python bench/render_realism.py build   --limit 300      # renders of the same formulas, runs/realism/*
    .venv/bin/python bench/render_realism.py stats                    # image statistics, published vs each variant
    for d in runs/realism/*/; do .venv/bin/texocr eval --model default --data $d --out runs/realism-eval/$(basename $d) \
        --no-render; done                                             # + the published: --data runs/real-val/im2latex
    .venv/bin/python bench/render_realism.py compare runs/realism-eval/*   # exact match on the formulas all share

The published images (`--published`, default runs/real-val/im2latex: labels.jsonl + images/) are only read; the
variants are written under `--out` with the published ids and labels, so predictions join by id:

- `cm-default-dpis`  Computer Modern, 12 pt, tight crop, no augmentation, at texocr's `PRINTED_DPIS` in turn;
- `synth-default`    `SyntheticSource` as it was before the emulation (`downsample_share=0`, no augmentation):
                     its fonts, resolutions and sizes per chunk;
- `synth-im2markup`  `SyntheticSource(downsample_share=1)`: every chunk drawn the im2latex-100k way;
- `im2markup-exact`  im2markup's recipe with texocr's renderer: 10 pt CM at 200 dpi, solid ink (the alpha that
                     ImageMagick wrote and PIL dropped), crop, margin, bucket, LANCZOS halving;
- `im2markup-bold`   the same with the solid ink one 200-dpi pixel bolder to the right (`bold_p=1`);
- `im2markup-400pool` solid ink from a 400 dpi render, pooled to 200 dpi (a pixel is ink when any of its four
                     is), then the same: a finer "any coverage" than dvipng's 200 dpi one;
- `im2markup-aa`     the same without solid ink (dvipng's anti-aliased edges kept): lighter strokes;
- `small-no-downsample`  the same size (10 pt at 100 dpi) rendered directly (anti-aliased), same margin and
                     bucket, no halving;
- `gs-reference`     (`build --gs`; needs pdflatex and gs) im2markup's own chain without ImageMagick: pdflatex of
                     a 10 pt article with the formula in displaymath, ghostscript's pngalpha at 200 dpi with
                     anti-aliasing, the alpha dropped, then crop, margin, bucket and LANCZOS halving.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from texocr.data.augment import IM2MARKUP_BUCKETS, im2markup
from texocr.data.images import glyph_height

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = ("cm-default-dpis", "synth-default", "synth-im2markup", "im2markup-exact", "im2markup-bold",
            "im2markup-400pool", "im2markup-aa", "small-no-downsample", "gs-reference")
_ARTICLE = ("\\documentclass{article}\n\\pagestyle{empty}\n\\usepackage{amsmath}\n\\begin{document}\n"
            "\\begin{displaymath}\n%s\n\\end{displaymath}\n\\end{document}\n")


def read_rows(folder: Path, limit: int | None = None) -> list[dict]:
    with open(folder / "labels.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def write_set(out: Path, rows: list[dict], images: list) -> int:
    (out / "images").mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out / "labels.jsonl", "w", encoding="utf-8") as f:
        for row, img in zip(rows, images):
            if img is None:
                continue
            rel = f"images/{row['id']}.png"
            img.save(out / rel)
            f.write(json.dumps({"image": rel, "latex": row["latex"], "id": row["id"]}, ensure_ascii=False) + "\n")
            n += 1
    return n


def build(args: argparse.Namespace) -> None:
    from texocr.data.render import get_renderer
    from texocr.data.synth import PRINTED_DPIS, SyntheticSource

    rows = read_rows(Path(args.published), args.limit)
    formulas = [r["latex"] for r in rows]
    out = Path(args.out)
    r = get_renderer("tex")
    made: dict[str, list] = {}

    imgs: list = [None] * len(rows)  # texocr's clean renders at each default resolution in turn
    for k, dpi in enumerate(PRINTED_DPIS):
        idx = list(range(k, len(rows), len(PRINTED_DPIS)))
        for i, im in zip(idx, r.render_batch([formulas[i] for i in idx], font="cm", dpi=dpi)):
            imgs[i] = im
    made["cm-default-dpis"] = imgs

    for name, share in (("synth-default", 0.0), ("synth-im2markup", 1.0)):
        src = SyntheticSource(n=len(rows), seed=args.seed, renderer=r, formulas=formulas, real_ratio=1.0,
                              in_order=True, augment=False, downsample_share=share)
        imgs = [None] * len(rows)
        for c in range((len(rows) + src.chunk - 1) // src.chunk):
            for i, got in enumerate(src.render_chunk(c), start=c * src.chunk):
                if i < len(rows) and hasattr(got, "image"):
                    imgs[i] = got.image
        made[name] = imgs

    hi = r.render_batch(formulas, font="cm", dpi=200, scales=[0.83] * len(rows))  # 10 pt, as im2latex-100k
    for name, solid, bold in (("im2markup-exact", 1.0, 0.0), ("im2markup-bold", 1.0, 1.0), ("im2markup-aa", 0.0, 0.0)):
        made[name] = [im2markup(im, random.Random(0), 2, solid_p=solid, bold_p=bold, bucket_p=1.0,
                                resample=Image.Resampling.LANCZOS) if im is not None else None for im in hi]
    hi4 = r.render_batch(formulas, font="cm", dpi=400, scales=[0.83] * len(rows))
    made["im2markup-400pool"] = [im2markup(_any_pool(im), random.Random(0), 2, solid_p=0.0, bucket_p=1.0,
                                           resample=Image.Resampling.LANCZOS) if im is not None else None
                                 for im in hi4]
    lo = r.render_batch(formulas, font="cm", dpi=100, scales=[0.83] * len(rows))
    made["small-no-downsample"] = [_bucket_only(im) if im is not None else None for im in lo]

    if args.gs:
        made["gs-reference"] = [_gs_render(f) for f in formulas]

    for name, imgs in made.items():
        if args.variants and name not in args.variants:
            continue
        n = write_set(out / name, rows, imgs)
        print(f"{name}: {n} of {len(rows)} rendered -> {out / name}")


def _gs_render(latex: str) -> Image.Image | None:
    """im2markup's chain with ghostscript in ImageMagick's place (see the module docstring); None on failure."""
    from texocr.data.render import check_formula

    if check_formula(latex):
        return None
    with tempfile.TemporaryDirectory(prefix="realism-") as d:
        Path(d, "f.tex").write_text(_ARTICLE % latex, encoding="utf-8")
        env = dict(os.environ, openin_any="p", openout_any="p", shell_escape="f")
        try:
            subprocess.run(["pdflatex", "-no-shell-escape", "-interaction=nonstopmode", "f.tex"], cwd=d, env=env,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=False)
            if not Path(d, "f.pdf").exists():
                return None
            subprocess.run(["gs", "-q", "-dSAFER", "-dNOPAUSE", "-dBATCH", "-sDEVICE=pngalpha", "-r200",
                            "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4", "-sOutputFile=f.png", "f.pdf"],
                           cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
            with Image.open(Path(d, "f.png")) as im:
                rgba = np.asarray(im.convert("RGBA"))
        except (subprocess.TimeoutExpired, OSError):
            return None
    gray = Image.fromarray(rgba[..., :3]).convert("L")  # what PIL's convert('L') of that RGBA file keeps
    if _ink_box(gray) is None:
        return None
    return im2markup(gray, random.Random(0), 2, solid_p=0.0, bucket_p=1.0, resample=Image.Resampling.LANCZOS)


def _ink_box(gray: Image.Image) -> tuple | None:
    from PIL import ImageOps

    return ImageOps.invert(gray).getbbox()


def _any_pool(img: Image.Image) -> Image.Image:
    """Black where any of a 2x2 block has ink, white elsewhere: half the size."""
    ink = np.asarray(img.convert("L")) < 255
    h, w = ink.shape[0] // 2 * 2, ink.shape[1] // 2 * 2
    ink = ink[:h, :w].reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
    return Image.fromarray(np.where(ink, 0, 255).astype(np.uint8), mode="L")


def _bucket_only(img: Image.Image) -> Image.Image:
    """im2markup's margin and bucket without the downsampling (factor 1)."""
    return im2markup(img, random.Random(0), 1, solid_p=0.0, bucket_p=1.0)


def image_stats(folder: Path, limit: int | None = None) -> dict:
    from scipy import ndimage

    rows = read_rows(folder, limit)
    modes, sizes, bgs = Counter(), Counter(), Counter()
    margins, ink_h, xh, gh = [], [], [], []
    hist = np.zeros(256)
    buckets = set(IM2MARKUP_BUCKETS)
    for row in rows:
        with Image.open(folder / row["image"]) as im:
            modes[im.mode] += 1
            sizes[im.size] += 1
            g = np.asarray(im.convert("L"))
            gh.append(glyph_height(im) or 0)
        bgs[int(g[0, 0])] += 1
        hist += np.bincount(g.ravel(), minlength=256)
        ys, xs = np.nonzero(g < 250)
        if not len(ys):
            continue
        margins.append((xs.min(), ys.min(), g.shape[1] - 1 - xs.max(), g.shape[0] - 1 - ys.max()))
        ink_h.append(ys.max() - ys.min() + 1)
        labels, _ = ndimage.label(g < 128, structure=np.ones((3, 3), bool))
        hs = [b[0].stop - b[0].start for b in ndimage.find_objects(labels) if b is not None]
        xh.extend(h for h in hs if h >= 3)
    nonwhite = hist[:255] / max(1, hist[:255].sum())
    m = np.array(margins)
    hcount = Counter(xh)
    return {
        "n": len(rows), "mode": dict(modes), "background": bgs.most_common(1)[0][0] if bgs else None,
        "distinct_sizes": len(sizes), "in_buckets": sum(c for s, c in sizes.items() if s in buckets) / max(1, len(rows)),
        "height_median": float(np.median([s[1] for s in sizes.elements()])),
        "margin_ltrb_median": [float(v) for v in np.median(m, 0)],
        "ink_height_median": float(np.median(ink_h)),
        "glyph_height_median": float(np.median(gh)),
        # glyphs at threshold 128: x-height letters and taller ones make two peaks; bolder ink merges more glyphs
        "glyph_box_height_peaks": sorted(h for h, _ in hcount.most_common(2)),
        "glyphs_per_image": len(xh) / max(1, len(rows)),
        "white_share": float(hist[255] / hist.sum()),
        "nonwhite_0_64": float(nonwhite[:64].sum()), "nonwhite_64_128": float(nonwhite[64:128].sum()),
        "nonwhite_128_192": float(nonwhite[128:192].sum()), "nonwhite_192_255": float(nonwhite[192:].sum()),
        "black_share_of_ink": float(hist[0] / max(1, hist[:255].sum())),
    }


def versus_published(folder: Path, published: Path) -> dict:
    """Per shared id: median (ink box width here) / (ink box width in the published image); share of images of
    the very same size; mean absolute pixel difference (0-255) on those, median over images."""
    pub = {r["id"]: r for r in read_rows(published)}
    ratios, mads, n = [], [], 0
    for row in read_rows(folder):
        if row["id"] not in pub:
            continue
        n += 1
        arrays = []
        for base, rel in ((folder, row["image"]), (published, pub[row["id"]]["image"])):
            with Image.open(base / rel) as im:
                arrays.append(np.asarray(im.convert("L")).astype(np.int16))
        ws = []
        for a in arrays:
            xs = np.nonzero((a < 128).any(0))[0]
            ws.append(xs.max() - xs.min() + 1 if len(xs) else 0)
        if ws[1]:
            ratios.append(ws[0] / ws[1])
        if arrays[0].shape == arrays[1].shape:
            mads.append(float(np.abs(arrays[0] - arrays[1]).mean()))
    return {"ink_width_vs_published": float(np.median(ratios)) if ratios else None,
            "same_size_as_published": len(mads) / max(1, n),
            "pixel_mad_vs_published": float(np.median(mads)) if mads else None}


def stats(args: argparse.Namespace) -> None:
    published = Path(args.published)
    table = {"published": image_stats(published, args.limit)}
    for name in VARIANTS:
        if (Path(args.out) / name / "labels.jsonl").is_file():
            table[name] = image_stats(Path(args.out) / name)
            table[name].update(versus_published(Path(args.out) / name, published))
    if args.json:
        print(json.dumps(table, indent=1))
        return
    keys = list(dict.fromkeys(k for t in table.values() for k in t))
    print("| statistic | " + " | ".join(table) + " |\n|---|" + "---:|" * len(table))
    for k in keys:
        cells = [table[n].get(k, "") for n in table]
        print(f"| {k} | " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells) + " |")


def compare(args: argparse.Namespace) -> None:
    """Exact match of each eval folder on the ids every folder has, and how each agrees with the first folder
    (the published images) formula by formula: same verdict (both exact or both not), same prediction."""
    preds = {}
    for d in args.evals:
        with open(Path(d) / "predictions.jsonl", encoding="utf-8") as f:
            preds[Path(d).name] = {r["id"]: r for r in map(json.loads, f)}
    common = sorted(set.intersection(*(set(p) for p in preds.values())))
    base = preds[Path(args.evals[0]).name]
    print(f"{len(common)} ids in every folder; agreement with {Path(args.evals[0]).name}\n")
    print("| set | n | exact match | same verdict | same prediction | exact here only | exact there only |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, p in preds.items():
        ex = [bool(p[i].get("exact")) for i in common]
        bx = [bool(base[i].get("exact")) for i in common]
        same = sum(a == b for a, b in zip(ex, bx))
        same_pred = sum(p[i].get("prediction") == base[i].get("prediction") for i in common)
        n = max(1, len(common))
        print(f"| {name} | {len(common)} | {100 * sum(ex) / n:.1f} % | {100 * same / n:.1f} % | "
              f"{100 * same_pred / n:.1f} % | {sum(a and not b for a, b in zip(ex, bx))} | "
              f"{sum(b and not a for a, b in zip(ex, bx))} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build", "stats", "compare"])
    p.add_argument("evals", nargs="*", help="compare: eval output folders")
    p.add_argument("--published", default=str(ROOT / "runs" / "real-val" / "im2latex"))
    p.add_argument("--out", default=str(ROOT / "runs" / "realism"))
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="stats: JSON instead of a markdown table")
    p.add_argument("--gs", action="store_true", help="build: also the pdflatex + ghostscript reference")
    p.add_argument("--variants", nargs="*", choices=VARIANTS, help="build: write only these")
    args = p.parse_args()
    {"build": build, "stats": stats, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
