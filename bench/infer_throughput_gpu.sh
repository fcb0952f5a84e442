#!/usr/bin/env bash
# Sustained GPU throughput of the default model and where the main process spends it, in one device call
# (~6 minutes; bench/infer.md, "Seventh GPU run"):
#     OUT=/some/dir bash bench/infer_throughput_gpu.sh      # device tool: carry ["runs/real-val/im2latex", ".carry/whl"]
# Writes to $OUT:
#   gpu_tests.txt        the `-m gpu` tests of tests/test_compact.py (FastVision in bf16, the padded graph)
#   tput_*.json          bench/infer.py, 16,384 images per batch size, streamed: fast vs the levers at 1024 (and at
#                        batch 1, 32 images; SKIP_B1=1: not), the levers at 512 and 2048 (SKIP_OTHER_BATCHES=1: not)
#   eval_*.json          `texocr eval` of the 589 x 32 with and without TEXOCR_GPU_LEVERS=all (infer_gpu.sh)
#   phases_levers.*      bench/infer_phases.py at batch 1024 with the levers, torch.profiler's top ops (SKIP_PHASES=1)
#   stream_profile.txt   cProfile of the main process over a streamed run (levers, batch 1024, 8,192 images;
#                        SKIP_PROFILE=1: not)
# (IMAGES=N: images per batch size of the first bench; SKIP_LEVER_EVAL=1: the eval without the levers only)
#   tput.log             everything printed
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/texocr-tput}
mkdir -p "$OUT"
export PYTHONPATH=src
if ls .carry/whl/*.whl >/dev/null 2>&1; then  # rapidfuzz (texocr eval's metrics) is not on the GPU image
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
LOG="$OUT/tput.log"
DATA=runs/real-val/im2latex
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$LOG" 2>&1
bench() { timeout "$1" python3 bench/infer.py --model default --device cuda --data "$DATA" --max-new-tokens 256 \
  --workers 15 --stream "${@:2}" >> "$LOG" 2>&1 || echo "exit $? ($*)" >> "$LOG"; }

[ "${SKIP_TESTS:-0}" = 1 ] || timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_compact.py \
  -k "gpu" > "$OUT/gpu_tests.txt" 2>&1

bench 150 --paths fast,fast+gfv+norm+compile --batches 1024 --images "${IMAGES:-16384}" --json "$OUT/tput_1024.json"
[ "${SKIP_B1:-0}" = 1 ] || bench 60 --paths fast,fast+gfv+vgraph+norm+compile --batches 1 --images 32 --json "$OUT/tput_1.json"
[ "${SKIP_OTHER_BATCHES:-0}" = 1 ] || bench 120 --paths fast+gfv+norm+compile --batches 512 2048 --images 16384 \
  --json "$OUT/tput_512_2048.json"

SKIP_BENCH=1 SKIP_7B=1 SKIP_PHASES=1 SKIP_COMPILE=1 SKIP_FP32=1 REPEAT=${REPEAT:-32} EVAL_S=100 \
  OUT="$OUT/eval" bash bench/infer_gpu.sh > /dev/null 2>&1
cp "$OUT"/eval/eval*.json "$OUT/" 2>/dev/null; grep -h "seconds:\|images_per_s_end" "$OUT/eval/infer_gpu.log" >> "$LOG"

[ "${SKIP_PHASES:-0}" = 1 ] || TEXOCR_GPU_LEVERS=all timeout 80 python3 bench/infer_phases.py --device cuda --data "$DATA" --batches 1024 \
  --rounds 2 --trace --json "$OUT/phases_levers.json" > "$OUT/phases_levers.txt" 2>&1

[ "${SKIP_PROFILE:-0}" = 1 ] || timeout 90 python3 -m cProfile -o /tmp/stream.prof bench/infer.py --model default --device cuda --data "$DATA" \
  --max-new-tokens 256 --workers 15 --stream --paths fast+gfv+norm+compile --batches 1024 --images 8192 >> "$LOG" 2>&1
[ "${SKIP_PROFILE:-0}" = 1 ] || python3 -c "import pstats; p = pstats.Stats('/tmp/stream.prof'); p.sort_stats('tottime').print_stats(35); \
p.sort_stats('cumulative').print_stats(45)" > "$OUT/stream_profile.txt" 2>&1
grep -h "^|" "$LOG" | tail -20
