#!/usr/bin/env bash
# One device command for issues 4 and 5's GPU numbers, in priority order, each part under its own `timeout`
# so that one hanging part loses nothing else; everything lands in $OUT as it comes (<= 8 files).
#   1. the seeds' setups at full size through `texocr train --config <shipped config>`  (bench/seeds_gpu.py)
#   2. texocr vs plain QLoRA on the Qwen2-VL-2B shape, both with expandable_segments    (bench/train_gpu.py)
#   3. Recognizer throughput/latency on the Qwen2-VL-2B shape, batch 1 and 32           (bench/infer.py)
# Run from the repository root on the GPU machine, with `.whl/` (bitsandbytes) carried:
#   bash bench/gpu_session.sh          (OUT=/some/dir bash bench/gpu_session.sh elsewhere)
# Budget: about 545 s of wall time in all (T1 + T2 + T3 below, plus the wheel install).
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
T1=${T1:-290} T2=${T2:-170} T3=${T3:-80}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c 'import torch, transformers, peft, bitsandbytes, accelerate; print("torch", torch.__version__,
"transformers", transformers.__version__, "peft", peft.__version__, "bitsandbytes", bitsandbytes.__version__,
"accelerate", accelerate.__version__)'
  df -h /tmp | tail -1
} 2>&1 | tee "$OUT/env.txt"

echo "== part 1: seeds at full size"
timeout -k 10 "$T1" python3 bench/seeds_gpu.py --work /tmp/seeds --steps 20 --warmup 5 --timeout 150 \
  --out "$OUT/seeds.jsonl" 2>&1 | tee "$OUT/seeds.log"
echo "part 1 exit ${PIPESTATUS[0]}"
rm -rf /tmp/seeds

echo "== part 2: texocr vs plain QLoRA, Qwen2-VL-2B shape, batch 32, expandable_segments"
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout -k 10 "$T2" python3 bench/train_gpu.py --shape 2b \
  --batch 32 --steps 28 --warmup 8 --runs texocr-qlora plain-qlora --work /tmp/bench \
  --out "$OUT/qlora_2b.jsonl" 2>&1 | tee "$OUT/qlora_2b.log"
echo "part 2 exit ${PIPESTATUS[0]}"

echo "== part 3: Recognizer on the Qwen2-VL-2B shape"
timeout -k 10 "$T3" python3 bench/infer.py --model qwen2-vl-2b --batches 1 32 2>&1 | tee "$OUT/infer.log"
echo "part 3 exit ${PIPESTATUS[0]}"
