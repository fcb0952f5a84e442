#!/usr/bin/env bash
# Issue 19: the removed pretraining script (scripts/pretrain_compact.py as of commit 6f89045, carried in
# .carry/old with its config: `git show 6f89045:scripts/pretrain_compact.py > .carry/old/pretrain_compact.py`,
# likewise configs/compact/pretrain.yaml -> .carry/old/pretrain.yaml) against `texocr train` with
# configs/compact/pretrain.yaml: the same start (the shipped v5), data, batch, optimizer and time schedule;
# the script for SECONDS of training, then `texocr train` for the same number of steps; both models' loss on
# the same held-out images (bench/val_loss.py). The texocr run is the first part of the training that
# scripts/pretrain_gpu.sh continues (--train.resume latest) on the warm machine.
#   device: command "SECONDS_OLD=75 bash bench/pretrain_parity.sh",
#           carry [".carry/tex", ".carry/whl", ".carry/bundle", ".carry/old"]
set -u -o pipefail
OUT=${OUT:-/tmp/parity-out}
WORK=${WORK:-/tmp/pre}
PY=${PYTHON:-python3}
SECONDS_OLD=${SECONDS_OLD:-75}
BUDGET_MIN=${BUDGET_MIN:-16}
mkdir -p "$OUT" "$WORK"
source scripts/gpu_env.sh || exit 2
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; date -u; } | tee -a "$OUT/parity.txt"
REAL=(--real printed:.carry/real/im2latex:1 --real ink:.carry/real/crohme.jsonl.gz:2 --real handwritten:.carry/real/hand:0.5)
timeout -k 10 $((SECONDS_OLD + 200)) "$PY" .carry/old/pretrain_compact.py --config .carry/old/pretrain.yaml \
  --out "$WORK/old" --model src/texocr/assets/default-model --renderer tex --seconds "$SECONDS_OLD" \
  --budget-seconds $((BUDGET_MIN * 60)) --warmup-steps 300 --save-every 100000 --export "$WORK/old/w" \
  --replay 2 --printed-ratio 0.85 --printed-aug 0.25 --probe-every 100000 "${REAL[@]}" --real-ratio 0.5 \
  --train.lr 3e-4 --data.mutate_ratio 0.9 --data.seed 13 --data.real_formula_ratio 0.6 \
  "--data.printed_dpis=[100,110,120,120,130,150,170,200,240]" 2>&1 \
  | grep --line-buffered -E "step |first batch|compact pretraining|Error|error" | tee -a "$OUT/parity.txt"
STEPS=$("$PY" -c "import json; print(json.load(open('$WORK/old/w/metrics.json'))['command_steps'])") || exit 3
echo "old script: $(cat "$WORK/old/w/metrics.json" | tr -d '\n ')" | tee -a "$OUT/parity.txt"
T0=$(date +%s)
timeout -k 10 600 "$PY" -m texocr train --config configs/compact/pretrain.yaml --train.output_dir "$WORK/run" \
  --train.max_steps "$STEPS" --train.max_minutes 8 --train.budget_minutes "$BUDGET_MIN" --data.val "[]" 2>&1 \
  | grep --line-buffered -E "'loss'|train_runtime|samples|trained|Error|error" | tee -a "$OUT/parity.txt"
echo "texocr train wall $(( $(date +%s) - T0 )) s" | tee -a "$OUT/parity.txt"
cp "$WORK/run/logs/metrics.csv" "$OUT/parity_texocr_metrics.csv"
for args in "--model src/texocr/assets/default-model --weights $WORK/old/w" "--model $WORK/run/model"; do
  # shellcheck disable=SC2086
  "$PY" bench/val_loss.py $args --data .carry/val-real-im2latex --data .carry/val-real-crohme 2>&1 | tail -1 \
    | tee -a "$OUT/parity.txt"
done
