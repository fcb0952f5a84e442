"""Issue 17 on GPU machines: `texocr train` under `accelerate launch`, one process against several, DDP and FSDP.

    # one GPU (device tool, carry [".carry/unsloth"] for nothing but liger; ~3 min): FSDP (1 process) against DDP
    # (1 process) on the same batches, full fine-tuning of a small Qwen2-VL, losses compared step by step
    PYTHONPATH=src python3 bench/multi_gpu.py --part fsdp-vs-ddp --out $OUT/multi_gpu.jsonl
    # two GPUs (nvidia-h200-x2 or nvidia-h100-x2; ~8 min): Qwen2-VL-7B shape LoRA at batch 32 per GPU, 1 process
    # then 2 (DDP); then full fine-tuning with FSDP over 2 processes (samples/s, peak memory per GPU)
    PYTHONPATH=src python3 bench/multi_gpu.py --part scaling --gpus 2 --out $OUT/multi_gpu.jsonl
    # CPU dry run of the launch lines (tiny model, gloo; FSDP is not available to accelerate on a CPU)
    PYTHONPATH=src .venv/bin/python bench/multi_gpu.py --part scaling --shape tiny --gpus 2 --cpu --steps 4

Every run is `accelerate launch --config_file configs/accelerate/{ddp,fsdp}.yaml --num_processes N -m texocr train`
on a config written like bench/train_speed.py's (the same random-weight model and drawn formula images, built
here when absent), in a fresh process group. Throughput: optimizer steps x per-process batch x processes over the
time between the logged losses after --warmup steps (rank 0's CSV log); memory: `peak_gpu_gib_per_process` of the
run's metrics.json (each rank's peak allocated memory, gathered). Prints one JSON line per run and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).parent))


def write_config(path: Path, model: Path, data: Path, out: Path, *, method: str, batch: int, steps: int,
                 cpu: bool) -> Path:
    from train_speed import family_of

    dtype, precision = ("float32", '"no"') if cpu else ("bfloat16", "bf16")  # quoted: YAML reads no as false
    if method == "full" and not cpu:
        # float32 master weights under bf16 autocast: what accelerate's FSDP2 makes of trainable weights anyway
        # (it upcasts them), so DDP and FSDP train the same numbers. A bf16-loaded model under DDP would update
        # bf16 weights, where steps of lr 2e-5 mostly round away (the first one-GPU run: FSDP's loss fell 3x
        # faster than DDP's over 14 steps).
        dtype = "float32"
    path.write_text(f"""# bench/multi_gpu.py
model: {{name_or_path: {model}, family: {family_of(model)}, method: {method}, lora_r: 16, lora_alpha: 16,
        gradient_checkpointing: true, dtype: {dtype}, attn_implementation: sdpa, max_length: 1024}}
data: {{train: [{data}], val: []}}
train: {{output_dir: {out}, max_steps: {steps}, batch_size: {batch}, lr: 2.0e-5, warmup_ratio: 0.0, seed: 0,
        logging_steps: 1, save_steps: 0, eval_steps: 0, precision: {precision}, dataloader_workers: {0 if cpu else 4}}}
""")
    return path


def launch(cfg: Path, *, accel: str, procs: int, cpu: bool, extra: list[str], log: Path) -> int:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / "accelerate" /
           f"{accel}.yaml"), "--num_processes", str(procs), "--main_process_port", str(29500 + os.getpid() % 1000)]
    cmd += ["--mixed_precision", "no"] if cpu else []  # no --cpu: with it each process would train alone
    cmd += ["-m", "texocr", "train", "--config", str(cfg), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1" if cpu else "4",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, check=False, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode


def result(out: Path, *, name: str, batch: int, procs: int, warmup: int, rc: int, log: Path) -> dict:
    from texocr.train_callbacks import read_csv_log

    res: dict = {"run": name, "processes": procs, "batch_per_process": batch, "exit": rc}
    csv = out / "logs" / "metrics.csv"
    if rc != 0 or not csv.exists():
        res["log_tail"] = log.read_text()[-3000:]
        return res
    losses = read_csv_log(csv, "loss", with_time=True)
    steps = sorted(losses)
    (t0, _), (t1, _) = losses[steps[warmup - 1]], losses[steps[-1]]
    timed = steps[-1] - steps[warmup - 1]
    res |= {"samples_per_s": round(timed * batch * procs / (t1 - t0), 2),
            "losses": [round(losses[s][1], 5) for s in steps]}
    metrics = out / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        res |= {k: m[k] for k in ("peak_gpu_gib_per_process", "train_samples_per_s") if k in m}
    return res


def main() -> None:
    from gpu_data import build_data
    from train_speed import build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["fsdp-vs-ddp", "scaling"], required=True)
    ap.add_argument("--shape", default=None, help="bench/train_speed.py shape (default: tiny for fsdp-vs-ddp, 7b)")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="per process")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU (gloo; no FSDP)")
    ap.add_argument("--work", default="/tmp/texocr-bench")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args()

    shape = args.shape or ("tiny" if args.part == "fsdp-vs-ddp" else "7b")
    work = Path(args.work)
    model, data = work / f"qwen2vl-{shape}", work / "data"
    t = time.time()
    if not (model / "config.json").exists():
        build_model(shape, model)
    build_data(data, args.batch * args.gpus * args.steps + 64)
    print(f"setup {time.time() - t:.0f} s", flush=True)

    if args.part == "fsdp-vs-ddp":  # one process each, the same seed and batches, full fine-tuning
        runs = [("ddp-full-1", "ddp", 1, "full"), ("fsdp-full-1", "fsdp", 1, "full")]
    else:
        runs = [("ddp-lora-1", "ddp", 1, "lora"), (f"ddp-lora-{args.gpus}", "ddp", args.gpus, "lora")]
        runs += [] if args.cpu else [(f"fsdp-full-{args.gpus}", "fsdp", args.gpus, "full")]
    rows = []
    for name, accel, procs, method in runs:
        out = work / f"multi-{name}"
        subprocess.run(["rm", "-rf", str(out)], check=False)
        batch = args.batch if method == "lora" else max(1, args.batch // 4)  # full FT: optimizer state per GPU
        cfg = write_config(work / f"multi-{name}.yaml", model, data, out, method=method, batch=batch,
                           steps=args.steps, cpu=args.cpu)
        log = work / f"multi-{name}.log"
        # FSDP's sharded optimizer state per rank; the final save gathers the full state dict
        rc = launch(cfg, accel=accel, procs=procs, cpu=args.cpu, extra=[], log=log)
        row = result(out, name=name, batch=batch, procs=procs, warmup=args.warmup, rc=rc, log=log)
        row["shape"] = shape
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    ok = {r["run"]: r for r in rows if r.get("exit") == 0 and "samples_per_s" in r}
    if args.part == "fsdp-vs-ddp" and len(ok) == 2:
        a, b = ok["ddp-full-1"]["losses"], ok["fsdp-full-1"]["losses"]
        worst = max(abs(x - y) / max(abs(x), 1e-9) for x, y in zip(a, b))
        print(json.dumps({"fsdp_vs_ddp_max_rel_loss_diff": worst, "steps": len(a)}))
    if args.part == "scaling" and f"ddp-lora-{args.gpus}" in ok and "ddp-lora-1" in ok:
        ratio = ok[f"ddp-lora-{args.gpus}"]["samples_per_s"] / ok["ddp-lora-1"]["samples_per_s"]
        print(json.dumps({"lora_scaling": round(ratio, 3), "gpus": args.gpus}))


if __name__ == "__main__":
    main()
