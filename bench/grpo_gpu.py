"""Issue 18 at full size: `texocr train --train.method grpo` (LoRA) on a random-weight Qwen2-VL-7B, with its rewards.

    # the GPU machine (device tool, carry [".carry/tex"] for the image reward's TeX, scripts/tex_bundle.sh; ~4 min)
    PYTHONPATH=src python3 bench/grpo_gpu.py --out $OUT/grpo_7b.json
    # CPU dry run (tiny model of the same layout, 3 steps)
    PYTHONPATH=src .venv/bin/python bench/grpo_gpu.py --shape tiny --steps 3 --batch 2 --generations 2 \
        --max-new-tokens 8 --work /tmp/grpo-tiny

The model and the formula images are bench/train_speed.py's (`--shape 7b`: 8.29 B parameters, random weights:
the sampled answers are random tokens, so most renders fail fast and the reward is mostly the edit and length
parts; what is measured is the cost of each phase, not learning). One `texocr train` run in this process, every
step logged; after `--warmup` steps it reports images and sampled answers per second, the share of each step
spent sampling (generation), scoring (rewards, rendering included) and in the loss pass (forward + backward of
the policy), and the peak GPU memory (`peak_gpu_gib` of the run's metrics.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).parent))

PHASES = ("sample_seconds", "reward_seconds", "loss_seconds")


def tex_on_path(bundle: Path = REPO / ".carry" / "tex" / "tex.tar.xz") -> str:
    """Make `latex` and `dvipng` callable: already there, or unpacked from scripts/tex_bundle.sh's bundle (carried
    to the GPU machine, which has no TeX). Returns how TeX was found."""
    if shutil.which("latex") and shutil.which("dvipng"):
        return "system"
    if not bundle.is_file():
        return "none (the image reward scores 0 where nothing renders)"
    subprocess.run(["tar", "-xJf", str(bundle), "-C", "/tmp"], check=True)
    os.environ["PATH"] = f"/tmp/texbundle/bin{os.pathsep}{os.environ['PATH']}"
    return "bundle"


def write_config(path: Path, model: Path, data: Path, out: Path, args: argparse.Namespace) -> Path:
    from train_speed import family_of

    tiny = model.name.endswith("tiny")
    dtype, precision = ("auto", "auto") if tiny else ("bfloat16", "bf16")
    path.write_text(f"""# bench/grpo_gpu.py: texocr train --config {path}
model: {{name_or_path: {model}, family: {family_of(model)}, method: lora, lora_r: 16, lora_alpha: 16,
        gradient_checkpointing: true, dtype: {dtype}, attn_implementation: sdpa, max_length: 1024}}
data: {{train: [{data}], val: []}}
train: {{output_dir: {out}, method: grpo, max_steps: {args.steps}, batch_size: {args.batch}, lr: 1.0e-5,
        warmup_ratio: 0.0, logging_steps: 1, save_steps: 0, eval_steps: 0, precision: {precision},
        grpo_generations: {args.generations}, grpo_max_new_tokens: {args.max_new_tokens},
        grpo_micro_batch: {args.micro_batch}, reward_workers: {args.reward_workers}}}
""")
    return path


def summarize(run: Path, args: argparse.Namespace) -> dict:
    """Per-step phases and rates after the warm-up steps, from the run's logs/metrics.csv and metrics.json."""
    rows: dict[int, dict[str, float]] = {}
    with (run / "logs" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(int(row["step"]), {})[row["name"]] = float(row["value"])
            rows[int(row["step"])]["time"] = float(row["time"])
    steps = sorted(rows)
    timed = [s for s in steps if s > args.warmup]
    if len(timed) < 2:
        raise SystemExit(f"{len(steps)} steps logged: too few to time after {args.warmup} warm-up steps")
    wall = rows[timed[-1]]["time"] - rows[timed[0] - 1]["time"] if timed[0] - 1 in rows else None
    per_step = wall / len(timed) if wall else sum(sum(rows[s].get(p, 0) for p in PHASES) for s in timed) / len(timed)
    phases = {p.removesuffix("_seconds"): sum(rows[s].get(p, 0.0) for s in timed) / len(timed) for p in PHASES}
    metrics = json.loads((run / "metrics.json").read_text())
    answers = args.batch * args.generations
    return {"shape": args.shape, "steps_timed": len(timed), "images_per_step": args.batch,
            "answers_per_step": answers, "s_per_step": round(per_step, 3),
            "images_per_s": round(args.batch / per_step, 2), "answers_per_s": round(answers / per_step, 2),
            "phase_s_per_step": {k: round(v, 3) for k, v in phases.items()},
            "phase_share": {k: round(v / per_step, 3) for k, v in phases.items()},
            "answer_tokens": round(sum(rows[s].get("answer_tokens", 0) for s in timed) / len(timed), 1),
            "reward": round(sum(rows[s].get("reward", 0) for s in timed) / len(timed), 4),
            "peak_gpu_gib": metrics.get("peak_gpu_gib"), "train_seconds": metrics.get("train_seconds")}


def main() -> None:
    from gpu_data import build_data
    from train_speed import SHAPES, build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    ap.add_argument("--batch", type=int, default=8, help="images per step")
    ap.add_argument("--generations", type=int, default=8, help="sampled answers per image")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=16, help="answers per forward/backward of the loss pass")
    ap.add_argument("--reward-workers", type=int, default=8)
    ap.add_argument("--work", default="/tmp/texocr-bench")
    ap.add_argument("--out", default=None, help="write the summary JSON here too")
    args = ap.parse_args()

    from texocr.cli import main as cli

    work = Path(args.work)
    model, data = work / f"qwen2vl-{args.shape}", work / "data"
    build_model(args.shape, model)
    build_data(data, args.batch * args.steps + 64)
    tex = tex_on_path()
    run = work / f"grpo-{args.shape}"
    shutil.rmtree(run, ignore_errors=True)
    rc = cli(["train", "--config", str(write_config(work / "grpo.yaml", model, data, run, args))])
    if rc != 0:
        raise SystemExit(f"texocr train exited {rc}")
    res = summarize(run, args) | {"tex": tex}
    print(json.dumps(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
