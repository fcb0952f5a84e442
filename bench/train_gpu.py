"""GPU training benchmark: `texocr train` (LoRA, 4-bit QLoRA) against a plain transformers + peft loop
(bench/plain_loop.py) on the same full-size Qwen2-VL model (random weights), batch, images and precision.

Run on a CUDA machine from the repository root (bitsandbytes needed for QLoRA):

    PYTHONPATH=src python3 bench/train_gpu.py --shape 2b --batch 32 --work /tmp/bench --out results.json
    PYTHONPATH=src python3 bench/train_gpu.py --shape 7b --batch 8 32 --runs texocr-lora plain-lora

What it does: builds the model from the published shape (config only; random bf16 weights, a small
character tokenizer but the real vocab_size), renders 448x112 formula images with PIL, then for each
run starts a fresh process (clean peak-memory counters) and times steps 11..N (10 warm-up steps).
texocr's throughput comes from its own logs (logs/metrics.csv wall-clock rows), the plain loop's from
CUDA-synchronized timers. Results: one JSON line per run, a markdown table at the end.
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

SHAPES = {"2b": "qwen2_vl-2b", "7b": "qwen2_vl-7b", "tiny": "qwen2_vl-7b"}
"""--shape -> an architecture of bench/seeds_gpu.py (published dimensions); `tiny` shrinks it for a CPU dry run."""
WARMUP = 10


def build_model(shape: str, out: Path) -> Path:
    """Save a random-weight Qwen2-VL of `shape` with texocr's processor layout (no hub access)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from seeds_gpu import save_random

    return save_random(SHAPES[shape], out, tiny=shape == "tiny")


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
model: {{name_or_path: {model}, family: qwen2_vl, method: {method}, lora_r: 16, lora_alpha: 16,
        gradient_checkpointing: true, dtype: {dtype}, attn_implementation: sdpa, max_length: 1024}}
data: {{train: [{data}], val: []}}
train: {{output_dir: {out}, max_steps: {steps}, batch_size: {batch}, lr: 2.0e-4, warmup_ratio: 0.0,
        logging_steps: 1, save_steps: 0, eval_steps: 0, precision: {precision}, dataloader_workers: {workers}}}
""")
    rc = cli(["train", "--config", str(cfg)])
    assert rc == 0, f"texocr train exited {rc}"
    losses = read_csv_log(out / "logs" / "metrics.csv", "loss", with_time=True)
    (t0, _), (t1, last) = losses[warmup], losses[steps]
    step_s = [round(losses[s][0] - losses[s - 1][0], 3) for s in range(warmup + 1, steps + 1)]
    res = {"loop": "texocr", "method": method, "batch": batch, "steps": steps - warmup,
           "samples_per_s": (steps - warmup) * batch / (t1 - t0), "s_per_step": (t1 - t0) / (steps - warmup),
           "step_s": step_s, "final_loss": last}
    return res | cuda_memory()


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
    ap.add_argument("--runs", nargs="+", default=["texocr-lora", "plain-lora", "texocr-qlora", "plain-qlora"])
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
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for batch in args.batch:
        for run in args.runs:
            loop, method = run.split("-")
            if loop == "texocr":
                cmd = [sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--work", str(work), "--workers", str(args.workers), "--one", f"{method}:{batch}"]
            else:
                cmd = [sys.executable, str(Path(__file__).with_name("plain_loop.py")), "--model", str(model),
                       "--data", str(data), "--batch", str(batch), "--warmup", str(args.warmup),
                       "--steps", str(args.steps - args.warmup)] + (["--qlora"] if method == "qlora" else [])
                if args.shape == "tiny":
                    cmd += ["--device", "cpu"]
            t = time.time()
            proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith(("RESULT ", "{"))]
            if proc.returncode != 0 or not lines:
                print(f"{run} b{batch} FAILED ({proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
                continue
            res = json.loads(lines[-1].removeprefix("RESULT "))
            res.update(shape=args.shape, wall_s=round(time.time() - t, 1))
            results.append(res)
            print(json.dumps(res), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(res) + "\n")

    print("\n| shape | loop | method | batch | samples/s | s/step | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['loop']} | {r['method']} | {r['batch']} | {r['samples_per_s']:.1f} | "
              f"{r['s_per_step']:.3f} | {r.get('peak_alloc_gib') or 0:.1f} | {r.get('peak_reserved_gib') or 0:.1f} |")


if __name__ == "__main__":
    main()
