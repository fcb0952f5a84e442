"""Recognizer speed: throughput (images/s) and latency (p50/p95) at batch 1 and batch 32 (or any batch sizes).

    # this CPU, texocr's tiny random Qwen2-VL (built locally):
    PYTHONPATH=src .venv/bin/python bench/infer.py --model tiny
    # a CUDA machine, a random model of Qwen2-VL-2B's published shape (bf16, SDPA; no network, PIL images only):
    PYTHONPATH=src python3 bench/infer.py --model qwen2-vl-2b
    # any local model directory:
    PYTHONPATH=src python3 bench/infer.py --model runs/x/model --batches 1 8 32
    # the shipped default model on TeX renders of real formulas (scripts/heldout.py render --out runs/im2latex-test):
    PYTHONPATH=src .venv/bin/python bench/infer.py --model default --data runs/im2latex-test --max-new-tokens 256
    # a GPU: `generate` (plain) and the static CUDA-graph loop (fast) side by side, same images, outputs compared:
    PYTHONPATH=src python3 bench/infer.py --model default --data runs/real-val/im2latex --paths plain,fast \
        --batches 1 32 128 512 1024 --max-new-tokens 256 --workers 8
    # a random model of Qwen2-VL-7B's published shape (bf16, CUDA only):
    PYTHONPATH=src python3 bench/infer.py --model qwen2-vl-7b --batches 32 128 --images 128 --paths plain,fast

Each batch size generates `--images` formula-shaped images (448x112 and 300..600 x 60..140, PIL-drawn text) through
`Recognizer.predict`, after one warm-up batch. Latency is the wall time of one `predict` call for one batch
(CUDA-synchronized); throughput is images / total time of those calls; `--stream` adds the throughput of one
`predict` call over all the images (what `texocr eval` does: reading and encoding overlap decoding).
Random models do not emit the end token, so every image generates up to `--max-new-tokens` unless the repetition stopper cuts a loop: the table reports the mean
generated tokens per image too. `--paths plain,fast` runs each batch size through `generate` (plain:
`fast_decode=False`) and through texocr's greedy loop (fast: the static CUDA-graph mode on a GPU, the dynamic
loop on a CPU) in the same process on the same images, and reports, per fast row, how many predictions differ
from the plain path's (`differ`). `--workers N` reads and encodes images in N processes (`Recognizer.workers`);
images are then handed over as PNG bytes, so that decoding them is part of the measured work. Prints a markdown
table; writes the rows as JSON to $OUT/infer_bench.json when OUT is set (and to --json if given).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a bare checkout too

RANDOM = {"qwen2-vl-2b": "qwen2_vl-2b", "qwen2-vl-7b": "qwen2_vl-7b"}
"""--model names of random-weight models of published shapes (bench/seeds_gpu.py's ARCHS)."""


def build_random_qwen2_vl(device: str, arch: str = "qwen2_vl-2b"):  # -> (model, processor, family)
    """A random-weight Qwen2-VL of a published shape (bench/seeds_gpu.py's dimensions), built in memory on
    `device` (bf16 on CUDA; no hub, no disk), with texocr's character tokenizer and Qwen2-VL's PIL processor."""
    sys.path.insert(0, str(Path(__file__).parent))
    from seeds_gpu import build_random

    from texocr.models.registry import get_family

    model, processor = build_random(arch, device)
    return model.eval(), processor, get_family("qwen2_vl")


def load_recognizer(model: str, device: str | None, max_new_tokens: int, glyph_height: float | None = None,
                    dtype: str | None = None, reread: list[float] | None = None, reread_below: float | None = None):
    from texocr.infer import Recognizer, pick_device

    device = pick_device(device)
    if model in RANDOM:
        m, proc, fam = build_random_qwen2_vl(device, RANDOM[model])
        return Recognizer(m, proc, fam, device=device, max_new_tokens=max_new_tokens, glyph_height=glyph_height), device
    if model == "tiny":
        from texocr.models.tiny import build_tiny

        model = str(build_tiny("qwen2_vl", Path(tempfile.mkdtemp(prefix="texocr-bench-tiny-"))))
    return Recognizer.load(model, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                           glyph_height=glyph_height, reread=reread, reread_below=reread_below), device


def formula_images(n: int, seed: int = 0) -> list:
    """Formula-shaped PIL images with drawn text: half 448x112, half of varied size (grouping matters)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = (448, 112) if i % 2 == 0 else (rng.randint(300, 600), rng.randint(60, 140))
        im = Image.new("RGB", size, "white")
        text = " ".join(rng.choice(["x^2", "\\frac{a}{b}", "+", "=", "\\sum_i", "y_1", "\\sqrt{z}"])
                        for _ in range(rng.randint(2, 6)))
        ImageDraw.Draw(im).text((8, size[1] // 2 - 6), text, fill="black")
        out.append(im)
    return out


def folder_images(folder: str, n: int) -> list:
    """The first `n` images of a labelled folder (e.g. TeX renders of real formulas), cycled if it has fewer."""
    from texocr.data.sources import open_source

    images = []
    for s in open_source(folder):
        images.append(s.image)
        if len(images) >= n:
            break
    if not images:
        raise SystemExit(f"{folder}: no images")
    return [images[i % len(images)] for i in range(n)]


def as_png(images: list) -> list:
    """PNG bytes of each image (what a caller with files hands over: decoding is then part of the work)."""
    import io

    out = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bench(rec, device: str, batch: int, images: list, stream: bool = False) -> tuple[dict, list[str]]:
    """One batch size through `rec.predict`, a call per batch: the row, and every prediction's text (input
    order); `stream`: also all images in one call (`stream_images_per_s`)."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    n_images = len(images)
    rec.predict(images[:batch], batch_size=batch)  # warm-up (kernels, allocator, caches, CUDA graphs)
    sync()
    latencies, tokens, texts = [], 0, []
    start = time.perf_counter()
    for i in range(0, n_images, batch):
        t0 = time.perf_counter()
        preds = rec.predict(images[i: i + batch], batch_size=batch)
        sync()
        latencies.append(time.perf_counter() - t0)
        tokens += sum(p.tokens for p in preds)
        texts += [p.text for p in preds]
        errors = [p.error for p in preds if p.error]
        if errors:
            raise SystemExit(f"bench images failed: {errors[:3]}")
    total = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
    row = {"batch": batch, "images": n_images, "images_per_s": n_images / total,
           "latency_ms_p50": statistics.median(latencies) * 1000, "latency_ms_p95": q[18] * 1000,
           "tokens_per_image": tokens / n_images, "tokens_per_s": tokens / total}
    if stream and n_images > batch:
        # all images in one call, as `texocr eval` and a batch job make it: workers read and encode the next
        # batches while the GPU decodes this one
        t0 = time.perf_counter()
        preds = rec.predict(images, batch_size=batch)
        sync()
        row["stream_images_per_s"] = n_images / (time.perf_counter() - t0)
        row["stream_differ"] = sum(p.text != t for p, t in zip(preds, texts))
    return row, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, default, qwen2-vl-2b, qwen2-vl-7b (random weights), or a "
                                                    "local model directory")
    ap.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--images", type=int, default=None, help="images per batch size (default: max(16, 4 x batch))")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--data", help="a labelled folder whose images to use (e.g. runs/im2latex-test from "
                                   "scripts/heldout.py render) instead of drawn text")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                    help="a saved model's dtype (default: its own; float32 on a GPU separates the paths' rounding "
                         "from their algorithm when counting `differ`)")
    ap.add_argument("--glyph-height", type=float, default=None, metavar="PX",
                    help="Recognizer(glyph_height=PX): enlarge small inputs (the time counts)")
    ap.add_argument("--reread", type=float, nargs="+", default=None, metavar="PX",
                    help="Recognizer(reread=[PX...]): unsure reads read again (the time counts; 0: off)")
    ap.add_argument("--reread-below", type=float, default=None, metavar="LOGP", help="Recognizer(reread_below=)")
    ap.add_argument("--paths", default="fast", help="comma-separated: plain (generate), fast (texocr's greedy loop; "
                                                     "static CUDA graphs on a GPU); each batch size runs through each. "
                                                     "fast+LEVER[+LEVER]: the fast loop with opt-in levers: gfv (CUDA: "
                                                     "the vision tower through compact_vision.FastVision), norm "
                                                     "(fused RMSNorm), compile (torch.compile of the decode step), vgraph "
                                                     "(with gfv: the vision tower as CUDA-graph replays, small batches)")
    ap.add_argument("--workers", type=int, default=0, help="Recognizer.workers: processes that read and encode "
                                                         "images (then images are passed as PNG bytes)")
    ap.add_argument("--stream", action="store_true", help="also time one predict call over all images of a batch "
                                                           "size (pipelined: stream images/s)")
    ap.add_argument("--no-fast-paths", action="store_true",
                    help="the fast greedy loop without its CPU fast paths (compact_vision, compact_prefill): "
                         "the model's own vision forward and one padded prefill")
    args = ap.parse_args()
    from texocr.models.compact_decode import LEVERS

    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for path in paths:
        base, *levers = path.split("+")
        if base not in ("plain", "fast") or not set(levers) <= set(LEVERS) or (base == "plain" and levers):
            raise SystemExit(f"--paths: plain, fast or fast+{'|'.join(LEVERS)}..., not {path}")

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rec, device = load_recognizer(args.model, args.device, args.max_new_tokens, args.glyph_height, args.dtype,
                                  args.reread, args.reread_below)
    load_s = time.perf_counter() - t0
    greedy = rec._greedy_decoder()
    params = sum(p.numel() for p in rec.model.parameters())
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    meta = {"model": args.model, "params": params, "dtype": str(next(rec.model.parameters()).dtype),
            "device": device, "gpu": gpu, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
            "max_new_tokens": args.max_new_tokens, "data": args.data, "load_s": round(load_s, 1),
            "glyph_height": rec.glyph_height, "reread": list(rec.reread), "reread_below": rec.reread_below,
            "fast_paths": greedy is not None and not args.no_fast_paths,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    meta["workers"] = rec.workers = args.workers
    print(json.dumps(meta), flush=True)
    rows = []
    for b in args.batches:
        n = args.images or max(16, 4 * b)
        images = folder_images(args.data, n) if args.data else formula_images(n)
        images = as_png(images) if args.workers else images
        first: list[str] | None = None
        for path in paths:
            rec.fast_decode = path != "plain"
            if greedy is not None and rec.fast_decode:  # the path's levers on, the others off
                greedy.use_levers(set(path.split("+")[1:]))
                if args.no_fast_paths:
                    greedy.fast_vision, greedy.group_prefill = None, False
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            try:
                result, texts = bench(rec, device, b, images, args.stream)
            except Exception as e:  # noqa: BLE001 - one path failing must not lose the other's numbers
                row = {**meta, "path": path, "batch": b, "error": f"{type(e).__name__}: {e}"}
                rows.append(row)
                print(json.dumps({k: row[k] for k in row if k not in meta}), flush=True)
                continue
            row = {**meta, "path": path, **result}
            if first is None:
                first = texts
                row["texts_sha1"] = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
            else:
                row["differ"] = sum(a != c for a, c in zip(first, texts))
                row["texts_sha1"] = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
            if device.startswith("cuda"):
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rows.append(row)
            print(json.dumps({k: row[k] for k in row if k not in meta}), flush=True)
            if args.json:  # after every row: a run cut by its time limit keeps what it measured
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    rec.close()

    print(f"\n{args.model} ({params / 1e6:.1f}M params, {meta['dtype']}) on {gpu or device}, "
          f"max_new_tokens {args.max_new_tokens}\n")
    print("| path | batch | images | images/s | latency p50 (ms) | latency p95 (ms) | tokens/image | tokens/s | "
          "differ | stream images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['path']} | {r['batch']} | error: {r['error'][:200]} |")
            continue
        print(f"| {r['path']} | {r['batch']} | {r['images']} | {r['images_per_s']:.2f} | {r['latency_ms_p50']:.1f} | "
              f"{r['latency_ms_p95']:.1f} | {r['tokens_per_image']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r.get('differ', '')} | {format(r['stream_images_per_s'], '.1f') if 'stream_images_per_s' in r else ''} |")
    for path in [args.json, os.path.join(os.environ["OUT"], "infer_bench.json") if os.environ.get("OUT") else None]:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(rows, indent=2) + "\n")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
