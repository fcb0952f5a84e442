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
import random
import subprocess
import sys
import time
from pathlib import Path

# Published shapes (Qwen/Qwen2-VL-2B-Instruct and -7B-Instruct config.json).
SHAPES = {
    "2b": dict(hidden=1536, layers=28, heads=12, kv=2, inter=8960, vocab=151936, tie=True),
    "7b": dict(hidden=3584, layers=28, heads=28, kv=4, inter=18944, vocab=152064, tie=False),
}
WARMUP = 10


def build_model(shape: str, out: Path) -> Path:
    """Save a random-weight Qwen2-VL of `shape` with texocr's processor layout (no hub access)."""
    import torch
    import transformers

    from texocr.models.qwen_vl import QWEN_SPECIALS, Qwen2VL
    from texocr.models.tiny import char_tokenizer

    if (out / "config.json").is_file():
        return out
    s = SHAPES[shape]
    fam = Qwen2VL()
    tok = char_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                max_position_embeddings=32768, tie_word_embeddings=s["tie"], rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=32, embed_dim=1280, hidden_size=s["hidden"], num_heads=16, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = transformers.Qwen2VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=s["tie"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.Qwen2VLForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    ip = transformers.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = fam.processor_class()(ip, tok, chat_template=fam.chat_template)
    fam.configure_processor(processor, None)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"built {shape}: {n / 1e9:.2f}B parameters -> {out}", flush=True)
    return out


def _formula(rng: random.Random) -> str:
    atoms = ["x", "y", "z", "a", "b", "n", r"\alpha", r"\beta", r"\pi", "2", "3", "10"]

    def term(depth: int) -> str:
        r = rng.random()
        if depth > 2 or r < 0.35:
            return rng.choice(atoms) + (f"^{{{rng.choice(atoms)}}}" if rng.random() < 0.3 else "")
        if r < 0.55:
            return rf"\frac{{{term(depth + 1)}}}{{{term(depth + 1)}}}"
        if r < 0.7:
            return rf"\sqrt{{{term(depth + 1)}}}"
        return f"{term(depth + 1)} {rng.choice('+-=')} {term(depth + 1)}"

    return " ".join(term(0) for _ in range(rng.randint(1, 3)))


def build_data(out: Path, n: int) -> Path:
    """`n` 448x112 images of formulas (PIL text; content does not matter for speed) + labels.jsonl.

    Labels are written in normalized form, the form texocr trains on, so both loops see equal sequences.
    """
    from PIL import Image, ImageDraw, ImageFont

    from texocr.latex import normalize

    if (out / "labels.jsonl").is_file():
        return out
    (out / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    try:
        font = ImageFont.load_default(size=26)
    except TypeError:  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    lines = []
    for i in range(n):
        latex = normalize(_formula(rng))
        im = Image.new("RGB", (448, 112), "white")
        ImageDraw.Draw(im).text((8, 38), latex[:60], fill="black", font=font)
        im.save(out / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "latex": latex}))
    (out / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return out


def run_texocr(model: Path, data: Path, work: Path, method: str, batch: int, steps: int, workers: int) -> dict:
    """One `texocr train` run in this process; throughput from its CSV log, peak memory from CUDA."""
    import torch

    from texocr.cli import main as cli
    from texocr.train_callbacks import read_csv_log

    out = work / f"run-texocr-{method}-b{batch}"
    cfg = work / f"{method}.yaml"
    cfg.write_text(f"""# texocr train --config {cfg}
model: {{name_or_path: {model}, family: qwen2_vl, method: {method}, lora_r: 16, lora_alpha: 16,
        gradient_checkpointing: true, dtype: bfloat16, attn_implementation: sdpa, max_length: 1024}}
data: {{train: [{data}], val: []}}
train: {{output_dir: {out}, max_steps: {steps}, batch_size: {batch}, lr: 2.0e-4, warmup_ratio: 0.0,
        logging_steps: 5, save_steps: 0, eval_steps: 0, precision: bf16, dataloader_workers: {workers}}}
""")
    rc = cli(["train", "--config", str(cfg)])
    assert rc == 0, f"texocr train exited {rc}"
    losses = read_csv_log(out / "logs" / "metrics.csv", "loss", with_time=True)
    (t0, _), (t1, last) = losses[WARMUP], losses[steps]
    return {"loop": "texocr", "method": method, "batch": batch, "steps": steps - WARMUP,
            "samples_per_s": (steps - WARMUP) * batch / (t1 - t0), "s_per_step": (t1 - t0) / (steps - WARMUP),
            "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "final_loss": last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="2b")
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--steps", type=int, default=40, help="total steps per run (the first 10 are not timed)")
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
        print("RESULT " + json.dumps(run_texocr(model, data, work, method, int(batch), args.steps, args.workers)))
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
                cmd = [sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps), "--work",
                       str(work), "--workers", str(args.workers), "--one", f"{method}:{batch}"]
            else:
                cmd = [sys.executable, str(Path(__file__).with_name("plain_loop.py")), "--model", str(model),
                       "--data", str(data), "--batch", str(batch), "--warmup", str(WARMUP),
                       "--steps", str(args.steps - WARMUP)] + (["--qlora"] if method == "qlora" else [])
            t = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
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

    print(f"\n| shape | loop | method | batch | samples/s | s/step | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['loop']} | {r['method']} | {r['batch']} | {r['samples_per_s']:.1f} | "
              f"{r['s_per_step']:.3f} | {r['peak_alloc_gib']:.1f} | {r['peak_reserved_gib']:.1f} |")


if __name__ == "__main__":
    main()
