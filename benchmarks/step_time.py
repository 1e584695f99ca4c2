"""Per-phase time and peak memory of one GRPO step vs one SDPO step on the SAME rollout batch.

Rollouts are sampled once (seeded), then each algorithm runs its update (SDPO: teacher
scoring + distillation; GRPO: policy-gradient loss) on identical rows from identical
weights. Prints the SDPO/GRPO ratio of the update (and of the whole step including the
shared generation). Target: SDPO/GRPO <= 1.25x.

    python benchmarks/step_time.py --model tiny            # random tiny model (seconds)
    python benchmarks/step_time.py --model smollm2-135m    # the embedded model
    python benchmarks/step_time.py --model smollm2-135m --device cuda --dtype bfloat16
    python benchmarks/step_time.py --model smollm2-135m --generation-backend vllm  # vLLM
    python benchmarks/step_time.py --model smollm2-135m --env rlrf/Arithmetic-v0 \
        --env-kwargs '{"digits": 1, "ops": "+"}'    # some rollouts succeed: solutions in context
    python benchmarks/step_time.py --model smollm2-135m --only grpo   # one algorithm

Each update also reports its CPU seconds (``time.process_time``, every thread of the
process), which another job's load distorts far less than wall time. On CPU the peak RSS is
the process's so far, the shared rollout batch's model copies included; ``vs_trl.py`` gives
each method's own peak.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from typing import Any

import torch

from algorithms.engine.trainer import Trainer
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.sdpo.config import SDPOTrainConfig
from algorithms.testing import TargetCharEnv, tiny_model, tiny_tokenizer


def _peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB, process-wide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help='"tiny" or a model name/folder')
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--env",
        default="target",
        help='"target" (a toy env: one fixed feedback line per task) or a registered env id',
    )
    ap.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments for --env")
    ap.add_argument(
        "--generation-backend",
        choices=("hf", "vllm"),
        default="hf",
        help="sampler of the shared rollout batch (vllm: an engine in this process, bf16)",
    )
    ap.add_argument(
        "--only",
        choices=("grpo", "sdpo"),
        default=None,
        help="update with one algorithm only (no SDPO/GRPO ratio)",
    )
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.questions, args.rollouts, args.max_new_tokens = "tiny", 2, 2, 4
        args.repeats = 1

    if args.model == "tiny":
        model, tokenizer = tiny_model(0, layers=4, hidden=64), tiny_tokenizer()
    else:
        from algorithms.models import load_model

        model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(args.device)
    common = dict(
        steps=1,
        questions_per_step=args.questions,
        rollouts_per_question=args.rollouts,
        max_new_tokens=args.max_new_tokens,
        micro_batch_size=args.micro_batch_size,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        output_dir="/tmp/rlrf_step_time",
        mixed_precision=args.mixed_precision,
    )
    if args.env == "target":
        env: Any = TargetCharEnv(n_tasks=args.questions, targets="ab")
    else:
        import rlrf

        env = rlrf.make(args.env, **json.loads(args.env_kwargs))
    # one shared rollout batch (seeded sampling: identical for both algorithms)
    t0 = time.perf_counter()
    base = Trainer(
        GRPOTrainConfig(**common, generation_backend=args.generation_backend),
        env=env,
        model=copy.deepcopy(model),
        tokenizer=tokenizer,
    )
    if args.generation_backend == "vllm":
        print(f"vLLM engine start (weights synced in): {time.perf_counter() - t0:.1f}s")
    tasks = base.sampler.next(args.questions)
    from algorithms.sampling.hf import SamplingParams
    from rlrf.rollout import collect_groups

    t0 = time.perf_counter()
    groups, stats = collect_groups(
        env, base.sampling, tasks, args.rollouts,
        SamplingParams(max_new_tokens=args.max_new_tokens, seed=0),
    )  # fmt: skip
    gen_s = time.perf_counter() - t0
    tokens = stats.response_tokens
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; "
        f"batch {args.questions}x{args.rollouts} rollouts, {tokens} response tokens; "
        f"generation {gen_s:.2f}s (shared); "
        f"{sum(t.success for g in groups for t in g.trajectories)} rollouts succeeded"
    )
    results = {}
    for name, cfg in (
        ("grpo", GRPOTrainConfig(**common)),
        ("sdpo", SDPOTrainConfig(**common)),
    ):
        if args.only not in (None, name):
            continue
        best = None
        for _ in range(args.repeats):
            trainer = Trainer(cfg, env=env, model=copy.deepcopy(model), tokenizer=tokenizer)
            rows, _ = trainer.objective.rows(copy.deepcopy(groups), trainer.policy.encode)
            teacher_lengths = [len(getattr(r, "teacher_prompt_ids", None) or ()) for r in rows]
            _peak_reset(args.device)
            t0, c0 = time.perf_counter(), time.process_time()
            metrics = trainer._update(rows)
            if args.device == "cuda":
                torch.cuda.synchronize()
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            teacher = metrics.get("timing/teacher", 0.0)
            run = {"update": total, "cpu": cpu, "teacher": teacher, "peak_mib": _peak(args.device)}
            if best is None or run["update"] < best["update"]:
                best = run
        results[name] = best
        print(
            f"{name}: update {best['update']:.3f}s, {best['cpu']:.2f} CPU-s "
            f"(teacher scoring {best['teacher']:.3f}s), "
            + (
                f"peak memory {best['peak_mib']:.0f} MiB"
                if args.device == "cuda"
                else f"process peak RSS so far {best['peak_mib']:.0f} MiB"
            )
            + (
                f"; teacher prompts {min(teacher_lengths)}-{max(teacher_lengths)} tokens"
                if name == "sdpo" and teacher_lengths
                else ""
            )
        )
    if args.only:
        return
    ratio = results["sdpo"]["update"] / results["grpo"]["update"]
    step_ratio = (gen_s + results["sdpo"]["update"]) / (gen_s + results["grpo"]["update"])
    print(f"SDPO/GRPO update time: {ratio:.2f}x; whole step incl. generation: {step_ratio:.2f}x")
    print(f"target <= 1.25x: {'met' if step_ratio <= 1.25 else 'NOT met'} (whole step)")


if __name__ == "__main__":
    main()
