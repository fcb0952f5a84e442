"""CPU speed of texocr's compact model: HF `generate` vs the fast greedy loop, and of candidate architectures.

Run (about 5 minutes on 2 cores; random weights, so nothing to download):

    .venv/bin/python bench/compact_cpu.py                       # generate vs fast loop, 1 and 2 threads
    .venv/bin/python bench/compact_cpu.py --threads 1 --reps 20 --image 448x112
    .venv/bin/python bench/compact_cpu.py --candidates --only qwen-s --batch 1   # the architecture comparison

Default mode: the shipped `base` size (`texocr.models.compact`), random weights rounded through bfloat16 as
the shipped checkpoint is, one rendered-size formula image (`--image`, default 448x112 = 64 image tokens).
Each path decodes exactly `--new-tokens` tokens greedily (the end token is forbidden before that, as
`min_new_tokens` does), at batch 1 (median / p95 latency of `--reps` runs) and batch 32 (formulas/s), under
`torch.inference_mode()`, at each `--threads` count; wall time and process CPU time, and the load average.
Paths: `generate` (HF, a ready `GenerationConfig`), `fast-fp32` (`GreedyDecoder(half=False)`) and `fast`
(`GreedyDecoder`, float16 weight storage: what `Recognizer` uses for a bf16 checkpoint), plus the vision
tower alone. `--candidates`: each candidate architecture through `generate` (the table that chose `base`).
Results are recorded in bench/compact.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

IMG_W, IMG_H = 448, 112
VOCAB = 1024


@dataclass
class Candidate:
    name: str
    kind: str  # "qwen" | "ved"
    vis_depth: int
    vis_dim: int
    vis_heads: int
    txt_layers: int
    txt_hidden: int
    txt_heads: int
    txt_kv_heads: int
    txt_ffn: int
    patch: int = 14


# Decoding is memory-bound at batch 1 (every weight of the text tower is read once per new token), so the
# candidates keep the text tower small and put capacity into the vision tower, which runs once per image.
CANDIDATES = [
    Candidate("qwen-xs", "qwen", 6, 256, 4, 4, 256, 4, 2, 1024),
    Candidate("qwen-s", "qwen", 4, 256, 4, 4, 384, 6, 2, 1536),
    Candidate("qwen-b", "qwen", 8, 384, 6, 4, 256, 4, 2, 1024),
    Candidate("qwen-m", "qwen", 6, 384, 6, 6, 512, 8, 4, 2048),
    Candidate("qwen-base", "qwen", 7, 320, 5, 4, 256, 4, 2, 1024),  # texocr.models.compact SIZES["base"]
    Candidate("qwen-2l", "qwen", 7, 320, 5, 2, 384, 6, 2, 1536),  # fewer text layers: fewer ops per token
    Candidate("ved-xs", "ved", 6, 256, 4, 4, 256, 4, 4, 1024, patch=16),
    Candidate("ved-b", "ved", 8, 384, 6, 4, 256, 4, 4, 1024, patch=16),
]


def build_qwen(c: Candidate) -> torch.nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = c.txt_hidden // c.txt_heads
    half = head_dim // 2  # M-RoPE splits the rotary half into (temporal, height, width) sections
    hw = (half - half // 4) // 2
    cfg = Qwen2VLConfig(
        vision_config={"depth": c.vis_depth, "embed_dim": c.vis_dim, "num_heads": c.vis_heads,
                       "hidden_size": c.txt_hidden, "patch_size": c.patch, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "mlp_ratio": 4},
        text_config={"vocab_size": VOCAB, "hidden_size": c.txt_hidden, "intermediate_size": c.txt_ffn,
                     "num_hidden_layers": c.txt_layers, "num_attention_heads": c.txt_heads,
                     "num_key_value_heads": c.txt_kv_heads, "max_position_embeddings": 1024,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "mrope_section": [half - 2 * hw, hw, hw]},
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4,
        tie_word_embeddings=True,
    )
    cfg._attn_implementation = "sdpa"
    return Qwen2VLForConditionalGeneration(cfg).eval()


def qwen_inputs(c: Candidate, batch: int) -> dict:
    gh, gw = IMG_H // c.patch, IMG_W // c.patch
    n_patch = gh * gw
    n_tok = n_patch // 4
    ids = torch.tensor([[3] + [5] * n_tok + [4]] * batch)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == 5).int(),
        "pixel_values": torch.randn(batch * n_patch, 3 * 2 * c.patch * c.patch),
        "image_grid_thw": torch.tensor([[1, gh, gw]] * batch),
    }


def build_ved(c: Candidate) -> torch.nn.Module:
    from transformers import (
        TrOCRConfig,
        TrOCRForCausalLM,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTModel,
    )

    enc = ViTModel(ViTConfig(image_size=(IMG_H, IMG_W), patch_size=c.patch, hidden_size=c.vis_dim,
                             num_hidden_layers=c.vis_depth, num_attention_heads=c.vis_heads,
                             intermediate_size=4 * c.vis_dim, num_channels=3), add_pooling_layer=False)
    dec = TrOCRForCausalLM(TrOCRConfig(vocab_size=VOCAB, d_model=c.txt_hidden, decoder_layers=c.txt_layers,
                                       decoder_attention_heads=c.txt_heads, decoder_ffn_dim=c.txt_ffn,
                                       cross_attention_hidden_size=c.vis_dim, max_position_embeddings=512,
                                       use_learned_position_embeddings=True, layernorm_embedding=True,
                                       pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                       decoder_start_token_id=1))
    m = VisionEncoderDecoderModel(encoder=enc, decoder=dec)
    m.config.decoder_start_token_id = 1
    m.config.pad_token_id = 0
    m.config.eos_token_id = 2
    return m.eval()


def ved_inputs(c: Candidate, batch: int) -> dict:
    return {"pixel_values": torch.randn(batch, 3, IMG_H, IMG_W)}


def size_of(model: torch.nn.Module) -> tuple[int, float]:
    """(parameter count, fp32 safetensors file size in MB)."""
    n = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        mb = sum(f.stat().st_size for f in Path(d).glob("*.safetensors")) / 1e6
    return n, mb


def timed_generate(model, inputs: dict, new_tokens: int, cache: str | None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one greedy generation of exactly `new_tokens` tokens."""
    from transformers import GenerationConfig

    # A ready GenerationConfig skips generate()'s per-call check of the model config (~35 ms on this CPU).
    gc = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                          eos_token_id=2, pad_token_id=0, decoder_start_token_id=1, cache_implementation=cache)
    t, c = time.perf_counter(), time.process_time()
    out = model.generate(**inputs, generation_config=gc)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    assert out.shape[-1] >= new_tokens, out.shape
    return dt, dc


