#!/usr/bin/env bash
# Run HERE (a machine with the package registry), before borrowing a GPU: fetches the wheels that the
# GPU machine's image lacks (it has torch, torchvision, numpy, pillow, click, rich, jinja2, scipy,
# scikit-learn, timm, huggingface_hub, safetensors, regex, tqdm) into .whl/, which git ignores.
# Then, in one device `run` with carry [".whl"] (see gpu_check.sh):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:. bash benchmarks/gpu_check.sh python3
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth
ls -la .whl
