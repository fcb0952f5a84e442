"""Training sequence lengths of what a config trains on, against its `model.max_length` (bench/seq_lengths.md).

    python bench/seq_lengths.py configs/tiny/cpu-lora.yaml
    python bench/seq_lengths.py configs/demo/default-lora.yaml --demo-formulas --n 1000
    python bench/seq_lengths.py configs/tiny/cpu-lora.yaml --model.max_length 256    # dotted overrides

Reads the training samples as `texocr train` does (`--n` caps `data.synthetic_n`), builds the model's processor
only (no weights) and counts each sample's length with `texocr.models.lengths` (what training drops).
`--demo-formulas` fills in `data.formulas` as `texocr demo` does (its short generated training formulas).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--n", type=int, help="at most this many training samples (data.synthetic_n / data.limit)")
    p.add_argument("--demo-formulas", action="store_true", help="data.formulas as texocr demo fills it in")
    p.add_argument("--renderer", choices=["auto", "pip"], default="auto",
                   help="pip: render as a machine without TeX does (the images, hence the lengths, differ)")
    args, overrides = p.parse_known_args(argv)
    given = list(overrides)
    if args.renderer == "pip":  # what `auto` picks where latex/dvipng are missing
        import texocr.data.render

        texocr.data.render.tex_available = lambda: False

    from texocr.config import load_config
    from texocr.data.render import get_renderer
    from texocr.models.lengths import fit_to_length
    from texocr.models.loading import resolve_model
    from texocr.models.registry import detect_family
    from texocr.train import normalize_target, read_samples

    tmp = tempfile.TemporaryDirectory()
    if args.demo_formulas:
        from texocr.demo import write_formulas

        train_f, _, _ = write_formulas(Path(tmp.name), 20_000, 10, seed=0)
        overrides += ["--data.formulas", str(train_f)]
    if args.n:
        overrides += ["--data.synthetic_n", str(args.n), "--data.limit", str(args.n)]
    cfg = load_config(args.config, overrides)
    if cfg.model.name_or_path is None:  # the demo's scratch case builds its model: the default's processor
        cfg.model.name_or_path = "default"
    t0 = time.perf_counter()
    samples = read_samples(cfg.data.train, cfg.data, split=cfg.data.split, limit=cfg.data.limit, skipped=[])
    t_read = time.perf_counter() - t0
    path = resolve_model(cfg.model.name_or_path)
    family = detect_family(path, cfg.model.family)
    processor = family.build_processor(path, cfg.model)
    t0 = time.perf_counter()
    _, fit = fit_to_length(samples, family, processor, cfg.model.max_length, target=normalize_target)
    t_count = time.perf_counter() - t0
    widths = sorted(s.image.width for s in samples)
    result = {"config": args.config, "overrides": given,
              "renderer": get_renderer("auto").name, "n": len(samples), "max_length": cfg.model.max_length,
              "max_image_tokens": family.max_image_tokens(processor), "lengths": fit.percentiles(),
              "dropped": len(fit.dropped), "median_image_width": widths[len(widths) // 2],
              "seconds_reading": round(t_read, 1), "seconds_counting": round(t_count, 2)}
    print(json.dumps(result))
    print(fit.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
