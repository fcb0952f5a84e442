#!/bin/bash
# CPU speed of the shipped model (`default`) against v5, alternated in one session (bench/compact.md):
#   V5=runs/v5 bash bench/compact_speed.sh > bench/results/compact_vN_cpu_speed.txt
# V5: a model folder of v5 (`git show f445edf:src/texocr/assets/default-model/model.safetensors` beside the other
# files of the default model, or any baseline); REPS rounds over the published images and the TeX renders, the order
# of v5 (float32, as it was read when shipped) / default as shipped (its texocr_options.json; bf16 on a CPU with
# native bf16) / the previous shipped way of reading (float32, 16 px, no second read) reversed every other round.
set -u
cd "$(dirname "$0")/.."
V5=${V5:-runs/v5}
PY=${PY:-.venv/bin/python}
REPS=${REPS:-3}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/  */ /g'); commit $(git rev-parse --short HEAD)"
echo "# bench/infer.py --model M --data D --max-new-tokens 256 --batches 1 32 --images 64 --threads 2 [ARGS]"
for rep in $(seq 1 "$REPS"); do
  for data in runs/real-val/im2latex runs/im2latex-test; do
    if [ $((rep % 2)) -eq 1 ]; then order="v5 dflt prev"; else order="prev dflt v5"; fi
    for m in $order; do
      case $m in
        v5) args=(--model "$V5" --glyph-height 0 --dtype float32) ;;  # as v5 was read when it shipped
        dflt) args=(--model default) ;;
        prev) args=(--model default --dtype float32 --glyph-height 16 --reread 0) ;;
      esac
      echo "== rep $rep $m $data load $(cut -d' ' -f1 /proc/loadavg)"
      PYTHONPATH=src "$PY" bench/infer.py "${args[@]}" --data "$data" --max-new-tokens 256 --batches 1 32 \
        --images 64 --threads 2 2>/dev/null | grep '^| fast'
    done
  done
done
echo ALLDONE
