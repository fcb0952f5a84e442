#!/usr/bin/env bash
# Recognition speed on one CUDA GPU, in one command (about 3-5 minutes; no network, no TeX needed):
#
#     OUT=/some/dir bash bench/infer_gpu.sh          # from the repository root (or anywhere: it cd's there)
#     (device tool: carry ["runs/real-val/im2latex", ".carry/whl"]; .carry/whl: the rapidfuzz wheel, scripts/pretrain_gpu.sh)
#
# Real images: runs/real-val/im2latex (labels.jsonl + PNGs); absent, 600 PIL-drawn formula images stand in.
# Every section is independent (its own timeout; a failure is logged and the next one runs). Writes to $OUT:
#   env.txt              GPU, driver, torch / transformers versions
#   infer_default.json   bench/infer.py rows: shipped model, plain (`generate`) vs fast (static CUDA-graph loop),
#                        batch 1 32 128 512 1024: images/s, p50/p95 latency, tokens/s, `differ` (fast vs plain)
#                        and the opt-in levers (PATHS, default plain,fast,fast+norm,fast+gfv+norm,fast+gfv+vgraph+norm)
#   infer_compile.json   batch 1 and 512: fast vs fast+compile (SKIP_COMPILE=1: not; COMPILE_S: its time limit)
#   infer_fp32.json      the same at batch 512 in float32 (SKIP_FP32=1: not): `differ` without bf16 rounding
#   infer_nographs.json  only if a fast row failed: the fast path again with TEXOCR_CUDA_GRAPHS=0 (static, no graphs)
#   eval_metrics.json    `texocr eval --batch-size 512 --device cuda` metrics (images_per_s = generation only)
#   eval_time.json       the same eval timed end to end (process start to exit: load, image reading, decode)
#   eval_levers_*.json   the same two with TEXOCR_GPU_LEVERS=all (SKIP_LEVER_EVAL=1: not): exact match and wall
#   phases.json          bench/infer_phases.py: ms per batch of each phase (read, encode, vision, prefill, decode...)
# (BATCHES="1 512": other batch sizes; PATHS=fast: without the plain path; REPEAT=32: the eval set 32 times over
#  instead of 8; SKIP_BENCH=1, SKIP_PHASES=1, SKIP_7B=1: leave those sections out, for a short call)
#   infer_7b.json        random-weight Qwen2-VL-7B shape, batch 32 and 128, 64 new tokens, plain vs fast (SKIP_7B=1: not)
#   infer_gpu.log        everything printed
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/texocr-infer-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=src
if ls .carry/whl/*.whl >/dev/null 2>&1; then  # rapidfuzz (texocr eval's metrics) is not on the GPU image
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
LOG="$OUT/infer_gpu.log"
DATA=runs/real-val/im2latex
WORKERS=${WORKERS:-$(( $(nproc) > 16 ? 15 : $(nproc) - 1 ))}
section() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; } >> "$LOG"

section env
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name(0))" 2>&1
  echo "data: $DATA $( [ -f "$DATA/labels.jsonl" ] && wc -l < "$DATA/labels.jsonl" || echo absent) workers: $WORKERS"
} > "$OUT/env.txt"
cat "$OUT/env.txt" >> "$LOG"

if [ ! -f "$DATA/labels.jsonl" ]; then
  section "no $DATA: drawing 600 formula images into /tmp/texocr-synth"
  DATA=/tmp/texocr-synth
  timeout 60 "$PY" - "$DATA" >> "$LOG" 2>&1 <<'EOF' || true
import json, sys
from pathlib import Path
sys.path.insert(0, "bench")
from infer import formula_images
out = Path(sys.argv[1]); (out / "images").mkdir(parents=True, exist_ok=True)
with (out / "labels.jsonl").open("w") as f:
    for i, im in enumerate(formula_images(600)):
        im.save(out / "images" / f"{i}.png")
        f.write(json.dumps({"image": f"images/{i}.png", "latex": "x"}) + "\n")
EOF
fi

[ "${SKIP_BENCH:-0}" = 1 ] || section "bench: default model, plain vs fast"
[ "${SKIP_BENCH:-0}" = 1 ] || OUT= timeout 260 "$PY" bench/infer.py --model default --device cuda --data "$DATA" \
  --paths "${PATHS:-plain,fast,fast+norm,fast+gfv+norm,fast+gfv+vgraph+norm}" \
  --batches ${BATCHES:-1 32 128 512 1024} --max-new-tokens 256 --workers "$WORKERS" --stream \
  --json "$OUT/infer_default.json" >> "$LOG" 2>&1 || echo "bench default: exit $?" >> "$LOG"

if [ "${SKIP_BENCH:-0}" != 1 ] && { grep -q '"error"' "$OUT/infer_default.json" 2>/dev/null || [ ! -f "$OUT/infer_default.json" ]; }; then
  section "bench: fast path without CUDA graphs (a fast row failed)"
  OUT= TEXOCR_CUDA_GRAPHS=0 timeout 40 "$PY" bench/infer.py --model default --device cuda --data "$DATA" \
    --paths fast --batches 1 128 512 --max-new-tokens 256 --workers "$WORKERS" \
    --json "$OUT/infer_nographs.json" >> "$LOG" 2>&1 || echo "bench nographs: exit $?" >> "$LOG"
fi

[ "${SKIP_PHASES:-0}" = 1 ] || section "phases: where the time of one batch goes (no workers)"
[ "${SKIP_PHASES:-0}" = 1 ] || OUT= timeout 60 "$PY" bench/infer_phases.py --device cuda --data "$DATA" --batches 1 512 --rounds 3 \
  --json "$OUT/phases.json" >> "$LOG" 2>&1 || echo "phases: exit $?" >> "$LOG"

REPEAT=${REPEAT:-8}
section "texocr eval, end to end (the images $REPEAT times over: long enough that start-up does not dominate)"
rm -rf /tmp/texocr-eval-gpu /tmp/texocr-eval-data
mkdir -p /tmp/texocr-eval-data && cp -r "$DATA/images" /tmp/texocr-eval-data/
for _ in $(seq "$REPEAT"); do cat "$DATA/labels.jsonl"; done > /tmp/texocr-eval-data/labels.jsonl
eval_run() {  # eval_run NAME: one timed `texocr eval` of the set; NAME_time.json and NAME_metrics.json in $OUT
  rm -rf /tmp/texocr-eval-gpu
  local start end n rc
  start=$(date +%s.%N)
  timeout "${EVAL_S:-90}" "$PY" -m texocr eval --model default --data /tmp/texocr-eval-data --no-render --batch-size 512 \
    --device cuda --workers "$WORKERS" --out /tmp/texocr-eval-gpu >> "$LOG" 2>&1
  rc=$?
  end=$(date +%s.%N)
  n=$(wc -l < /tmp/texocr-eval-gpu/predictions.jsonl 2>/dev/null || echo 0)
  "$PY" -c "import json, sys; s, e, n, rc = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]); \
print(json.dumps({'exit': rc, 'images': n, 'wall_s': round(e - s, 2), 'images_per_s_end_to_end': round(n / (e - s), 1), \
'data': sys.argv[5] + ' x' + sys.argv[7], 'workers': int(sys.argv[6]), 'levers': sys.argv[8]}))" "$start" "$end" "$n" "$rc" \
    "$DATA" "$WORKERS" "$REPEAT" "${TEXOCR_GPU_LEVERS:-}" > "$OUT/$1_time.json" 2>> "$LOG" || true
  cp /tmp/texocr-eval-gpu/metrics.json "$OUT/$1_metrics.json" 2>> "$LOG" || true
  cat "$OUT/$1_time.json" >> "$LOG" 2>/dev/null
}
eval_run eval
# the same with every opt-in lever of the GPU decoder (compact_decode.LEVERS): accuracy, and the wall with compiling
[ "${SKIP_LEVER_EVAL:-0}" = 1 ] || { section "texocr eval with TEXOCR_GPU_LEVERS=all"; TEXOCR_GPU_LEVERS=all eval_run eval_levers; }

[ "${SKIP_COMPILE:-0}" = 1 ] || {
section "bench: the decode step through torch.compile (fast+compile), vs fast"
OUT= timeout "${COMPILE_S:-120}" "$PY" bench/infer.py --model default --device cuda --data "$DATA" \
  --paths fast,fast+compile,fast+gfv+vgraph+norm+compile --batches 1 512 --max-new-tokens 256 --workers "$WORKERS" \
  --json "$OUT/infer_compile.json" >> "$LOG" 2>&1 || echo "bench compile: exit $?" >> "$LOG"
}

[ "${SKIP_FP32:-0}" = 1 ] || {
section "bench: plain vs fast in float32 (differ: the algorithm, without bf16 rounding)"
OUT= timeout 90 "$PY" bench/infer.py --model default --device cuda --data "$DATA" --paths plain,fast --dtype float32 \
  --batches 512 --images 2048 --max-new-tokens 256 --workers "$WORKERS" --json "$OUT/infer_fp32.json" >> "$LOG" 2>&1 \
  || echo "bench fp32: exit $?" >> "$LOG"
}

[ "${SKIP_7B:-0}" = 1 ] || {
section "bench: random Qwen2-VL-7B shape, plain vs fast"
OUT= timeout 80 "$PY" bench/infer.py --model qwen2-vl-7b --device cuda --paths plain,fast --batches 32 128 \
  --images 128 --max-new-tokens 64 --json "$OUT/infer_7b.json" >> "$LOG" 2>&1 || echo "bench 7b: exit $?" >> "$LOG"
}

section done
grep -h '^|' "$LOG" | tail -30
