"""Peak memory of `texocr train` on a stream does not grow with the data set (issue 19).

    PYTHONPATH=src .venv/bin/python bench/stream_rss.py --sizes 2000 50000      # ~5 minutes on 2 cores

For each size N: a local folder of N distinct drawn formula images (labels.jsonl), then `texocr train` in a fresh
process with `data.streaming: true`, a fresh tiny compact model, batch 64, one pass (N / 64 steps), no
DataLoader workers; the child's peak RSS (`ru_maxrss`) is reported. Before streaming, `texocr train` decoded
every sample into memory first, so the peak grew with N. Results: bench/stream_rss.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image, ImageDraw

    (root / "images").mkdir(parents=True)
    with open(root / "labels.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            img = Image.new("L", (90 + 3 * (i % 11), 30), 255)
            ImageDraw.Draw(img).text((4, 9), f"x^{i}+y", fill=0)
            img.save(root / "images" / f"{i}.png")
            f.write(json.dumps({"image": f"images/{i}.png", "latex": f"x ^ {{ {i} }} + y"}) + "\n")
    return root


def run(n: int, work: Path, batch: int, steps: int | None = None) -> dict[str, float]:
    data = work / f"d{n}"
    if not data.is_dir():
        make_folder(data, n)
    steps = steps or max(1, n // batch)
    cmd = [sys.executable, "-m", "texocr", "train", "--config", str(ROOT / "configs/compact/pretrain.yaml"),
           "--model.init_size", "tiny", "--data.train", str(data), "--data.formulas", "null", "--data.real", "[]",
           "--data.real_ratio", "0", "--data.val", "[]", "--train.output_dir", str(work / f"run{n}-{steps}"),
           "--train.max_steps", str(steps), "--train.batch_size", str(batch),
           "--train.dataloader_workers", "0", "--train.save_steps", "0", "--train.logging_steps", "50",
           "--train.warmup_ratio", "0"]
    t0 = time.perf_counter()
    # a wrapper process per size: RUSAGE_CHILDREN's peak is then this run's alone
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    got = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    peak = int(got.stdout.split()[-1])  # KiB
    return {"folder_rows": n, "samples": steps * batch, "steps": steps, "peak_rss_mib": round(peak / 1024, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 50000])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, nargs="*", default=[],
                   help="also run every size for these many steps (the folder read again and again): peak memory "
                        "at equal work, so that the folder's size is the only difference")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="texocr-rss-") as tmp:
        for n in sorted(a.sizes):
            for steps in [None, *(s for s in a.steps if s != max(1, n // a.batch))]:
                rows.append(run(n, Path(tmp), a.batch, steps))
                print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["peak_rss_mib"]
    print("| folder rows | samples streamed | steps | peak RSS | vs first | wall |")
    for r in rows:
        print(f"| {r['folder_rows']:,} | {r['samples']:,} | {r['steps']} | {r['peak_rss_mib']} MiB | "
              f"{r['peak_rss_mib'] / base:.3f} | {r['seconds']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
