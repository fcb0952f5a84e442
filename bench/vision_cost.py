"""CPU cost of the vision tower alone, per image, for compact models of different depths (same images, same
greedy decoder's `_image_features`, runs alternated; process and wall time).

    PYTHONPATH=src .venv/bin/python bench/vision_cost.py --models runs/compact-v4 runs/grown-small-v7

The models are folders (e.g. the default grown with `texocr.models.compact.grow_compact`: identical outputs, more
layers). The text tower's cost per token is unchanged by a deeper vision tower; `bench/infer.py` gives the whole.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    import torch
    from PIL import Image

    from texocr.infer import Recognizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--data", default="runs/im2latex-test", help="a labelled folder (labels.jsonl + images)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.data)
    rows = [json.loads(line) for line in (folder / "labels.jsonl").read_text().splitlines()][: args.images]
    imgs = [Image.open(folder / r["image"]).convert("RGB") for r in rows]
    models = {m: Recognizer.load(m) for m in args.models}
    encs = {m: rec._encode(imgs) for m, rec in models.items()}
    grid = next(iter(encs.values()))["image_grid_thw"]
    print(f"{len(imgs)} images, {int(grid.prod(-1).sum()) / 4 / len(imgs):.1f} image tokens each on average")
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in models}
    with torch.inference_mode():
        for _ in range(args.reps):
            for m, rec in models.items():
                dec, enc = rec._greedy_decoder(), encs[m]
                cpu, wall = time.process_time(), time.perf_counter()
                dec._image_features(enc["pixel_values"], enc["image_grid_thw"])
                times[m].append((time.process_time() - cpu, time.perf_counter() - wall))
    print("| model | vision depth | CPU ms per image (median) | wall ms per image (median) |")
    print("|---|---:|---:|---:|")
    for m, got in times.items():
        depth = len(models[m].model.model.visual.blocks)
        cpu = sorted(c for c, _ in got)[len(got) // 2] * 1000 / len(imgs)
        wall = sorted(w for _, w in got)[len(got) // 2] * 1000 / len(imgs)
        print(f"| {m} | {depth} | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
