"""The seeds' setups at full size: each shipped config through `texocr train`, on a random-weight model built
from the published architecture (no hub), >= 20 optimizer steps, peak memory and samples/s recorded.

    PYTHONPATH=src python3 bench/seeds_gpu.py --work /tmp/seeds --out results.jsonl          # a CUDA GPU
    PYTHONPATH=src python3 bench/seeds_gpu.py --tiny --work /tmp/seeds-tiny                 # CPU dry run

Each architecture is built once on the GPU (bf16, random init there: CPU init of 8 B parameters is slow),
saved with texocr's processor layout (a character tokenizer; the published vocab_size), used by its seeds,
then deleted (disk). Each seed runs `texocr train --config configs/<seed>.yaml` in a fresh process (clean
peak-memory counters) with overrides that only point it at the random checkpoint and local data, cap the
steps, log every step and turn off validation and checkpoints; batch size, gradient accumulation, LoRA rank,
quantization, max_length and precision stay as shipped. samples/s = (batch x grad_accum) per optimizer step,
from the wall-clock rows of texocr's own logs/metrics.csv after `--warmup` steps.
`--tiny` shrinks every dimension and turns QLoRA into LoRA so the whole path runs on a CPU in a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# Published config.json values (hub repos named in each `source`); `tiny` replaces them for the CPU dry run.
ARCHS: dict[str, dict[str, Any]] = {
    "qwen2_vl-2b": {
        "source": "Qwen/Qwen2-VL-2B-Instruct config.json", "family": "qwen2_vl",
        "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                 "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                 "max_position_embeddings": 32768, "tie_word_embeddings": True},
        "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
    },
    "qwen2_vl-7b": {
        "source": "Qwen/Qwen2-VL-7B-Instruct config.json", "family": "qwen2_vl",
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 32768, "tie_word_embeddings": False},
        "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4},
    },
    "qwen2_5_vl-7b": {
        "source": "Qwen/Qwen2.5-VL-7B-Instruct config.json", "family": "qwen2_5_vl",
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 128000, "tie_word_embeddings": False},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                   "tokens_per_second": 2, "hidden_act": "silu"},
    },
    "paligemma-3b": {
        "source": "google/paligemma-3b-pt-224 config.json", "family": "paligemma",
        "text": {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                 "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 257216},
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                   "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "projection_dim": 2048},
        "projection_dim": 2048, "image_seq_length": 256,
    },
}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1280}
TINY_VISION = {"qwen2_vl": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2},
               "qwen2_5_vl": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                              "out_hidden_size": 64, "fullatt_block_indexes": [1]},
               "paligemma": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "image_size": 56, "projection_dim": 64}}

SEEDS: dict[str, tuple[str, str]] = {  # name: (shipped config, architecture)
    "paligemma-3b-qlora": ("configs/paligemma/3b-qlora.yaml", "paligemma-3b"),
    "qwen2_vl-7b-lora": ("configs/qwen2_vl/7b-lora.yaml", "qwen2_vl-7b"),
    "qwen2_vl-7b-qlora": ("configs/qwen2_vl/7b-qlora.yaml", "qwen2_vl-7b"),
    "qwen2_5_vl-7b-lora": ("configs/qwen2_5_vl/7b-lora.yaml", "qwen2_5_vl-7b"),
}


def arch_config(arch: str, tiny: bool = False) -> dict[str, Any]:
    """The architecture's text/vision dimensions, shrunk when `tiny`."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ARCHS[arch].items()}
    if tiny:
        spec["text"].update(TINY_TEXT)
        if spec["family"] == "paligemma":
            spec["text"].update(num_key_value_heads=1, head_dim=16, vocab_size=1344)  # + loc/seg tokens
            spec.update(projection_dim=64, image_seq_length=16)
        spec["vision"].update(TINY_VISION[spec["family"]])
    return spec


