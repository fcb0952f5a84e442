"""`texocr data render|stats|overlap`: dispatch only; the work is in synth.py and inspect.py."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="{render,stats,overlap}", required=True)

    r = sub.add_parser("render", help="render a synthetic data set (labels.jsonl + images + montage.png)")
    r.add_argument("--n", type=int, default=1000, help="number of samples to write")
    r.add_argument("--out", required=True, help="output folder (new, empty, or a previous `data render`'s)")
    r.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that data render did not create")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--style", choices=["printed", "handwritten", "mixed"], default="printed")
    r.add_argument("--formulas", help="file of real formulas (one per line, or labels.jsonl) to mix in")
    r.add_argument("--real-ratio", type=float, default=0.5, help="fraction of formulas taken from --formulas")
    r.add_argument("--mutate-ratio", type=float, default=0.0,
                   help="fraction of those real formulas replaced by a mutation of them (texocr.data.mutate)")
    r.add_argument("--in-order", action="store_true",
                   help="sample i is formula i of --formulas (cycling), each once: a test set of given formulas")
    r.add_argument("--renderer", choices=["auto", "tex", "pip"], default="auto",
                   help="TeX (latex+dvipng) or the pure-pip renderer; auto prefers TeX when installed")
    r.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    r.add_argument("--no-augment", action="store_true", help="write clean renders")
    r.add_argument("--augment-strength", type=float, default=1.0,
                   help="augmentation strength, 0-2 (above 1: a messier handwriting distortion)")
    r.add_argument("--downsample-share", type=float, default=0.25,
                   help="share of printed chunks drawn like the published im2latex-100k images: rendered at 2x "
                        "the resolution, then padded, bucketed and downsampled by 2 as im2markup does (0: none)")

    s = sub.add_parser("stats", help="counts, image sizes, label lengths and token vocabulary of a data set")
    s.add_argument("data", help="a data source (folder, InkML folder, hf:<id>, preset)")
    s.add_argument("--split", help="a split (HF split, <split>/ subfolder, or rows whose split field matches)")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.add_argument("--skipped", metavar="FILE", help="also write the skipped rows (id, reason, detail) as JSONL")

    o = sub.add_parser("overlap", help="exact and normalized label overlap between two data sets")
    o.add_argument("train")
    o.add_argument("test")
    o.add_argument("--train-split")
    o.add_argument("--test-split")
    o.add_argument("--json", action="store_true")
    o.add_argument("--show", type=int, default=10, help="print this many overlapping labels")


def main(args: argparse.Namespace) -> int:
    if args.data_command == "render":
        from texocr.data.synth import render_main
        from texocr.outdir import prepare_output_dir

        if args.n < 1:  # checked before the folder is touched
            from texocr.errors import TexocrError

            raise TexocrError("--n must be at least 1")
        prepare_output_dir(args.out, "data render", overwrite=args.overwrite)
        return render_main(args)
    from texocr.data.inspect import overlap_main, stats_main

    return stats_main(args) if args.data_command == "stats" else overlap_main(args)
