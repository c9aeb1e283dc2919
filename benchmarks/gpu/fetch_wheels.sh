#!/usr/bin/env bash
# Download (here, with network) the wheels benchmarks/gpu/session.sh installs on the GPU machine, which has
# PyTorch, CUDA, onnx, onnxruntime, numpy, Pillow, psutil, matplotlib and tqdm but no network and no diffusers.
# Pure-Python wheels for the GPU image's Python 3.12; they land in benchmarks/gpu/wheels/ (git-ignored) and
# travel with the working tree (`carry: ["benchmarks/gpu/wheels"]`).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
WHEELS=(
  "diffusers==0.42.1"          # invsr_train's UNet / VAE classes (synthetic:full is built from them)
  "importlib_metadata==8.7.0"  # diffusers' one requirement the GPU image lacks
)
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -d wheels "${WHEELS[@]}"
ls -l wheels
