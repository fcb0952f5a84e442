# Sourced by the GPU-machine launchers (scripts/pretrain_gpu.sh, bench/pretrain_parity.sh): carried wheels on
# PYTHONPATH, the carried data unpacked into .carry, the relocatable TeX bundle on PATH. Needs PY set.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH=$PWD/src
if ls .carry/whl/*.whl >/dev/null 2>&1; then  # rapidfuzz (texocr.metrics) is not on the GPU image
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
[ -f .carry/bundle/data.tgz ] && { [ -d .carry/real ] || tar -xzf .carry/bundle/data.tgz -C .carry || return 2; }
for need in .carry/im2latex/train/labels.jsonl .carry/real/crohme.jsonl.gz .carry/val-real-im2latex/labels.jsonl; do
  [ -f "$need" ] || { echo "missing $need: prepare it on the CPU machine (see the header) and carry .carry"; return 2; }
done
if ! command -v latex >/dev/null; then  # scripts/tex_bundle.sh: latex + dvipng + fonts, relocatable
  [ -x /tmp/texbundle/bin/latex ] || tar -xJf .carry/tex/tex.tar.xz -C /tmp || return 2
  # shellcheck disable=SC1091
  source /tmp/texbundle/activate.sh
fi
latex --version | head -1 || return 2
