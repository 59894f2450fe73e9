#!/usr/bin/env bash
# One script for a lent GPU machine (at most 9.5 minutes: each step has its own time limit): the golden cases and the
# no-host-sync checks on CUDA, then speed of the published architecture at batch 1/8/32 in tf32 (fp32
# with TF32 matrix products) and bf16, with and without writing maps and heatmaps, bf16 drift from fp32, and --compile last.
#
# Before borrowing the GPU, here: bash benchmarks/gpu_wheels.sh   (fetches open_clip & co into .whl/)
# Then ONE device run, carry [".whl"], timeout_s 600:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . \
#     && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh python3 2>&1 | tee $OUT/gpu_check.log
#
# Usage elsewhere (from the repository root, with the package installed): bash benchmarks/gpu_check.sh [python]
set -uo pipefail
py=${1:-python3}
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)"

step "golden cases, engine units and host-sync checks on CUDA"
FADE_TEST_DEVICE=cuda timeout 150 "$py" -m pytest -q -p no:cacheprovider \
  tests/test_golden.py tests/test_engine_units.py tests/test_preprocess.py tests/test_gpu.py

step "speed: published architecture, random weights, scales 240/448/896, 1 shot"
timeout 240 "$py" benchmarks/bench_engine.py --arch published --device cuda --images 64 --batch-sizes 1,8,32 \
  --precisions tf32,bf16 --write

step "bf16 and fp16 against fp32 on the golden cases"
timeout 45 "$py" benchmarks/precision_drift.py --device cuda --precisions bf16,fp16

step "speed with --compile (bf16, batch 32)"
timeout 120 "$py" benchmarks/bench_engine.py --arch published --device cuda --images 64 --batch-sizes 32 \
  --precisions bf16 --compile
