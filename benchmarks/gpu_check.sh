#!/usr/bin/env bash
# GPU check: the GPU-marked tests, the GRPO-vs-SDPO step benchmark on CUDA in bf16, then the
# vLLM section (its tests, HF-vs-vLLM generation throughput, a short run on the vLLM backend).
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

# --- vLLM generation backend (issue 14) ---------------------------------------------------
# Needs CUDA vLLM in this environment (`pip install vllm`; the rlrf[vllm] extra is the CPU build).
if python -c "import vllm" >/dev/null 2>&1; then
    # every vLLM test, the GPU-marked sleep/sync one included (engine on CUDA, HF on CPU/GPU)
    python -m pytest tests/algorithms/sampling/test_vllm.py -q -x -p no:cacheprovider -ra
    # tokens/s of HF sampling vs vLLM, both bf16, engine start and weight-sync time
    python benchmarks/generation.py --device cuda --hf-dtype bfloat16 --vllm-dtype bfloat16 \
        --prompts 32 --n 8 --max-new-tokens 256 --gpu-memory-utilization 0.3
    # one short training run on the vLLM backend, once the trainer has the flag
    if rlrf train --help 2>/dev/null | grep -q -- "--generation-backend"; then
        rlrf train --algo grpo --env rlrf/Arithmetic-v0 --env-kwargs '{"digits": 1}' \
            --model smollm2-135m --generation-backend vllm --steps 3 --mixed-precision bf16 \
            --output-dir "$(mktemp -d)/vllm-run"
    else
        echo "vLLM training run skipped: this rlrf train has no --generation-backend yet"
    fi
else
    echo "vLLM section skipped: vllm is not importable here (pip install vllm)"
fi

# --- FSDP2 (issue 15 item 4) ------------------------------------------------------------------
# FSDP2 shards over processes, one GPU each (NCCL refuses two ranks on one GPU): with 2+ GPUs,
# a short SDPO run sharded over two of them; with one, the gloo CPU test covers the logic.
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    torchrun --standalone --nproc-per-node 2 -m algorithms.sdpo \
        --env rlrf/Arithmetic-v0 --env-kwargs '{"digits": 1}' --model smollm2-135m \
        --parallelism fsdp2 --mixed-precision bf16 --steps 2 --questions-per-step 4 \
        --rollouts-per-question 4 --max-new-tokens 64 --checkpoint-every 1 \
        --output-dir "$(mktemp -d)/fsdp2-run"
else
    echo "FSDP2 GPU run skipped: needs 2+ GPUs (one rank per GPU)"
fi
OMP_NUM_THREADS=1 python -m pytest tests/algorithms/engine/test_parallel.py -q -x -p no:cacheprovider

# --- a paper recipe, scaled down (issue 29 item 3) --------------------------------------------
# recipes/lcb-sdpo.yaml (LiveCodeBench v6, SDPO with rich feedback) on one GPU in minutes: the
# embedded model instead of Qwen3-8B, the LiveCodeBench fixture (tests/envs/fixtures, the
# published schema) instead of the hub, 3 steps of 4 questions x 4 rollouts, 512-token
# responses, one process (DDP). The plan is printed first; the run reports its held-out accuracy.
LCB_FIXTURE='{"dataset": "tests/envs/fixtures/lcb_code_generation_lite.jsonl", "date_from": "2025-02-01", "date_until": "2025-05-01", "sandbox_kwargs": {"workers": 8}}'
RECIPE_SMALL=(--config recipes/lcb-sdpo.yaml --model smollm2-135m --env-kwargs "$LCB_FIXTURE"
    --parallelism ddp --steps 3 --questions-per-step 4 --rollouts-per-question 4
    --max-new-tokens 512 --mini-batches 4 --micro-batch-size 4 --teacher-max-prompt-tokens 2048
    --eval-every 3 --eval-k 2 --checkpoint-every 0 --output-dir "$(mktemp -d)/lcb-sdpo-small")
if python -c "import datasets" >/dev/null 2>&1; then
    rlrf train "${RECIPE_SMALL[@]}" --dry-run
    time rlrf train "${RECIPE_SMALL[@]}"
else
    echo "recipe run skipped: the datasets package is missing (pip install 'rlrf[data]')"
fi
