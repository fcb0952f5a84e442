"""Where the time of a first `texocr predict IMG` goes (the shipped default model, on this CPU): bench/load_time.md.

    python bench/load_time.py                          # this checkout's src/, 5 rounds
    python bench/load_time.py --src /tmp/before/src    # another tree (e.g. `git archive` of an older commit)
    python bench/load_time.py --src A --src B          # side by side, rounds interleaved (a noisy machine)

Each round starts fresh processes: (1) `texocr predict IMG` as a user runs it, wall time of the whole command;
(2) the same work cut into phases (import torch; import transformers; import the Qwen2-VL modeling module
that loading pulls in; `Recognizer.load("default")`; the first prediction); (3) the floor, a process that
only imports torch and that modeling module. Medians over the rounds are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = r"""
import json, sys, time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import transformers
t.append(time.perf_counter())
from transformers.models.qwen2_vl import modeling_qwen2_vl
t.append(time.perf_counter())
from texocr.infer import Recognizer
rec = Recognizer.load("default")
t.append(time.perf_counter())
rec(sys.argv[1])
t.append(time.perf_counter())
names = ["import_torch", "import_transformers", "import_modeling", "texocr_load", "first_predict"]
print(json.dumps({n: b - a for n, a, b in zip(names, t, t[1:])}))
"""
FLOOR = "import torch; from transformers.models.qwen2_vl import modeling_qwen2_vl"


def _image(folder: Path) -> Path:
    """A printed formula as TeX (else the pip renderer) draws it."""
    from texocr.data.render import get_renderer

    path = folder / "eq.png"
    get_renderer("auto").render_batch([r"x ^ { 2 } + y ^ { 2 } = z ^ { 2 }"])[0].save(path)
    return path


def _run(cmd: list[str], src: str) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=src)
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", action="append", help="a src/ folder to measure (default: this checkout's)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    srcs = args.src or [str(Path(__file__).resolve().parents[1] / "src")]
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        img = str(_image(Path(tmp)))
        rows: dict[str, dict[str, list[float]]] = {s: {} for s in srcs}
        floor: list[float] = []
        for _ in range(args.rounds):
            floor.append(_run([py, "-c", FLOOR], srcs[0])[0])
            for src in srcs:  # interleaved: each round measures every tree under the same load
                wall, _ = _run([py, "-m", "texocr", "predict", img], src)
                rows[src].setdefault("predict_wall", []).append(wall)
                _, out = _run([py, "-c", PHASES, img], src)
                for k, v in json.loads(out.strip().splitlines()[-1]).items():
                    rows[src].setdefault(k, []).append(v)
    result = {"rounds": args.rounds, "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
              "floor_import_torch_and_modeling_s": round(statistics.median(floor), 2),
              "trees": {src: {k: round(statistics.median(v), 3) for k, v in r.items()} for src, r in rows.items()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
