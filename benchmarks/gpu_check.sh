#!/usr/bin/env bash
# GPU check: the GPU-marked tests, then the GRPO-vs-SDPO step benchmark on CUDA in bf16.
# Usage (repository root): bash benchmarks/gpu_check.sh   (a few minutes on one H100)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("card:", torch.cuda.get_device_name(), "| torch", torch.__version__)
PY
python -m pytest tests -m gpu -q -x -p no:cacheprovider || test $? -eq 5  # 5 = none collected
python benchmarks/step_time.py --model tiny --device cuda --mixed-precision bf16
python benchmarks/step_time.py --model smollm2-135m --device cuda --mixed-precision bf16 \
    --questions 8 --rollouts 8 --max-new-tokens 256 --micro-batch-size 16
