#!/usr/bin/env bash
# bench/train_speed.py on the GPU machine in one device call (Qwen2-VL-7B shape, random weights):
#
#     OUT=$OUT RUNS="plain-lora unsloth-lora texocr-lora" BATCH="32" bash bench/train_speed_gpu.sh
#     (device tool: carry [".carry/unsloth"], made here by scripts/unsloth_bundle.sh; ~3 minutes per 7B run after
#      a ~2 minute model build, so 2-3 runs per call; the model stays in /tmp/texocr-bench while the machine is warm)
#
# LEVERS=1 then runs bench/fast_train_gpu.py on the same model: all levers off, all on (full-size loss/gradient
# comparison and profile), and on without the offload: ~2.5 minutes more, each part under its own timeout.
#
# Writes $OUT/train_speed.jsonl (one JSON line per run, appended) and $OUT/train_speed.log (+ levers_*.json).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/train-speed-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -f .carry/unsloth/site.tgz ] && [ ! -d /tmp/site/unsloth ]; then
  mkdir -p /tmp/site && tar -xzf .carry/unsloth/site.tgz -C /tmp/site
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date -u; } >> "$OUT/train_speed.log" 2>&1
# shellcheck disable=SC2086
timeout -k 10 "${LIMIT_S:-540}" "$PY" bench/train_speed.py --shape "${SHAPE:-7b}" --batch ${BATCH:-32} \
  --runs ${RUNS:-plain-lora unsloth-lora texocr-lora} --steps "${STEPS:-20}" --warmup "${WARMUP:-5}" \
  --work /tmp/texocr-bench --out "$OUT/train_speed.jsonl" >> "$OUT/train_speed.log" 2>&1
echo "exit $?" >> "$OUT/train_speed.log"
tail -12 "$OUT/train_speed.log"
if [ "${LEVERS:-0}" = 1 ]; then
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  M=/tmp/texocr-bench/qwen2vl-${SHAPE:-7b} D=/tmp/texocr-bench/data B=${BATCH%% *}
  timeout -k 5 "${T_OFF:-60}" "$PY" bench/fast_train_gpu.py --model "$M" --data "$D" --batch "$B" --steps 2 \
    --grads /tmp/g-off.pt --off fused_lora lora_autocast_inputs liger_kernels offload_checkpoints answer_loss \
    vision_no_grad padding_free --json "$OUT/levers_off.json" >> "$OUT/levers.log" 2>&1
  timeout -k 5 "${T_ON:-70}" "$PY" bench/fast_train_gpu.py --model "$M" --data "$D" --batch "$B" --steps 4 \
    --grads /tmp/g-on.pt --compare /tmp/g-off.pt --json "$OUT/levers_on.json" >> "$OUT/levers.log" 2>&1
  timeout -k 5 "${T_NOOFF:-50}" "$PY" bench/fast_train_gpu.py --model "$M" --data "$D" --batch "$B" --steps 4 \
    --off offload_checkpoints --json "$OUT/levers_no_offload.json" >> "$OUT/levers.log" 2>&1
  grep -h '^{' "$OUT/levers.log" | cut -c1-1200
fi
