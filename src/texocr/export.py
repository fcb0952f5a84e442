"""`texocr export`: fold a LoRA adapter into its base model and save a plain, standalone checkpoint.

    texocr export --model Qwen/Qwen2-VL-7B-Instruct --adapter runs/qwen2vl/adapter --out exported/qwen2vl
    texocr export --model runs/qwen2vl/adapter --out exported/qwen2vl     # the adapter names its base

Every LoRA layer is merged (`merge_and_unload`), vision-tower adapters included; the result and its
processor load with `from_pretrained` and need neither peft nor texocr. A QLoRA adapter is merged into
the unquantized base (loaded in `--dtype`), which is what its 4-bit training approximated. A model without
an adapter (a full fine-tune, a pretraining run's `model/`) is saved again in `--dtype`, e.g. bfloat16 to halve
a float32 checkpoint. The Recognizer settings the run was saved with (`eval` keys such as `glyph_height`) go into
the folder's `texocr_options.json`, so the exported model reads as the run did.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the base model (local dir or hub id), or an adapter dir")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter directory (adapter_config.json)")
    parser.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="dtype of the merged weights (auto: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--device", default=None, help="where to merge (default: cuda if available, else cpu)")


def main(args: argparse.Namespace) -> int:
    out = export(args.model, args.out, adapter=args.adapter, dtype=args.dtype, device=args.device)
    print(f"merged model + processor saved to {out}")
    return 0


def export(model: str, out: str | Path, *, adapter: str | None = None, dtype: str = "auto",
           device: str | None = None) -> Path:
    """Load `model` (+ `adapter`), merge, save model + processor to `out`; returns `out`."""
    from texocr.config import ModelConfig
    from texocr.errors import TexocrError
    from texocr.models.loading import load_model
    from texocr.models.saved import OPTIONS_FILE, read_saved

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TexocrError(f"--out {out} exists and is not an empty directory")
    if dtype not in DTYPES:
        raise TexocrError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    cfg = ModelConfig(name_or_path=model, adapter=adapter, dtype=dtype)  # type: ignore[arg-type]
    loaded = load_model(cfg, training=False, device=device)  # merges an adapter into the weights
    merged = loaded.model
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    loaded.processor.save_pretrained(str(out))
    options = read_saved(model, adapter).options  # e.g. the glyph height the run trained and read at
    if options:
        (out / OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n")
    (out / "texocr_export.json").write_text(json.dumps(
        {"base": model, "adapter": adapter, "family": loaded.family.name, "dtype": str(loaded.dtype)}, indent=2) + "\n")
    return out