def run(c: Candidate, args) -> dict:
    torch.manual_seed(0)
    model = build_qwen(c) if c.kind == "qwen" else build_ved(c)
    n_params, mb = size_of(model)
    dtype = getattr(torch, args.dtype)
    model = model.to(dtype)
    make = qwen_inputs if c.kind == "qwen" else ved_inputs
    row = {"name": c.name, "params_m": n_params / 1e6, "mb": mb, "dtype": args.dtype,
           "cache": args.cache or "dynamic"}
    with torch.inference_mode():
        if 1 in args.batch:
            inp = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in make(c, 1).items()}
            timed_generate(model, inp, args.new_tokens, args.cache)  # warm-up
            runs = [timed_generate(model, inp, args.new_tokens, args.cache) for _ in range(args.reps)]
            lat = sorted(w for w, _ in runs)
            row["b1_median_ms"] = 1000 * statistics.median(lat)
            row["b1_p95_ms"] = 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            row["b1_cpu_ms"] = 1000 * statistics.median(c for _, c in runs)
        for b in [b for b in args.batch if b > 1]:
            inp = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in make(c, b).items()}
            timed_generate(model, inp, 4, args.cache)  # warm-up (short)
            runs = [timed_generate(model, inp, args.new_tokens, args.cache) for _ in range(max(1, args.reps // 5))]
            row[f"b{b}_per_s"] = b / statistics.median(w for w, _ in runs)
            row[f"b{b}_cpu_per_s"] = b / statistics.median(c for _, c in runs)
    return row


def build_base(size: str = "base") -> torch.nn.Module:
    """A compact model of `size` with random weights rounded through bfloat16 (as the shipped checkpoint is)."""
    from transformers import Qwen2VLForConditionalGeneration

    from texocr.models.compact import compact_config

    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(compact_config(size, vocab_size=1344)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model


def base_inputs(model, batch: int, width: int, height: int) -> dict:
    """What the processor gives for `batch` images of width x height (multiples of 28): ids + pixel patches."""
    cfg = model.config
    gh, gw = height // 14, width // 14
    n_tok = gh * gw // 4
    ids = torch.tensor([[cfg.vision_start_token_id] + [cfg.image_token_id] * n_tok + [cfg.vision_end_token_id]] * batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == cfg.image_token_id).int(),
            "pixel_values": torch.randn(batch * gh * gw, 3 * 2 * 14 * 14),
            "image_grid_thw": torch.tensor([[1, gh, gw]] * batch)}


def timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def decode_paths(model, n: int) -> dict:
    """name -> fn(inputs) decoding exactly n tokens greedily."""
    from transformers import GenerationConfig

    from texocr.models.compact_decode import GreedyDecoder

    eos, pad = model.config.text_config.eos_token_id or 2, 0
    gc = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=eos,
                          pad_token_id=pad)
    fast32, fast16 = GreedyDecoder(model, half=False), GreedyDecoder(model)

    def generate(inp: dict) -> None:
        with torch.inference_mode():
            out = model.generate(**inp, generation_config=gc)
        assert out.shape[1] - inp["input_ids"].shape[1] == n

    def fast(dec):
        def run(inp: dict) -> None:
            out = dec.generate(inp, max_new_tokens=n, min_new_tokens=n, eos_ids=[eos], pad_id=pad)
            assert out.tokens.shape[1] == n
        return run

    def vision(inp: dict) -> None:
        with torch.inference_mode():
            model.model.get_image_features(inp["pixel_values"], inp["image_grid_thw"])

    return {"generate": generate, "fast-fp32": fast(fast32), "fast": fast(fast16), "vision only": vision}


def run_decode(args) -> None:
    width, height = (int(v) for v in args.image.lower().split("x"))
    model = build_base(args.size)
    paths = decode_paths(model, args.new_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"size {args.size} ({n_params / 1e6:.2f}M parameters), image {width}x{height} "
          f"({width // 28 * (height // 28)} image tokens), {args.new_tokens} new tokens, "
          f"torch {torch.__version__}, load average before: {os.getloadavg()}")
    print("| threads | path | b1 median wall (ms) | b1 p95 wall (ms) | b1 median CPU (ms) | "
          + " | ".join(f"b{b} formulas/s wall (per CPU-s)" for b in args.batch if b > 1) + " | load avg (1 min) |")
    print("|---" * (6 + sum(b > 1 for b in args.batch)) + "|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, fn in paths.items():
            cells = [str(threads), name]
            inp = base_inputs(model, 1, width, height)
            fn(inp)  # warm-up
            runs = [timed(lambda fn=fn, inp=inp: fn(inp)) for _ in range(args.reps)]
            lat = sorted(w for w, _ in runs)
            cells += [f"{1000 * statistics.median(lat):.0f}", f"{1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]:.0f}",
                      f"{1000 * statistics.median(c for _, c in runs):.0f}"]
            for b in [b for b in args.batch if b > 1]:
                inp = base_inputs(model, b, width, height)
                runs = [timed(lambda fn=fn, inp=inp: fn(inp)) for _ in range(max(1, args.reps // 5))]
                cells.append(f"{b / statistics.median(w for w, _ in runs):.1f} ({b / statistics.median(c for _, c in runs):.1f})")
            cells.append(f"{os.getloadavg()[0]:.1f}")
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--cache", default=None, help="generate cache_implementation, e.g. static")
    p.add_argument("--batch", type=int, nargs="*", default=[1, 32])
    p.add_argument("--new-tokens", type=int, default=60)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--candidates", action="store_true", help="compare candidate architectures through generate")
    p.add_argument("--image", default="448x112", help="image size WxH (multiples of 28) for the default mode")
    p.add_argument("--size", default="base", help="compact size for the default mode (texocr.models.compact.SIZES)")
    args = p.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if not args.candidates:
        run_decode(args)
        return
    args.threads = args.threads[0]
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} load average before: {os.getloadavg()}")
    print("| candidate | params (M) | safetensors fp32 (MB) | dtype | cache | b1 median (ms) | b1 p95 (ms) | b1 CPU (ms) | "
          + " | ".join(f"b{b} formulas/s (per CPU-s)" for b in args.batch if b > 1) + " |")
    for c in CANDIDATES:
        if args.only and c.name not in args.only:
            continue
        r = run(c, args)
        cells = [r["name"], f"{r['params_m']:.1f}", f"{r['mb']:.1f}", r["dtype"], r["cache"],
                 f"{r.get('b1_median_ms', float('nan')):.0f}", f"{r.get('b1_p95_ms', float('nan')):.0f}",
                 f"{r.get('b1_cpu_ms', float('nan')):.0f}"]
        cells += [f"{r[f'b{b}_per_s']:.1f} ({r[f'b{b}_cpu_per_s']:.1f})" for b in args.batch if b > 1]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
