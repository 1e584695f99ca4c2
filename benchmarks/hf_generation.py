"""Tokens/s of HFPolicy sampling: the loop before issue 15's speed work vs the current one.

Both run in this process on the same model, prompts, seeds and lengths, alternating
(old, new, old, new, ...) so that a change in the machine's load hits both alike; the
samples of the two must be identical (same seed), which the benchmark checks. Next to the
figures, the machine's own limits measured here: memory bandwidth (a large tensor copy)
and fp32 matrix-product throughput, and what they allow for one decoding step (every
weight read once; ``2 x parameters x rows`` FLOPs).

    python benchmarks/hf_generation.py                       # SmolLM2-135M, fp32, 2 threads
    python benchmarks/hf_generation.py --threads 1 --repeats 3
    python benchmarks/hf_generation.py --model tiny          # random tiny model (seconds)
    python benchmarks/hf_generation.py --profile             # top ops of one new-loop call
    python benchmarks/hf_generation.py --generation-dtype bfloat16  # + opt-in bf16 sampling
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any

import torch

from algorithms.sampling.hf import HFPolicy, Sample, SamplingParams, _top_p_filter
from algorithms.scoring import cache_kwarg, left_padded, left_positions, output_cache

QUESTIONS = [
    "What is 17 + 25? Answer with the number only.",
    "Name a prime number larger than 50 and explain briefly why it is prime.",
    "Write one sentence about the sea.",
    "What is the capital of France?",
]


class OldLoopPolicy(HFPolicy):
    """HFPolicy with the sampling loop as it was before the speed work (the baseline)."""

    @torch.no_grad()
    def _generate(
        self, rows: list[list[int]], params: SamplingParams, generator: torch.Generator | None
    ) -> list[Sample]:
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        pad = int(self.tokenizer.pad_token_id)
        ids, attn = left_padded(rows, max(len(r) for r in rows), pad, device)
        positions = left_positions(attn)
        eos = torch.tensor(self.eos_token_ids, device=device)
        cache_kw = cache_kwarg(model)
        finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
        tokens: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        try:
            last, cache = self._prefill(rows, ids, attn, positions)
            for _ in range(params.max_new_tokens):
                logits = last.float()
                scaled = logits / params.temperature if params.temperature > 0 else logits
                logp = scaled.log_softmax(-1)
                if params.temperature == 0:
                    token = logits.argmax(-1)
                else:
                    pick = _top_p_filter(scaled, params.top_p) if params.top_p < 1 else scaled
                    token = torch.multinomial(pick.softmax(-1), 1, generator=generator)[:, 0]
                token = torch.where(finished, torch.full_like(token, pad), token)
                tokens.append(token)
                logps.append(logp.gather(-1, token[:, None])[:, 0])
                finished |= torch.isin(token, eos)
                if bool(finished.all()):
                    break
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                out = model(
                    input_ids=token[:, None], attention_mask=attn, position_ids=positions,
                    use_cache=True, **{cache_kw: cache},
                )  # fmt: skip
                last, cache = out.logits[:, -1], output_cache(out)
        finally:
            model.train(was_training)
        tok = torch.stack(tokens, 1).tolist()
        lp = torch.stack(logps, 1).tolist()
        samples = []
        for i, row in enumerate(rows):
            stop = [t for t, token_id in enumerate(tok[i]) if token_id in self.eos_token_ids]
            length = stop[0] + 1 if stop else len(tok[i])
            reason: Any = "stop" if stop else "length"
            ids_i = tok[i][:length]
            samples.append(
                Sample(
                    text=self.decode(ids_i),
                    token_ids=ids_i,
                    logprobs=lp[i][:length],
                    finish_reason=reason,
                    prompt_token_ids=row,
                )
            )
        return samples


def memory_bandwidth(nbytes: int = 2**28, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write), best of ``repeats``."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def gemm_flops(n: int = 1536, repeats: int = 5) -> float:
    """fp32 FLOP/s of an ``n x n`` matrix product, best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run(policy: HFPolicy, prompts: list, n: int, params: SamplingParams) -> tuple[float, list]:
    start = time.perf_counter()
    groups = policy.sample(prompts, n, params)
    return time.perf_counter() - start, [s for g in groups for s in g]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help='"tiny" or a model name/folder')
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls of each loop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="print the top ops of the new loop")
    ap.add_argument(
        "--generation-dtype",
        default=None,
        help="also time the new loop with HFPolicy.generation_dtype set (e.g. bfloat16); "
        "its samples differ from fp32's by design",
    )
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.prompts, args.samples, args.max_new_tokens = "tiny", 2, 2, 4
        args.repeats, args.threads = 1, 1
    torch.set_num_threads(args.threads)

    if args.model == "tiny":
        from algorithms.testing import tiny_model, tiny_tokenizer

        model, tokenizer = tiny_model(0, layers=4, hidden=64), tiny_tokenizer()
    else:
        from algorithms.models import load_model

        model, tokenizer = load_model(args.model, dtype=torch.float32)
    new, old = HFPolicy(model, tokenizer), OldLoopPolicy(model, tokenizer)
    contenders: list[tuple[str, HFPolicy]] = [("old", old), ("new", new)]
    if args.generation_dtype:
        low = HFPolicy(model, tokenizer)
        low.generation_dtype = getattr(torch, args.generation_dtype)
        contenders.append((f"new {args.generation_dtype}", low))
    prompts = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(4)]
    prompts = prompts[: args.prompts]
    rows = len(prompts) * args.samples
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens
    )
    load_before = os.getloadavg()
    bandwidth, flops = memory_bandwidth(), gemm_flops()
    new.sample(prompts[:1], 1, SamplingParams(max_new_tokens=2, seed=0))  # warm-up

    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    tokens: dict[str, list[int]] = {name: [] for name, _ in contenders}
    same = True
    for r in range(args.repeats):
        seeded = dataclasses.replace(params, seed=args.seed + r)
        results = {}
        for name, policy in contenders if r % 2 == 0 else contenders[::-1]:
            seconds, samples = run(policy, prompts, args.samples, seeded)
            times[name].append(seconds)
            tokens[name].append(sum(len(s.token_ids) for s in samples))
            results[name] = [s.token_ids for s in samples]
        same &= results["old"] == results["new"]
    load_after = os.getloadavg()

    params_n = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    step_mem = weight_bytes / bandwidth  # every weight read once per decoding step
    step_gemm = 2 * params_n * rows / flops
    limit = rows / max(step_mem, step_gemm)  # tokens/s if a step cost only the larger one
    print(
        f"model {args.model} ({params_n / 1e6:.0f}M params, fp32), {args.threads} threads, "
        f"{len(prompts)} prompts x {args.samples} samples, up to {args.max_new_tokens} new "
        f"tokens, temperature {args.temperature}, top_p {args.top_p}"
    )
    print(
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        f"({os.cpu_count()} CPUs)"
    )
    print(
        f"machine here: copy {bandwidth / 1e9:.1f} GB/s, fp32 GEMM {flops / 1e9:.0f} GFLOP/s -> "
        f"one step of {rows} rows >= {1e3 * step_mem:.1f} ms (weights read) and >= "
        f"{1e3 * step_gemm:.1f} ms (FLOPs): <= {rows / step_mem:.0f} tokens/s "
        f"(bandwidth), <= {rows / step_gemm:.0f} tokens/s (GEMM)"
    )
    rates = {}
    for name in times:
        per_call = [t / s for t, s in zip(tokens[name], times[name], strict=True)]
        rates[name] = statistics.median(per_call)
        print(
            f"{name} loop: {statistics.median(times[name]):.2f} s per call (median of "
            f"{len(times[name])}), {rates[name]:.1f} tokens/s = "
            f"{rates[name] / (rows / step_mem):.1%} of the bandwidth limit, "
            f"{rates[name] / limit:.1%} of the tighter limit"
        )
    print(f"new/old tokens/s: {rates['new'] / rates['old']:.2f}x; same samples: {same}")
    for name in list(times)[2:]:
        print(f"{name}/old tokens/s: {rates[name] / rates['old']:.2f}x (different samples)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(new, prompts, args.samples, dataclasses.replace(params, seed=0))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
