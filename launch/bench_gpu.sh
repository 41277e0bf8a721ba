#!/usr/bin/env bash
# MFU of a ~1B SmolLM3-shaped model (configs/bench_gpu_1b.py), bf16, 4096 tokens, on one GPU.
# The MFU is against the GPU's dense bf16 peak (nopejax/tools/bench.py's table: A100, H100, H200).
#
#   bash launch/bench_gpu.sh [--dry-run] [extra nopejax.bench flags, e.g. --steps=50
#                             --config.data.batch_size=8 --config.model.remat=dots]
# Needs JAX's CUDA wheels: pip install -e . 'jax[cuda12]==0.10.2'
set -euo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
# One GPU; let XLA take most of its memory up front rather than growing into it.
CMD=(env CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
     "$PYTHON" -m nopejax.bench --config="$ROOT/configs/bench_gpu_1b.py" --steps=20 --warmup=3
     "$@")
if [ "$DRY" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
cd "$ROOT"
exec "${CMD[@]}"
