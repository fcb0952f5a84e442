"""Mean validation loss (per answer token) of a model on labelled folders, through texocr's one Collator.

    python bench/val_loss.py --model runs/x/model --data .carry/val-real-im2latex --data .carry/val-real-crohme
    python bench/val_loss.py --model default --weights /tmp/old/w --data ...   # bf16 shards over a model folder

Used for issue 19's parity check: the old pretraining script and `texocr train`, the same number of steps from
the same start, compared on the same held-out images (bench/compact.md "Parity").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.data.sources import open_source
    from texocr.models.loading import load_model, resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--weights", default=None, help="a folder of model*.safetensors to load over --model")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50)
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = resolve_model(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        if a.weights:  # shards saved in the checkpoint's original key layout: loading a folder converts them
            model = str(Path(tmp) / "m")
            shutil.copytree(resolve_model(a.model), model,
                            ignore=shutil.ignore_patterns("model*.safetensors*", "*.md"))
            for f in Path(a.weights).glob("model*.safetensors*"):
                shutil.copy(f, Path(model) / f.name)
        loaded = load_model(ModelConfig(name_or_path=model, family="compact", dtype="float32"), device=device)
    loaded.model.eval()
    collate = Collator(loaded, 512, normalize=True)
    out = {}
    for folder in a.data:
        samples = [s for _, s in zip(range(a.limit), open_source(folder))]
        total, tokens = 0.0, 0
        for i in range(0, len(samples), a.batch_size):
            batch = {k: v.to(device) for k, v in collate(samples[i:i + a.batch_size]).items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            with torch.no_grad():
                total += float(loaded.model(**batch).loss) * n
            tokens += n
        out[Path(folder).name] = round(total / tokens, 4)
    print(json.dumps({"model": a.model, "weights": a.weights, "val_loss": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