def _qwen(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(config, processor) of a Qwen2-VL / Qwen2.5-VL with texocr's character tokenizer."""
    import transformers

    from texocr.models.qwen_vl import QWEN_SPECIALS
    from texocr.models.registry import get_family
    from texocr.models.tiny import char_tokenizer

    fam = get_family(spec["family"])
    tok = char_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    tie = spec["text"]["tie_word_embeddings"]
    text = {**spec["text"], "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
    if spec["text"]["hidden_size"] < 1024:  # tiny: mrope sections must add up to head_dim / 2
        text["rope_parameters"]["mrope_section"] = [2, 3, 3]
    vision = {**spec["vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    cls = transformers.Qwen2VLConfig if spec["family"] == "qwen2_vl" else transformers.Qwen2_5_VLConfig
    config = cls(text_config=text, vision_config=vision, tie_word_embeddings=tie,
                 image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                 vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    ip = transformers.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = fam.processor_class()(ip, tok, chat_template=fam.chat_template)
    fam.configure_processor(processor, None)
    return config, processor


def _paligemma(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(config, processor) of a PaliGemma (Gemma text, SigLIP vision) with a character tokenizer."""
    from transformers import PaliGemmaConfig

    from texocr.models.tiny_others import paligemma_processor

    processor, _, ids = paligemma_processor(spec["vision"]["image_size"], spec["image_seq_length"])
    text = {**spec["text"], "model_type": "gemma", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
            "pad_token_id": ids["<pad>"], "eos_token_id": ids["<eos>"], "bos_token_id": ids["<bos>"]}
    vision = {**spec["vision"], "vision_use_head": False}
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                             vocab_size=text["vocab_size"], projection_dim=spec["projection_dim"],
                             hidden_size=text["hidden_size"])
    return config, processor


def build_random(arch: str, device: str, *, tiny: bool = False) -> tuple[Any, Any]:
    """(model, processor): random weights of `arch`, initialised on `device` (bf16 on CUDA, float32 on a CPU)."""
    import torch
    import transformers

    spec = arch_config(arch, tiny)
    config, processor = (_paligemma if spec["family"] == "paligemma" else _qwen)(spec)
    cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
           "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
           "paligemma": transformers.PaliGemmaForConditionalGeneration}[spec["family"]]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model, processor


def save_random(arch: str, out: Path, *, tiny: bool = False) -> Path:
    """Build `arch` on the GPU (CPU when tiny) and save model + processor to `out` (kept if already there)."""
    import torch

    if (out / "config.json").is_file():
        return out
    t = time.time()
    model, processor = build_random(arch, "cpu" if tiny else "cuda", tiny=tiny)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"built {arch}: {n / 1e9:.3f} B parameters -> {out} ({time.time() - t:.0f} s)", flush=True)
    return out


def run_seed(seed: str, model: Path, data: Path, work: Path, steps: int, tiny: bool) -> dict[str, Any]:
    """One `texocr train --config <shipped config>` in this process; peak memory from CUDA."""
    import torch

    from texocr.cli import main as cli
    from texocr.config import load_config

    config, _ = SEEDS[seed]
    out = work / f"run-{seed}"
    overrides = ["--model.name_or_path", str(model), "--data.train", f"[{data}]", "--data.val", "[]",
                 "--train.output_dir", str(out), "--train.max_steps", str(steps), "--train.logging_steps", "1",
                 "--train.save_steps", "0", "--train.eval_steps", "0"]
    if tiny:  # the CPU dry run: no bitsandbytes kernels, few workers
        overrides += ["--model.method", "lora", "--train.dataloader_workers", "0", "--train.batch_size", "2"]
    cfg = load_config(REPO / config, overrides)
    rc = cli(["train", "--config", str(REPO / config), *overrides])
    if rc != 0:
        raise SystemExit(f"texocr train exited {rc}")
    res: dict[str, Any] = {"seed": seed, "config": config, "method": cfg.model.method, "batch": cfg.train.batch_size,
                           "grad_accum": cfg.train.grad_accum, "max_length": cfg.model.max_length, "out": str(out)}
    if torch.cuda.is_available():
        stats = torch.cuda.memory_stats()
        res.update(peak_alloc_gib=torch.cuda.max_memory_allocated() / 2**30,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                   alloc_retries=stats.get("num_alloc_retries", 0), gpu=torch.cuda.get_device_name(0))
    return res


def throughput(metrics_csv: Path, samples_per_step: int, warmup: int) -> dict[str, Any]:
    """samples/s and s/step over the steps after `warmup`, from texocr's wall-clock loss rows."""
    from texocr.train_callbacks import read_csv_log

    rows = read_csv_log(metrics_csv, "loss", with_time=True)
    last = max(rows)
    first = min(warmup, last - 1)
    (t0, _), (t1, loss) = rows[first], rows[last]
    steps = last - first
    times = [rows[s][0] - rows[s - 1][0] for s in range(first + 1, last + 1) if s in rows and s - 1 in rows]
    return {"steps": last, "timed_steps": steps, "samples_per_s": steps * samples_per_step / (t1 - t0),
            "s_per_step": (t1 - t0) / steps, "s_per_step_max": max(times) if times else None,
            "final_loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", default=list(SEEDS), choices=list(SEEDS))
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per seed (>= 20 for the issue)")
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput")
    ap.add_argument("--work", default="/tmp/texocr-seeds")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per seed run")
    ap.add_argument("--tiny", action="store_true", help="tiny dimensions, LoRA, CPU: a dry run of the whole path")
    ap.add_argument("--keep", action="store_true", help="keep the built checkpoints")
    ap.add_argument("--one", nargs=2, metavar=("SEED", "MODEL"), help=argparse.SUPPRESS)  # internal: a child run
    args = ap.parse_args()

    work = Path(args.work)
    data = work / "data"
    if args.one:
        seed, model = args.one
        print("RESULT " + json.dumps(run_seed(seed, Path(model), data, work, args.steps, args.tiny)), flush=True)
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_data import build_data

    build_data(data, 64 * args.steps if not args.tiny else 16)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results = []
    archs = list(dict.fromkeys(SEEDS[s][1] for s in args.seeds))
    for arch in archs:
        model = work / f"model-{arch}"
        try:
            save_random(arch, model, tiny=args.tiny)
        except Exception as e:  # noqa: BLE001  (one architecture failing must not lose the others)
            print(f"{arch}: build FAILED: {type(e).__name__}: {e}", flush=True)
            continue
        for seed in [s for s in args.seeds if SEEDS[s][1] == arch]:
            cmd = [sys.executable, __file__, "--work", str(work), "--steps", str(args.steps),
                   "--one", seed, str(model)] + (["--tiny"] if args.tiny else [])
            t = time.time()
            try:
                proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True,
                                      timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{seed}: TIMED OUT after {args.timeout} s", flush=True)
                continue
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{seed}: FAILED ({proc.returncode}):\n{proc.stderr[-4000:]}", flush=True)
                continue
            res = json.loads(lines[-1].removeprefix("RESULT "))
            res.update(throughput(Path(res["out"]) / "logs" / "metrics.csv", res["batch"] * res["grad_accum"],
                                  args.warmup))
            res.update(arch=arch, source=ARCHS[arch]["source"], wall_s=round(time.time() - t, 1),
                       date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
            results.append(res)
            print(json.dumps(res), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(res) + "\n")
        if not args.keep:
            shutil.rmtree(model, ignore_errors=True)

    print("\n| seed | method | batch x accum | steps | samples/s | s/step | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['seed']} | {r['method']} | {r['batch']}x{r['grad_accum']} | {r['steps']} | "
              f"{r['samples_per_s']:.1f} | {r['s_per_step']:.3f} | {r.get('peak_alloc_gib', 0):.1f} | "
              f"{r.get('peak_reserved_gib', 0):.1f} |")


if __name__ == "__main__":
    main()
