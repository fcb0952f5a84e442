#!/usr/bin/env bash
# The packages bench/train_speed.py needs on the GPU machine beyond its image (Unsloth and its dependencies,
# bitsandbytes for QLoRA, Liger), as one tar.gz of a site-packages folder (~30 MB; the device carries 64 MiB a call),
# the way ../shared/anchors/README.md brought Unsloth there. Run here (CPU machine, PyPI reachable):
#
#     bash scripts/unsloth_bundle.sh .carry/unsloth        # -> .carry/unsloth/site.tgz
#
# On the GPU machine: mkdir -p /tmp/site && tar -xzf .carry/unsloth/site.tgz -C /tmp/site; PYTHONPATH=/tmp/site:...
# (bench/train_speed_gpu.sh does it). Versions are the anchors' (Unsloth 2026.10.9, bitsandbytes 0.50.2).
set -eu -o pipefail
OUT=${1:-.carry/unsloth}
TMP=$(mktemp -d)
mkdir -p "$OUT" "$TMP/whl" "$TMP/site"
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d "$TMP/whl" \
  "unsloth==2026.10.9" "unsloth_zoo==2026.10.9" "bitsandbytes==0.50.2" "trl<=1.15" "datasets<5" torchao \
  cut_cross_entropy tyro docstring-parser typeguard msgspec structlog json5 nest-asyncio diffusers dill \
  multiprocess hf_transfer pydantic pydantic-core annotated-types typing-inspection "liger-kernel==0.8.5" 2>&1 \
  | grep -v "is ignored: it is neither" || true
for w in "$TMP"/whl/*.whl; do python3 -m zipfile -e "$w" "$TMP/site"; done
rm -rf "$TMP/site/studio" "$TMP/site/unsloth/studio"
# bitsandbytes ships a library per CUDA / ROCm / XPU version; the GPU image is CUDA 13
find "$TMP/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda13*' ! -name 'libbitsandbytes_cpu.so' -delete
tar -czf "$OUT/site.tgz" -C "$TMP/site" .
du -h "$OUT/site.tgz"
rm -rf "$TMP"
