"""`texocr export`: fold a LoRA adapter into its base model and save a plain, standalone checkpoint.

    texocr export --model Qwen/Qwen2-VL-7B-Instruct --adapter runs/qwen2vl/adapter --out exported/qwen2vl
    texocr export --model runs/qwen2vl/adapter --out exported/qwen2vl     # the adapter names its base

Every LoRA layer is merged (`merge_and_unload`), vision-tower adapters included; the result and its
processor load with `from_pretrained` and need neither peft nor texocr. A QLoRA adapter is merged into
the unquantized base (loaded in `--dtype`), which is what its 4-bit training approximated. A model without
an adapter (a full fine-tune, a pretraining run's `model/`) is saved again in `--dtype`, e.g. bfloat16 to halve
a float32 checkpoint. The Recognizer settings the run was saved with (`eval` keys such as `glyph_height`) go into
the folder's `texocr_options.json`, so the exported model reads as the run did.

    texocr export --model runs/a/model --average runs/b/model runs/c/model --out exported/soup

`--average` saves the weighted mean of the weights of `--model` and these models (a "model soup", Wortsman et
al. 2022): runs fine-tuned from one common starting model can sit in one basin, where their mean may read better
than each of them at no cost at inference (measured once here: texocr's default v10, the mean of v7 and two runs
from it, reads better than each of the three; bench/compact.md). Every model must have the same architecture (parameter names and shapes) and the same
vocabulary; each may be an adapter folder (merged first). The first model's processor and options are kept.
A weighted mean of `state_dict`s needs no library beyond torch (peft's `add_weighted_adapter` combines
adapters, not whole models), so it is written here, with the checks that make a mean meaningful.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from texocr.models.loading import LoadedModel

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the base model (local dir or hub id), or an adapter dir")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter directory (adapter_config.json)")
    parser.add_argument("--out", required=True, help="output directory (created; must be empty if it exists)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="dtype of the merged weights (auto: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--device", default=None, help="where to merge (default: cuda if available, else cpu)")
    parser.add_argument("--average", nargs="+", default=None, metavar="MODEL",
                        help="save the mean of the weights of --model and these models (same architecture "
                             "and vocabulary, e.g. runs fine-tuned from one model)")
    parser.add_argument("--weights", nargs="+", type=float, default=None, metavar="W",
                        help="with --average: one weight per model, --model first (default: equal)")


def main(args: argparse.Namespace) -> int:
    out = export(args.model, args.out, adapter=args.adapter, dtype=args.dtype, device=args.device,
                 average=args.average, weights=args.weights)
    print(f"{'averaged' if args.average else 'merged'} model + processor saved to {out}")
    return 0


def export(model: str, out: str | Path, *, adapter: str | None = None, dtype: str = "auto",
           device: str | None = None, average: list[str] | None = None, weights: list[float] | None = None) -> Path:
    """Load `model` (+ `adapter`), merge, save model + processor to `out`; returns `out`. With `average`, the
    saved weights are the `weights`-weighted mean of `model`'s and those models' (module doc)."""
    from texocr.config import ModelConfig
    from texocr.errors import TexocrError
    from texocr.models.loading import load_model, resolve_model
    from texocr.models.saved import OPTIONS_FILE, read_saved

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TexocrError(f"--out {out} exists and is not an empty directory")
    if dtype not in DTYPES:
        raise TexocrError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    models = [model, *(average or [])]
    shares = _weights(len(models), weights, averaging=bool(average))
    # averaged in float32 (bf16 sums of 10^7 weights would round), then cast to the asked dtype
    cfg = ModelConfig(name_or_path=model, adapter=adapter, dtype="float32" if average else dtype)  # type: ignore[arg-type]
    loaded = load_model(cfg, training=False, device=device)  # merges an adapter into the weights
    merged = loaded.model
    if average:
        mean_weights(loaded, average, shares)
        if dtype != "float32":
            from texocr.models.loading import resolve_dtype

            torch_dtype = resolve_dtype(dtype, loaded.device)
            merged.to(torch_dtype)
            for c in (merged.config, *(getattr(merged.config, n, None) for n in merged.config.sub_configs)):
                if c is not None:  # the config says what the file holds, as a model loaded in that dtype does
                    c.dtype = torch_dtype
    merged.config.use_cache = True
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    loaded.processor.save_pretrained(str(out))
    # e.g. the glyph height the run trained and read at (`default` is the shipped folder, which has them too)
    options = read_saved(resolve_model(model), adapter).options
    if options:
        (out / OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n")
    (out / "texocr_export.json").write_text(json.dumps(
        {"base": model, "adapter": adapter, "family": loaded.family.name, "dtype": str(loaded.dtype),
         **({"averaged": models, "weights": shares} if average else {})}, indent=2) + "\n")
    return out


def _weights(n: int, weights: list[float] | None, *, averaging: bool) -> list[float]:
    from texocr.errors import TexocrError

    if weights is None:
        return [1.0 / n] * n
    if not averaging:
        raise TexocrError("--weights needs --average")
    if len(weights) != n or any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise TexocrError(f"--weights: give {n} non-negative numbers (--model first) with a positive sum, "
                          f"got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def _vocab(processor: Any) -> dict[str, int]:
    return dict(getattr(processor, "tokenizer", processor).get_vocab())


def mean_weights(loaded: LoadedModel, others: list[str], weights: list[float]) -> None:
    """Set `loaded.model`'s floating-point weights (float32) to `weights[0]` x its own + `weights[i]` x those of
    `others[i - 1]`, loaded one at a time; other tensors (integer buffers) must be equal. Raises `TexocrError`
    when a model differs in family, parameter names, shapes or vocabulary."""
    import torch

    from texocr.config import ModelConfig
    from texocr.errors import TexocrError
    from texocr.models.loading import load_model

    own = loaded.model.state_dict()
    total = {k: v.float() * weights[0] if v.is_floating_point() else v for k, v in own.items()}
    vocab = _vocab(loaded.processor)
    for other, w in zip(others, weights[1:]):
        got = load_model(ModelConfig(name_or_path=other, dtype="float32"), training=False, device=loaded.device)
        if got.family.name != loaded.family.name:
            raise TexocrError(f"--average {other}: a {got.family.name} model, not {loaded.family.name}")
        if _vocab(got.processor) != vocab:
            raise TexocrError(f"--average {other}: its vocabulary differs from the first model's: token ids "
                              "would mean different things, so its weights cannot be averaged")
        theirs = got.model.state_dict()
        if theirs.keys() != own.keys():
            diff = sorted(set(theirs) ^ set(own))
            raise TexocrError(f"--average {other}: other parameters than the first model ({len(diff)} differ, "
                              f"e.g. {diff[0]})")
        for k, v in theirs.items():
            if v.shape != own[k].shape:
                raise TexocrError(f"--average {other}: {k} is {tuple(v.shape)}, not {tuple(own[k].shape)}")
            if v.is_floating_point():
                total[k] += v.float() * w
            elif not torch.equal(v, own[k]):
                raise TexocrError(f"--average {other}: {k} (not a float tensor) differs from the first model's")
        del got, theirs
    # all means computed before any is written: tied weights (embeddings = output layer) are two keys of one tensor
    loaded.model.load_state_dict(total)
