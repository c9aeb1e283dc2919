#!/usr/bin/env bash
# One command for a GPU session (H200, PyTorch + CUDA, no network, no diffusers): about 8 minutes.
#
#   benchmarks/gpu/fetch_wheels.sh          # once, here (network): wheels into benchmarks/gpu/wheels/
#   benchmarks/gpu/session.sh               # there: writes benchmarks/results/h200-synthetic-full/
#   benchmarks/gpu/session.sh --dry OUT     # anywhere: the same steps on synthetic:tiny, CPU, fp32 (tests)
#
# Steps: (1) invsr-bench --device cuda on synthetic:full, torch-eager fp16 against torch-fast fp16 (CUDA
# graphs via torch.compile reduce-overhead), 1 and 5 steps, batch 1 and 8; (2) the image mode: a 1024x1024
# LR image through the runtime's tile scheduler with the torch-fast chain (batch 8, 1 step) as the device:
# latency, MPix/s, device-bound efficiency.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

if [[ "${1:-}" == "--dry" ]]; then
  OUT=${2:?--dry needs an output folder}
  BASE=synthetic:tiny DEVICE=cpu PREC=fp32 STEPS=1 BATCH=1 WARMUP=0 ITERS=1 IMAGE=64x48 COMPILE=--no-compile
else
  OUT=${OUT:-benchmarks/results/h200-synthetic-full}
  BASE=synthetic:full DEVICE=cuda PREC=fp16 STEPS=1,5 BATCH=1,8 WARMUP=3 ITERS=10 IMAGE=1024x1024 COMPILE=
fi

SITE=${TMPDIR:-/tmp}/invsr-site
if compgen -G "benchmarks/gpu/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    benchmarks/gpu/wheels/*.whl
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 INVSR_TRT_CACHE=${INVSR_TRT_CACHE:-${TMPDIR:-/tmp}/invsr-cache}
mkdir -p "$OUT"
[[ "$DEVICE" == cuda ]] && { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; }

echo "== 1/2 tiles: torch-eager vs torch-fast, $PREC, steps $STEPS, batch $BATCH"
python3 -m benchmarks.cli --out "$OUT/tiles" --base "$BASE" --backends torch-eager,torch-fast \
  --precisions "$PREC" --steps "$STEPS" --batch "$BATCH" --device "$DEVICE" --warmup "$WARMUP" --iters "$ITERS" \
  $COMPILE --description "benchmarks/gpu/session.sh: torch-eager vs torch-fast (CUDA graphs) on $BASE"

echo "== 2/2 image mode: $IMAGE LR through the tile scheduler, torch-fast $PREC b${BATCH##*,} as the device"
python3 -m benchmarks.cli --image "$IMAGE" --out "$OUT/image" --base "$BASE" --backends torch-fast \
  --precisions "$PREC" --steps 1 --batch "${BATCH##*,}" --device "$DEVICE" --iters 2 $COMPILE --no-memory

echo "== wrote $OUT/tiles/report.md and $OUT/image/report.md"
