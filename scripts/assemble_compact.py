"""Turn the weight shards a pretraining command brought back into a loadable compact model folder (issue 6).

    .venv/bin/python scripts/assemble_compact.py --weights /work/.device/N/w --size small --out runs/compact-pre
    # a run that started from a model (INIT=..., maybe GROW=...): its tokenizer and processor come from that model
    .venv/bin/python scripts/assemble_compact.py --weights W --size small-v7 --init src/texocr/assets/default-model --out M
    .venv/bin/texocr eval --model runs/compact-pre --data runs/im2latex-test --out runs/eval-pre   # measure it
    # only when it measurably improves the numbers (bench/compact.md): --out src/texocr/assets/default-model

The GPU machine sends back only bf16 weight shards (`$OUT` holds 8 files), not the config, tokenizer or
processor: those are rebuilt here with `build_compact(size, seed)`, which is deterministic (the tokenizer's
vocabulary is frozen in `texocr/assets/latex_vocab.txt`), or taken from `--init`, the model the run started from
(grown to `--size` like pretraining did), for a model whose tokenizer is not the builder's. The tokenizer is checked against the
`tokenizer_sha256` that pretraining wrote into `metrics.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path


def assemble(weights: Path, size: str, out: Path, seed: int = 0, init: Path | None = None) -> Path:
    """Build the init of `size` (or grow `init` to it), swap in the shards of `weights`, save bf16 to `out`."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from texocr.errors import TexocrError
    from texocr.models.compact import build_compact, grow_compact

    shards = sorted(weights.glob("model*.safetensors*"))
    if not any(s.suffix == ".safetensors" for s in shards):
        raise TexocrError(f"{weights}: no model*.safetensors shards")
    with tempfile.TemporaryDirectory(prefix="texocr-assemble-") as tmp:
        folder = grow_compact(init, size, Path(tmp) / "m") if init else build_compact(Path(tmp) / "m", size=size,
                                                                                        seed=seed)
        metrics = weights / "metrics.json"
        want = json.loads(metrics.read_text())["tokenizer_sha256"] if metrics.is_file() else None
        got = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
        if want and want != got:
            raise TexocrError(f"tokenizer differs from the one trained with ({got[:12]} vs {want[:12]}): "
                              "same --size and seed? same texocr version? (a run from INIT: pass --init)")
        for f in folder.glob("model*.safetensors*"):
            f.unlink()
        for f in shards:
            shutil.copy(f, folder / f.name)
        try:
            model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16)
        except RuntimeError as e:  # shape mismatches: the shards were trained at another size
            raise TexocrError(f"the shards in {weights} do not fit a {size!r} compact model: {e}") from e
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        model.save_pretrained(out)
        for f in folder.iterdir():  # tokenizer, processor and chat template as built
            if not f.name.startswith("model") and f.name not in ("config.json", "generation_config.json"):
                shutil.copy(f, out / f.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="folder with the shards (and metrics.json) from $OUT")
    p.add_argument("--size", default="small", help="the --size pretraining used")
    p.add_argument("--seed", type=int, default=0, help="the train.seed pretraining used")
    p.add_argument("--init", default=None, help="the model the run started from (its INIT), for the tokenizer")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = assemble(Path(args.weights), args.size, Path(args.out), args.seed, Path(args.init) if args.init else None)
    print(f"wrote {out}: {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
