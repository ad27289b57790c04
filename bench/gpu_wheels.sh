#!/usr/bin/env bash
# Wheels bench/gpu.py needs on a GPU host whose image already holds CUDA torch, transformers,
# peft, accelerate, tokenizers, pyarrow, pandas and huggingface_hub, but not the QLoRA stack
# (bitsandbytes, TRL, datasets), pydantic (core.spec) or Liger. It downloads them into .whl/
# (ignored by git) for an offline `pip install --no-index`.
#
# bitsandbytes' wheel ships kernels for every CUDA/ROCm version (43 MB). This script keeps only
# the CPU kernel and the CUDA one the host needs (CUDA 13.0 by default), so the wheels plus
# the repository stay far under a 64 MiB transfer.
#
#   bench/gpu_wheels.sh [cuda-version, default 130]   then on the GPU host:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 bench/gpu.py
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA="${1:-130}"
PY="${PYTHON:-.venv/bin/python}"
OUT=.whl
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
rm -rf "$OUT" && mkdir -p "$OUT"

# Versions: what this repository is tested with (pyproject ranges), for Python 3.12 x86-64.
# liger-kernel (the `gpu` extra) is a pure-Python wheel (py3-none-any, ~0.9 MB): its kernels are
# Triton, compiled on the host by the triton that CUDA torch wheels depend on; nothing to build.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$OUT" \
  bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  liger-kernel==0.8.5

# Slim bitsandbytes: drop the kernels of other CUDA/ROCm versions (the wheel's RECORD lists
# hashes of the files it holds, so drop their lines too).
whl=$(ls "$OUT"/bitsandbytes-*.whl)
tmp=$(mktemp -d)
(cd "$tmp" && unzip -q "$OLDPWD/$whl")
find "$tmp/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cpu.so' \
  ! -name "libbitsandbytes_cuda${CUDA}.so" -delete
record=$(ls "$tmp"/bitsandbytes-*.dist-info/RECORD)
grep -v -E 'libbitsandbytes_(cuda|rocm)[0-9]+\.so' "$record" >"$record.new" || true
grep -E "libbitsandbytes_cuda${CUDA}\.so" "$record" >>"$record.new" || true
mv "$record.new" "$record"
rm "$whl"
(cd "$tmp" && zip -q -r "$OLDPWD/$whl" .)
rm -rf "$tmp"
du -ch "$OUT"/*.whl | tail -1
