"""Pretrain texocr's compact model from scratch on synthetic formulas rendered on the fly.

GPU machine (16 cores, no TeX: the `auto` renderer picks the pip renderer, ziamath + resvg), in commands of
at most 10 minutes that resume from the newest complete checkpoint kept on the warm machine:

    timeout 570 python scripts/pretrain_compact.py --config configs/compact/pretrain.yaml   # repeat until done

CPU smoke run (a few steps, tiny model, ~1-2 minutes on 2 cores):

    .venv/bin/python scripts/pretrain_compact.py --config configs/compact/pretrain.yaml --size tiny \\
        --train.output_dir runs/compact-smoke --train.max_steps 3 --train.batch_size 4 \\
        --train.save_steps 2 --train.eval_steps 0 --train.dataloader_workers 0 --data.val_limit 4

What it does: builds the random initial model once (`texocr.models.compact.build_compact` into
`<output_dir>/init`), then runs texocr's one training path (`texocr.train.train`, full training) with the
config's `model` section pointed at that init and `train.resume: latest`. Training data is a lazy
`SyntheticSource` (`data.synthetic_n` samples of `data.synthetic_style`, rendered by DataLoader workers when
indexed) instead of the materialized list that `texocr train` reads, so no sample is rendered before it is
needed; validation is a small synthetic set with its own seed. A command killed by `timeout` loses at most
`train.save_steps` steps: only checkpoints marked complete are resumed from.

KNOWN PROBLEM (transformers 5.17, huggingface/transformers#43701): the Trainer saves Qwen2-VL checkpoints in the
original key layout (`visual.*`, `model.layers.*`) but resumes with a plain `load_state_dict`, so a resumed
run starts from the *initial* weights ("There were missing keys in the checkpoint model loaded: ..."). Until
texocr.train saves checkpoints with `save_original_format=False` (or converts keys on resume), each command
of this recipe restarts from init: do not run it in several commands before that is fixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

log = logging.getLogger("texocr.pretrain_compact")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Other --section.key value pairs override the config (e.g. --train.lr 5e-4).")
    p.add_argument("--config", required=True, help="a YAML config, e.g. configs/compact/pretrain.yaml")
    p.add_argument("--size", default="base", choices=["base", "tiny"], help="compact model size (tiny: smoke runs)")
    p.add_argument("--renderer", default="auto", choices=["auto", "tex", "pip"],
                   help="formula renderer (auto: TeX when installed, else the pip renderer)")
    p.add_argument("--chunk", type=int, default=1,
                   help="formulas rendered together (the Trainer samples indices at random, so a chunk larger "
                        "than 1 renders formulas that are never used; >1 only pays with TeX)")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    from texocr.config import load_config
    from texocr.data.synth import SyntheticSource
    from texocr.models.compact import build_compact
    from texocr.train import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, overrides = parse_args(argv)
    cfg = load_config(args.config, overrides)
    out = Path(cfg.train.output_dir)
    init = out / "init"
    if not (init / "config.json").is_file():  # first command only; later ones resume from checkpoints
        log.info("building a random %s compact model in %s", args.size, init)
        build_compact(init, size=args.size, seed=cfg.train.seed)
    model_cfg = dataclasses.replace(cfg.model, name_or_path=str(init), family="compact", method="full")
    train_cfg = dataclasses.replace(cfg.train, resume=cfg.train.resume or "latest")
    cfg = dataclasses.replace(cfg, model=model_cfg, train=train_cfg)

    d = cfg.data
    train_set = SyntheticSource(n=d.synthetic_n, seed=d.seed, style=d.synthetic_style, renderer=args.renderer,
                                formulas=d.formulas, real_ratio=d.real_formula_ratio, augment=d.augment,
                                chunk=args.chunk)
    val_n = d.val_limit or 0
    val_source = SyntheticSource(n=val_n, seed=d.seed + 1_000_003, style=d.synthetic_style,
                                 renderer=args.renderer, augment=False, chunk=max(1, val_n))
    val = [val_source[i] for i in range(val_n)]
    result = train(cfg, train_samples=train_set, val_samples=val)  # type: ignore[arg-type]  # map-style source
    em = result.metrics.get("exact_match")
    print(f"compact pretraining: step {result.steps} -> {result.output_dir}"
          + (f"; synthetic val exact match {em:.3f}" if em is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
