"""GPU training speed: `texocr train` against a plain transformers + peft loop and Unsloth (LoRA, 4-bit QLoRA), on
the same full-size Qwen2-VL model (random weights), images, batch sizes, LoRA settings and allocator settings.

Run on a CUDA machine from the repository root (bitsandbytes needed for QLoRA; Unsloth carried as
../shared/anchors/README.md shows, on PYTHONPATH; where it is absent its rows say "not installed"):

    PYTHONPATH=src python3 bench/train_speed.py --shape 7b --batch 32 8 --out results.jsonl
    PYTHONPATH=src python3 bench/train_speed.py --shape 7b --batch 32 --runs texocr-lora unsloth-lora
    PYTHONPATH=src .venv/bin/python bench/train_speed.py --shape tiny --batch 2 --steps 4 --warmup 2  # CPU dry run

What it does: builds the model from the published shape (config only; random bf16 weights, texocr's character
tokenizer with the real vocab size), renders 448x112 formula images with PIL, then runs each (loop, method, batch)
in a fresh process (clean peak-memory counters; `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` for all) and
times the steps after the warm-up. The plain and Unsloth loops (bench/plain_loop.py) encode their batches up front
(data preparation costs them nothing); texocr's throughput comes from its own log (logs/metrics.csv wall-clock
rows), its tokens per sample from its collator on the same data. Printed per run: samples/s, tokens/s, peak
memory (allocated and reserved), MFU, and texocr's ratios to the other two at the same method and batch.

MFU counts the text tower's matrix products only: 4 x N_text FLOPs per token (forward, and the backward pass to
the activations: LoRA trains no base weight, so there are no weight-gradient products; the adapters' own are
negligible; recomputation under gradient checkpointing is not counted), over the GPU's dense bf16 peak (H100 /
H200: 989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpu_data import build_data

SHAPES = {"2b": "qwen2_vl-2b", "7b": "qwen2_vl-7b", "2.5-7b": "qwen2_5_vl-7b", "tiny": "qwen2_vl-7b",
          "2.5-tiny": "qwen2_5_vl-7b"}
"""--shape -> an architecture of bench/seeds_gpu.py (published dimensions); `*tiny` shrinks it for a CPU dry run."""


def family_of(model: Path) -> str:
    """texocr's family name of a built bench model (`qwen2_vl` or `qwen2_5_vl`), from its folder name."""
    return "qwen2_5_vl" if "2.5-" in model.name else "qwen2_vl"
WARMUP = 10


def build_model(shape: str, out: Path) -> Path:
    """Save a random-weight Qwen2-VL of `shape` with texocr's processor layout (no hub access)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from seeds_gpu import save_random

    return save_random(SHAPES[shape], out, tiny=shape.endswith("tiny"))


def run_texocr(model: Path, data: Path, work: Path, method: str, batch: int, steps: int, workers: int,
               warmup: int) -> dict:
    """One `texocr train` run in this process; throughput from its CSV log, peak memory from CUDA."""
    from texocr.cli import main as cli
    from texocr.train_callbacks import read_csv_log

    out = work / f"run-texocr-{method}-b{batch}"
    cfg = work / f"{method}.yaml"
    tiny = model.name.endswith("tiny")  # the CPU dry run
    dtype, precision = ("auto", "auto") if tiny else ("bfloat16", "bf16")
    cfg.write_text(f"""# texocr train --config {cfg}
model: {{name_or_path: {model}, family: {family_of(model)}, method: {method}, lora_r: 16, lora_alpha: 16,
        gradient_checkpointing: true, dtype: {dtype}, attn_implementation: sdpa, max_length: 1024}}
data: {{train: [{data}], val: []}}
train: {{output_dir: {out}, max_steps: {steps}, batch_size: {batch}, lr: 2.0e-4, warmup_ratio: 0.0,
        logging_steps: 1, save_steps: 0, eval_steps: 0, precision: {precision}, dataloader_workers: {workers}}}
""")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # "step levers: ..."
    rc = cli(["train", "--config", str(cfg)])
    assert rc == 0, f"texocr train exited {rc}"
    losses = read_csv_log(out / "logs" / "metrics.csv", "loss", with_time=True)
    (t0, _), (t1, last) = losses[warmup], losses[steps]
    step_s = [round(losses[s][0] - losses[s - 1][0], 3) for s in range(warmup + 1, steps + 1)]
    res = {"loop": "texocr", "method": method, "batch": batch, "steps": steps - warmup,
           "samples_per_s": (steps - warmup) * batch / (t1 - t0), "s_per_step": (t1 - t0) / (steps - warmup),
           "step_s": step_s, "final_loss": last}
    res["tokens_per_sample"] = texocr_tokens_per_sample(model, data)
    res["tokens_per_s"] = res["samples_per_s"] * res["tokens_per_sample"]
    return res | cuda_memory()


def texocr_tokens_per_sample(model: Path, data: Path, n: int = 64) -> float:
    """Mean non-padding tokens of a training sample as texocr's collator makes it (prompt, image, answer)."""
    import itertools
    from types import SimpleNamespace

    from texocr.data.collate import Collator
    from texocr.data.sources import open_source
    from texocr.models.registry import get_family

    family = get_family(family_of(model))
    processor = family.processor_class().from_pretrained(str(model))
    collate = Collator(SimpleNamespace(family=family, processor=processor, model=None), 1024, normalize=True)
    samples = list(itertools.islice(open_source(str(data)), n))
    return float(collate(samples)["attention_mask"].sum()) / len(samples)


PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
"""Dense bf16 tensor-core peak FLOP/s by GPU name (SXM parts)."""


def text_params(model: Path) -> int:
    """Parameters of the text tower's matrices (decoder layers + lm_head; embeddings excluded), from the config."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        m = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model))
    layers = m.model.language_model.layers
    return sum(p.numel() for p in layers.parameters()) + m.lm_head.weight.numel()


def mfu(tokens_per_s: float | None, n_text: int) -> float | None:
    import torch

    if not tokens_per_s or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return 4 * n_text * tokens_per_s / peak if peak else None


def cuda_memory() -> dict:
    """Peak allocated/reserved GiB and allocator retries (cudaMalloc failures that forced a cache flush)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0),
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="2b")
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--steps", type=int, default=40, help="total steps per run (the first --warmup are not timed)")
    ap.add_argument("--warmup", type=int, default=WARMUP, help="steps left out of the timing")
    ap.add_argument("--runs", nargs="+", default=["plain-lora", "unsloth-lora", "texocr-lora", "plain-qlora",
                                                  "unsloth-qlora", "texocr-qlora"],
                    help="LOOP-METHOD: loop texocr, plain or unsloth; method lora or qlora")
    ap.add_argument("--workers", type=int, default=4, help="texocr's dataloader workers")
    ap.add_argument("--work", default="/tmp/texocr-bench")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: a single texocr run
    args = ap.parse_args()

    work = Path(args.work)
    model, data = work / f"qwen2vl-{args.shape}", work / "data"
    if args.one:  # child process
        method, batch = args.one.split(":")
        print("RESULT " + json.dumps(run_texocr(model, data, work, method, int(batch), args.steps, args.workers,
                                                    args.warmup)))
        return

    t = time.time()
    build_model(args.shape, model)
    build_data(data, max(args.batch) * args.steps + 64)
    print(f"setup {time.time() - t:.0f} s", flush=True)
    results = []
    n_text = text_params(model)
    # the same allocator settings for every loop (the anchors' Unsloth runs used expandable segments)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
    for batch in args.batch:
        for run in args.runs:
            loop, method = run.split("-")
            if loop == "texocr":
                cmd = [sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--work", str(work), "--workers", str(args.workers), "--one", f"{method}:{batch}"]
            else:
                cmd = [sys.executable, str(Path(__file__).with_name("plain_loop.py")), "--model", str(model),
                       "--data", str(data), "--batch", str(batch), "--warmup", str(args.warmup), "--loop", loop,
                       "--steps", str(args.steps - args.warmup)] + (["--qlora"] if method == "qlora" else [])
                if args.shape.endswith("tiny"):
                    cmd += ["--device", "cpu"]
            t = time.time()
            proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith(("RESULT ", "{"))]
            if proc.returncode != 0 or not lines:
                print(f"{run} b{batch} FAILED ({proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                continue
            res = json.loads(lines[-1].removeprefix("RESULT "))
            res.update(shape=args.shape, wall_s=round(time.time() - t, 1), mfu=mfu(res.get("tokens_per_s"), n_text),
                       gpu=gpu_name())
            results.append(res)
            print(json.dumps(res), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(res) + "\n")

    print(table(results))


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def table(results: list[dict]) -> str:
    """Markdown: one row per run, texocr's ratios to plain and Unsloth at the same method and batch."""
    def f(v: float | None, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else ""

    by = {(r["loop"], r["method"], r["batch"]): r for r in results if "error" not in r}
    lines = [("| shape | loop | method | batch | samples/s | tokens/s | peak alloc GiB | peak reserved GiB | MFU | "
              "texocr / plain (speed, memory) | texocr / Unsloth (speed, memory) |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('shape', '')} | {r['loop']} | {r['method']} | {r['batch']} | {r['error'][:80]} "
                         "| | | | | | |")
            continue
        ratios = []
        if r["loop"] == "texocr":
            for other in ("plain", "unsloth"):
                o = by.get((other, r["method"], r["batch"]))
                ok = o and o.get("peak_alloc_gib") and r.get("peak_alloc_gib")
                ratios.append(f"{r['samples_per_s'] / o['samples_per_s']:.2f}x, "
                              f"{r['peak_alloc_gib'] / o['peak_alloc_gib']:.2f}x" if ok else
                              (f"{r['samples_per_s'] / o['samples_per_s']:.2f}x" if o else ""))
        lines.append(f"| {r.get('shape', '')} | {r['loop']} | {r['method']} | {r['batch']} | "
                     f"{f(r['samples_per_s'], '.1f')} | {f(r.get('tokens_per_s'), '.0f')} | "
                     f"{f(r.get('peak_alloc_gib'), '.1f')} | {f(r.get('peak_reserved_gib'), '.1f')} | "
                     f"{f(r.get('mfu'), '.1%')} | {' | '.join(ratios) if ratios else ' | '} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
