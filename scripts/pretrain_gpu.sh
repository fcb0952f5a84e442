#!/usr/bin/env bash
# One device command of texocr's compact pretraining (issue 6). Call it again on the warm machine to continue:
# scripts/pretrain_compact.py resumes from $WORK/state.pt (weights + optimizer) when it is there.
#
# Prepare on the CPU machine first (~5 minutes; TeX installed; .carry/ is git-ignored and travels by `carry`):
#   .venv/bin/python scripts/heldout.py split --out .carry/im2latex
#   .venv/bin/python scripts/pretrain_pack.py --out .carry/pack --max-mb 52      # ~50k TeX renders, ~55 MB
#   .venv/bin/python scripts/heldout.py render --out .carry/val-im2latex --limit 300
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .carry/whl rapidfuzz==3.14.6                  # metrics need it there
# Each device call (at most 10 minutes each; the lr schedule spans BUDGET seconds of training in all):
#   command: "BUDGET=1500 SECONDS_THIS=470 bash scripts/pretrain_gpu.sh"
#   carry: [".carry/pack", ".carry/val-im2latex", ".carry/whl"]     (the working tree limit is 64 MiB in all)
# Or DATA=tex: no pack; formulas rendered on the fly by a carried TeX (`bash scripts/tex_bundle.sh .carry/tex`,
#   19.6 MB), from the real TRAIN formulas (.carry/im2latex) and the generator; carry
#   [".carry/tex", ".carry/im2latex", ".carry/val-im2latex", ".carry/whl"].
# A different .carry/pack in each call (render several with different --seed) grows the pool: the warm
# machine keeps the earlier ones in $WORK/packs. INIT=src/texocr/assets/default-model continues from the
# committed weights (new optimizer, short warm-up) instead of a random init.
# CPU dry run (~1 minute): OUT=/tmp/pg WORK=/tmp/pgw SIZE=tiny SECONDS_THIS=15 VAL_LIMIT=4 \
#   EXTRA_ARGS="--train.batch_size 4 --train.dataloader_workers 1" PYTHON=.venv/bin/python bash scripts/pretrain_gpu.sh
# It writes to $OUT/w (at most 8 files): bf16 weight shards + index, curve.csv (appended per command),
# metrics.json (steps, samples/s, and greedy-decoding metrics on the first VAL_LIMIT validation renders),
# and $OUT/log.txt. Assemble the model here as bench/compact.md describes.
set -u -o pipefail
OUT=${OUT:-/tmp/pretrain-out}
WORK=${WORK:-/tmp/pre}
SIZE=${SIZE:-small}
BUDGET=${BUDGET:-1500}
SECONDS_THIS=${SECONDS_THIS:-470}
VAL_LIMIT=${VAL_LIMIT:-300}
mkdir -p "$OUT/w" "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src
# rapidfuzz (texocr.metrics) is not on the GPU image: carry its cp312 wheel in .carry/whl (device README)
if ls .carry/whl/*.whl >/dev/null 2>&1; then
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
DATA=${DATA:-pack}   # pack: pre-rendered packs; tex: render on the fly with the carried TeX bundle
if [ "$DATA" = tex ]; then
  needs=(.carry/tex/tex.tar.xz .carry/im2latex/train/labels.jsonl .carry/val-im2latex/labels.jsonl)
else
  needs=(.carry/pack/pack.bin .carry/pack/index.jsonl.gz .carry/val-im2latex/labels.jsonl)
fi
for need in "${needs[@]}"; do
  [ -f "$need" ] || { echo "missing $need: prepare it on the CPU machine (see the header) and carry .carry"; exit 2; }
done
DATA_ARGS=()
if [ "$DATA" = tex ]; then  # scripts/tex_bundle.sh: latex + dvipng + fonts, relocatable (bench/tex_bundle.md)
  [ -x /tmp/texbundle/bin/latex ] || tar -xJf .carry/tex/tex.tar.xz -C /tmp || exit 2
  # shellcheck disable=SC1091
  source /tmp/texbundle/activate.sh && latex --version | head -1 || exit 2
  DATA_ARGS=(--renderer tex)
else
  # the warm machine keeps every pack carried so far (one per call at most: 64 MiB): train on all of them
  PACK_ID=$(sha256sum .carry/pack/index.jsonl.gz | cut -c1-12)
  [ -d "$WORK/packs/$PACK_ID" ] || { mkdir -p "$WORK/packs" && cp -r .carry/pack "$WORK/packs/$PACK_ID.part" \
    && mv "$WORK/packs/$PACK_ID.part" "$WORK/packs/$PACK_ID"; }
  for d in "$WORK"/packs/*/; do [[ "$d" == *.part/ ]] || DATA_ARGS+=(--pack "${d%/}"); done
fi
# .carry/val-train (optional: `scripts/heldout.py render --part train --limit 300 --out .carry/val-train`): the same
# evaluation on formulas trained on, beside the TEST one; the gap between the two is what the model memorized
[ -f .carry/val-train/labels.jsonl ] && DATA_ARGS+=(--val .carry/val-train)
# INIT: a compact model folder to start from on a fresh machine (e.g. the committed default model)
INIT_ARGS=()
[ -n "${INIT:-}" ] && INIT_ARGS=(--model "$INIT")
# GROW: deepen INIT to a deeper compact size first (e.g. GROW=small-v7; the new layers start as identities).
# Assemble the weights that come back with --size "$GROW".
[ -n "${GROW:-}" ] && INIT_ARGS+=(--grow "$GROW")
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; nproc; date -u; } | tee -a "$OUT/log.txt"
# the process stops itself after SECONDS_THIS of training; timeout is only a guard against a hang
timeout -k 10 "$((SECONDS_THIS + 100))" "${PYTHON:-python3}" scripts/pretrain_compact.py --config configs/compact/pretrain.yaml \
  --out "$WORK" --size "$SIZE" "${DATA_ARGS[@]}" "${INIT_ARGS[@]}" --seconds "$SECONDS_THIS" --budget-seconds "$BUDGET" \
  --warmup-steps 300 --save-every 120 --export "$OUT/w" --val .carry/val-im2latex --val-limit "$VAL_LIMIT" \
  ${EXTRA_ARGS:-} 2>&1 \
  | grep --line-buffered -v -E "Writing model shards|Loading weights" | tee -a "$OUT/log.txt"
rc=${PIPESTATUS[0]}
# curve.csv lives in the export folder, which $OUT empties before every command: keep the whole curve in $WORK
cat "$OUT/w/curve.csv" >> "$WORK/curve_all.csv" 2>/dev/null && cp "$WORK/curve_all.csv" "$OUT/w/curve.csv"
echo "pretrain_compact exit $rc"
exit "$rc"
