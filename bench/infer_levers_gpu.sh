#!/usr/bin/env bash
# The opt-in decode levers against the fast path, in one short device call (~3 minutes; bench/infer.md):
#     OUT=/some/dir bash bench/infer_levers_gpu.sh      # device tool: carry ["runs/real-val/im2latex"]
# batch 1: plain, fast, fast+gfv+vgraph+norm, and that with compile; batch 1024: fast vs fast+gfv+norm (+compile);
# then where `Recognizer.load`'s seconds go (imports, CUDA context, weights). Writes levers_b1.json,
# levers_b1024.json, load_split.txt and levers.log to $OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/texocr-levers}
mkdir -p "$OUT"
export PYTHONPATH=src
DATA=runs/real-val/im2latex
run() { timeout "$1" python3 bench/infer.py --model default --device cuda --data "$DATA" --max-new-tokens 256 \
  --workers 15 "${@:2}" >> "$OUT/levers.log" 2>&1 || echo "exit $? ($*)" >> "$OUT/levers.log"; }
run 80 --paths plain,fast,fast+gfv+vgraph+norm,fast+gfv+vgraph+norm+compile --batches 1 --images 32 \
  --json "$OUT/levers_b1.json"
run 90 --paths fast,fast+gfv+norm,fast+gfv+norm+compile --batches 1024 --stream --json "$OUT/levers_b1024.json"
timeout 40 python3 - > "$OUT/load_split.txt" 2>&1 <<'PY'
import time
t = time.perf_counter()
import torch
a = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); b = time.perf_counter()
from texocr.infer import Recognizer
c = time.perf_counter(); Recognizer.load("default", device="cuda"); d = time.perf_counter()
print(f"import torch {a - t:.2f} s, CUDA context {b - a:.2f} s, import texocr.infer {c - b:.2f} s, "
      f"Recognizer.load {d - c:.2f} s")
PY
grep -h "^|" "$OUT/levers.log"; tail -1 "$OUT/load_split.txt"
