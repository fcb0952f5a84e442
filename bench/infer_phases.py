"""Where recognition time goes, phase by phase: read, encode, vision tower, rotary index, prefill, decode loop, text.

    PYTHONPATH=src python3 bench/infer_phases.py --model default --data runs/real-val/im2latex --batches 1 512
    PYTHONPATH=src .venv/bin/python bench/infer_phases.py --device cpu --batches 1 32    # this CPU

Each phase is a method of the one recognition path (`Recognizer`, `Prep`, `GreedyDecoder`) wrapped with a timer
that synchronizes CUDA before and after, so a phase's time is its own (the sums are slower than an unwrapped
run by the syncs). `decode loop` is `_generate_static` (or `_generate`) minus the phases inside it. Prints per
batch size the ms per batch of each phase and the share of the total; `--trace` adds torch.profiler's top ops of
one batch. Images are read in this process (no workers) so that reading is measured too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default=None)
    ap.add_argument("--data", default="runs/real-val/im2latex")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 512])
    ap.add_argument("--rounds", type=int, default=4, help="batches timed per batch size (after one warm-up)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--trace", action="store_true", help="torch.profiler top ops of one batch per batch size")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from infer import as_png, folder_images, load_recognizer

    from texocr import prep as prep_mod
    from texocr.infer import Recognizer

    rec, device = load_recognizer(args.model, args.device, args.max_new_tokens)
    cuda = device.startswith("cuda")
    times: dict[str, float] = defaultdict(float)
    inside: list[str] = []  # phases open now (a phase's time is not also counted in the one around it)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            sync()
            t0 = time.perf_counter()
            inside.append(label)
            try:
                return fn(*a, **k)
            finally:
                sync()
                inside.pop()
                dt = time.perf_counter() - t0
                times[label] += dt
                if inside:  # the enclosing phase's own time excludes this one
                    times[inside[-1]] -= dt

        setattr(owner, name, wrapper)

    timed(prep_mod.Prep, "load", "read + glyph rescale")
    timed(prep_mod.Prep, "encode", "processor encode")
    timed(Recognizer, "_encode", "encode + to device (in process)")
    timed(Recognizer, "_finish", "ids -> text (decode, clean, repair)")
    g = rec._greedy_decoder()
    if g is not None:
        timed(g, "_image_features", "vision tower")
        timed(g.model.model, "get_rope_index", "rope index")
        timed(g, "_prompt", "embed + rotary")
        timed(g, "_static_state", "static buffers (+ capture once)")
        timed(g, "_reset", "static reset")
        timed(g, "_prefill", "prefill")
        timed(g, "_generate_static", "decode loop")
        timed(g, "_generate", "decode loop")
    timed(Recognizer, "predict", "other (sort, chunk, python)")

    rows = []
    print(json.dumps({"model": args.model, "device": device,
                      "gpu": torch.cuda.get_device_name(0) if cuda else None, "decoder": type(g).__name__,
                      "static": getattr(g, "static", None), "graphs": getattr(g, "graphs", None)}), flush=True)
    for b in args.batches:
        images = as_png(folder_images(args.data, b * (args.rounds + 1)))
        rec.predict(images[:b], batch_size=b)  # warm-up: kernels, shapes, graphs
        times.clear()
        tokens = 0
        start = time.perf_counter()
        for r in range(1, args.rounds + 1):
            preds = rec.predict(images[r * b:(r + 1) * b], batch_size=b)
            tokens += sum(p.tokens for p in preds)
        sync()
        total = time.perf_counter() - start
        n = b * args.rounds
        row = {"batch": b, "images": n, "ms_per_batch": round(total / args.rounds * 1000, 2),
               "images_per_s": round(n / total, 1), "tokens_per_image": round(tokens / n, 1),
               "phases_ms_per_batch": {k: round(v / args.rounds * 1000, 2) for k, v in
                                       sorted(times.items(), key=lambda kv: -kv[1])}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(f"\nbatch {b}: {row['ms_per_batch']} ms per batch, {row['images_per_s']} images/s (phases synced)")
        for k, v in row["phases_ms_per_batch"].items():
            print(f"  {k:40s} {v:10.2f} ms  {100 * v / row['ms_per_batch']:5.1f} %")
        if args.trace:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                rec.predict(images[b: 2 * b], batch_size=b)
                sync()
            key = "cuda_time_total" if cuda else "cpu_time_total"
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
            if cuda:
                print(prof.key_averages().table(sort_by=key, row_limit=15))
    rec.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
