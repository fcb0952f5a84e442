#!/bin/bash
# Old vs new CPU inference of the default model, alternated in one session (bench/compact.md, "CPU fast paths").
#   OLD=/tmp/old bash bench/cpu_fast_paths.sh > bench/results/compact_v6_cpu_fast_paths.txt
# OLD: a checkout of the code before the change (e.g. `git archive <commit> | tar -x -C /tmp/old`); REPS rounds,
# each running old and new (order swapped every round) at glyph heights 14 and 16, batches 1 and 32; THREADS (2).
set -u
OLD=${OLD:?a checkout of the old code}
NEW=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-/work/main/.venv/bin/python}
DATA=${DATA:-/work/main/runs/real-val/im2latex}
REPS=${REPS:-3}
THREADS=${THREADS:-2}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC') $(nproc) cores, $(lscpu | grep 'Model name' | sed 's/  */ /g'); old=$OLD new=$NEW"
echo "# bench/infer.py --model default --data $DATA --max-new-tokens 256 --batches 1 32 --images 64 --threads $THREADS --glyph-height G"
for rep in $(seq 1 "$REPS"); do
  for g in 14 16; do
    if [ $((rep % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
    for which in $order; do
      dir=$OLD; [ "$which" = new ] && dir=$NEW
      echo "== rep $rep glyph $g $which load $(cut -d' ' -f1 /proc/loadavg)"
      (cd "$dir" && PYTHONPATH=src "$PY" bench/infer.py --model default --data "$DATA" --max-new-tokens 256 \
        --batches 1 32 --images 64 --threads "$THREADS" --glyph-height "$g" 2>/dev/null | grep '^| [0-9]')
    done
  done
done
echo ALLDONE
