#!/usr/bin/env bash
# One device command of the compact model's pretraining: `texocr train --config configs/compact/pretrain.yaml`
# for MINUTES of training, resumed from the newest checkpoint on the warm machine (`--train.resume latest`), then
# the model exported in bf16 (two <= 15 MB parts of a tar: $OUT takes 8 files of 16 MiB) and evaluated on the
# carried held-out probes. Call it again on the warm machine to continue; the learning rate follows a cosine over
# the config's train.budget_minutes of training time, kept in the checkpoints.
#
# Prepare on the CPU machine first (TeX installed; .carry/ is git-ignored and travels by `carry`):
#   .venv/bin/python scripts/real_data.py                     # .carry/real + .carry/val-real-* (+ runs/real-val)
#   .venv/bin/python scripts/heldout.py split --out .carry/im2latex
#   bash scripts/tex_bundle.sh .carry/tex                     # 19.6 MB relocatable TeX (bench/tex_bundle.md)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .carry/whl rapidfuzz==3.14.6                  # metrics need it there
#   tar -czf .carry/bundle/data.tgz -C .carry real im2latex val-real-im2latex val-real-crohme   # < 64 MiB in all
# Each device call: command "MINUTES=8 bash scripts/pretrain_gpu.sh", carry [".carry/tex", ".carry/whl", ".carry/bundle"]
# Then here: cat /work/.device/N/model.tar.* | tar -x -C runs/compact-new   (a loadable model folder)
# EXTRA: more `--section.key value` overrides (e.g. "--train.budget_minutes 20").
# CPU dry run (~1 minute): OUT=/tmp/pg WORK=/tmp/pgw MINUTES=0.3 PYTHON=.venv/bin/python \
#   EXTRA="--model.init_size tiny --train.batch_size 4 --train.dataloader_workers 1 --data.val_limit 4" bash scripts/pretrain_gpu.sh
set -u -o pipefail
OUT=${OUT:-/tmp/pretrain-out}
WORK=${WORK:-/tmp/pre}
MINUTES=${MINUTES:-8}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
source scripts/gpu_env.sh || exit 2   # wheels, carried data, the TeX bundle
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; nproc; date -u; } | tee -a "$OUT/log.txt"
RUN=$WORK/run
# A device call cut by its time limit returns only what is under $OUT: every new checkpoint is exported there as
# partial.tar.* (bf16, replacing the previous one) so that a cut run still brings back its last checkpoint.
export_partial() {
  local seen="" ck
  while sleep 20; do
    ck=$(ls -d "$RUN"/checkpoints/checkpoint-* 2>/dev/null | sort -V | tail -1)  # -V: 1000 after 400
    [ -n "$ck" ] && [ "$ck" != "$seen" ] && [ -f "$ck/texocr_complete" ] || continue
    rm -rf "$WORK/partial" && "$PY" -m texocr export --model "$ck" --dtype bfloat16 --out "$WORK/partial" >/dev/null 2>&1 \
      && rm -f "$OUT"/partial.tar.* && tar -cf - -C "$WORK/partial" . | split -b 15m - "$OUT/partial.tar." \
      && echo "partial export: $(basename "$ck")" >> "$OUT/log.txt" && seen=$ck
  done
}
export_partial &
WATCH=$!
# shellcheck disable=SC2086
timeout -k 10 "$(awk "BEGIN{print int($MINUTES*60+240)}")" "$PY" -m texocr train --config configs/compact/pretrain.yaml \
  --train.output_dir "$RUN" --train.max_minutes "$MINUTES" --train.resume latest ${EXTRA:-} 2>&1 \
  | grep --line-buffered -v -E "Writing model shards|Loading weights|it/s\]$" | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
kill "$WATCH" 2>/dev/null
echo "texocr train exit $rc" | tee -a "$OUT/log.txt"
cp "$RUN/logs/metrics.csv" "$RUN/metrics.json" "$OUT/" 2>/dev/null
if [ -f "$RUN/model/config.json" ]; then
  rm -rf "$WORK/bf16"
  "$PY" -m texocr export --model "$RUN/model" --dtype bfloat16 --out "$WORK/bf16" 2>&1 | tail -2
  tar -cf - -C "$WORK/bf16" . | split -b 15m - "$OUT/model.tar." && rm -f "$OUT"/partial.tar.*
  for val in .carry/val-real-im2latex .carry/val-real-crohme; do
    [ -f "$val/labels.jsonl" ] || continue
    rm -rf "$WORK/eval-$(basename "$val")"
    "$PY" -m texocr eval --model "$WORK/bf16" --data "$val" --out "$WORK/eval-$(basename "$val")" --no-render \
      --batch-size 128 2>&1 | tail -3 | tee -a "$OUT/log.txt"
  done
fi
exit "$rc"
