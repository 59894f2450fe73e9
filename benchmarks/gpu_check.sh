#!/usr/bin/env bash
# One script for a lent GPU machine: golden cases on CUDA, then speed at batch 1/8/32 in fp32 (TF32) and bf16.
# Usage (from the repository root, with the package installed): bash benchmarks/gpu_check.sh [python]
set -uo pipefail
py=${1:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
FADE_TEST_DEVICE=cuda "$py" -m pytest -q -p no:cacheprovider tests/test_golden.py tests/test_engine_units.py
"$py" benchmarks/precision_drift.py --device cuda --precisions bf16,fp16
"$py" benchmarks/bench_engine.py --arch published --device cuda --images 64 --batch-sizes 1,8,32 \
  --precisions fp32,bf16 --tf32
