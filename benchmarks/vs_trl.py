"""rlrf against TRL on the same batch: per-step time, phase times and peak RSS.

Every method trains the embedded SmolLM2-135M on one-digit addition (``rlrf/Arithmetic-v0``,
``digits=1, ops="+"``) with the same budget: Q prompts x G samples per step, up to N new
tokens, AdamW at a constant lr 1e-5 (weight decay 0.01, grad-norm clip 1.0), temperature 1,
one optimizer step per rollout batch, one forward/backward over all of a step's rollouts on
both sides (TRL's ``per_device_train_batch_size`` = rlrf's ``--micro-batch-size`` = Q x G;
``--rlrf-micro-batch-size 8`` gives rlrf its own default), the same number of steps. Each
method runs in its own process (so peak RSS is its own), one after another:

* ``trl-grpo``: TRL's ``GRPOTrainer`` (beta 0, no reference model, as rlrf's GRPO default),
  rewards from the env's own grader;
* ``trl-sdpo``: TRL's experimental ``SDPOTrainer`` with a successful sibling as the teacher's
  demonstration. Its privileged context is a per-prompt dataset column, not per-rollout
  feedback, so it gets none: both SDPO runs then reprompt from successful siblings, which is
  the same amount of teacher scoring per row;
* ``rlrf-grpo`` and ``rlrf-sdpo``: ``rlrf train --algo grpo|sdpo`` with the same settings.

Per-step figures are medians over steps 2..N (step 1 pays one-off warm-up). Phase times:
generation (TRL: time inside ``model.generate``; rlrf: its ``timing/generation``) and the rest
of the step. Ratios are TRL / rlrf. ``--precision bf16`` gives TRL ``bf16=True`` and rlrf
``--mixed-precision bf16``: the same precision settings on both sides.

``--rlrf-generation-backend vllm`` gives rlrf's runs ``--generation-backend vllm`` (its colocated
engine, bf16 on CPU: rlrf's choice of engine counts as part of its step) and runs them with
``--rlrf-python`` (default ``.venv-vllm/bin/python``, which ``make test-vllm`` builds; TRL stays
in this interpreter).

Next to each figure the benchmark prints its fraction of this machine's limits, measured at
the start of the run with the same thread count: GEMM FLOP/s (fp32 and bf16 2048x2048
matmuls) and memory-copy bandwidth. rlrf's update is counted as the matrix products its student
pass runs: 6 x the decoder's parameters x the tokens it computes (a group's prompt once, rlrf
shares it across the group's rows, + every response token) + 6 x the LM head's parameters x the
response tokens (no logits are computed for prompts). SDPO's teacher pass (2 x parameters x the
teacher's tokens) is not counted, so SDPO's fraction is a lower bound. Generation is counted
as one read of the weights per decoding step (the longest response of each step; fp32
weights, bf16 ones under bf16 autocast and on vLLM), the bound that batch decoding meets.

    pip install -e '.[bench]'     # TRL (the benchmark says so when it is missing)
    python benchmarks/vs_trl.py                        # fp32, 6 steps, 4 x 4, 32 tokens
    python benchmarks/vs_trl.py --precision bf16
    python benchmarks/vs_trl.py --only rlrf-grpo,trl-grpo --steps 4
    python benchmarks/vs_trl.py --rlrf-generation-backend vllm
    python benchmarks/vs_trl.py --rlrf-generation-backend hf,vllm   # rlrf once per backend
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ("trl-grpo", "rlrf-grpo", "trl-sdpo", "rlrf-sdpo")
ENV_ID = "rlrf/Arithmetic-v0"
ENV_KWARGS = {"digits": 1, "ops": "+"}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_limits(threads: int) -> dict[str, float]:
    """fp32 and bf16 GEMM GFLOP/s and memory-copy GB/s on ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    limits: dict[str, float] = {}
    n = 2048
    for name, dtype in (("fp32_gflops", torch.float32), ("bf16_gflops", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):  # warm-up: thread pool, clocks, packing buffers
            a @ b
        best = math.inf
        for _ in range(10):  # the best of 10: the limit, not a typical draw
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        limits[name] = 2 * n**3 / best / 1e9
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)  # 256 MiB
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    limits["copy_gbps"] = 2 * src.numel() * 4 / best / 1e9  # read + write
    return limits


def _median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


# --- workers (each runs in its own process) -----------------------------------------------


def _trl_worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit(
            "TRL is not installed: pip install -e '.[bench]' (or pip install trl)"
        ) from None
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    import rlrf
    from algorithms.models import load_model

    env = rlrf.make(ENV_ID, **ENV_KWARGS)
    ids = list(env.task_ids("train"))
    rows = [{"prompt": env.prompt(t), "task_id": t} for t in ids[: args.questions * args.steps]]
    if method == "trl-sdpo":
        for row in rows:
            row["privileged_context"] = None
    dataset = Dataset.from_list(rows)

    def reward(prompts: Any, completions: Any, task_id: list[str], **_: Any) -> list[float]:
        out = []
        for completion, tid in zip(completions, task_id, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            r = env.evaluate(tid, text).reward
            out.append(0.0 if r is None else float(r))
        return out

    model, tokenizer = load_model(args.model, dtype=torch.float32)
    generate_s = [0.0]
    original_generate = model.generate

    def timed_generate(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original_generate(*a, **kw)
        finally:
            generate_s[0] += time.perf_counter() - t0

    model.generate = timed_generate  # type: ignore[method-assign]
    steps: list[dict[str, float]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.t0 = time.perf_counter()
            generate_s[0] = 0.0

        def on_step_end(self, *_: Any, **__: Any) -> None:
            total = time.perf_counter() - self.t0
            steps.append({"step": total, "generation": generate_s[0]})

    common: dict[str, Any] = dict(
        output_dir=tempfile.mkdtemp(prefix="vs_trl_"),
        per_device_train_batch_size=args.questions * args.rollouts,
        gradient_accumulation_steps=1,
        num_generations=args.rollouts,
        max_completion_length=args.max_new_tokens,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.01,
        max_grad_norm=1.0,
        temperature=1.0,
        max_steps=args.steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=args.precision == "bf16",
        seed=0,
        beta=0.0,
        disable_tqdm=True,
        shuffle_dataset=False,
        # TRL turns activation checkpointing on by default (memory for ~30% more compute);
        # rlrf does not, so TRL runs without it unless asked (--trl-gradient-checkpointing)
        gradient_checkpointing=args.trl_gradient_checkpointing,
    )
    if method == "trl-grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=GRPOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
    else:
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

        trainer = SDPOTrainer(
            model=model,
            reward_funcs=reward,
            args=SDPOConfig(
                **common,
                use_successful_as_teacher=True,
                success_reward_threshold=1.0,
                distillation_mode="topk_logits",
                distillation_topk=20,
                distillation_alpha=1.0,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
    trainer.train()
    return {"steps": steps}


def _rlrf_worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    from algorithms.engine.trainer import Trainer
    from rlrf.cli import main as rlrf_main

    # CPU seconds of each update (every thread): unlike wall time, little distorted by load
    update_cpu: list[float] = []
    update = Trainer._update

    def timed_update(self: Trainer, rows: Any) -> dict[str, float]:
        c0 = time.process_time()
        try:
            return update(self, rows)
        finally:
            update_cpu.append(time.process_time() - c0)

    Trainer._update = timed_update  # type: ignore[method-assign]

    out = tempfile.mkdtemp(prefix="vs_trl_rlrf_")
    argv = [
        "train",
        "--algo",
        method.removeprefix("rlrf-"),
        "--env",
        ENV_ID,
        "--env-kwargs",
        json.dumps(ENV_KWARGS),
        "--steps",
        str(args.steps),
        "--questions-per-step",
        str(args.questions),
        "--rollouts-per-question",
        str(args.rollouts),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--micro-batch-size",
        str(args.rlrf_micro_batch_size or args.questions * args.rollouts),
        "--lr",
        "1e-5",
        "--warmup-steps",
        "0",
        "--temperature",
        "1.0",
        "--model",
        args.model,
        "--eval-every",
        "0",
        "--checkpoint-every",
        "0",
        "--mixed-precision",
        "bf16" if args.precision == "bf16" else "no",
        "--generation-backend",
        args.rlrf_generation_backend,
        "--progress",
        "false",
        "--output-dir",
        out,
    ]
    code = rlrf_main(argv)
    if code:
        raise SystemExit(f"rlrf train exited with {code}")
    steps = []
    with open(Path(out) / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            m = json.loads(line)
            if "timing/step" in m:
                steps.append({"step": m["timing/step"], "generation": m["timing/generation"]})
    for step, cpu in zip(steps, update_cpu, strict=False):
        step["update_cpu"] = cpu
    for step, tokens in zip(steps, _step_tokens(Path(out), args.questions), strict=False):
        step.update(tokens)
    return {"steps": steps}


def _param_count(name: str = "smollm2-135m") -> tuple[int, int]:
    """The embedded model's decoder and LM-head parameter counts (the head is tied to the
    embedding, whose lookup costs no FLOPs; loaded in the driver: workers' RSS stays theirs)."""
    from algorithms.models import load_model

    model, _ = load_model(name)
    head = model.get_output_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - head, head


def _step_tokens(run: Path, groups_per_step: int) -> list[dict[str, int]]:
    """Per step: prompt tokens (once per group), response tokens, and decoding steps."""
    from algorithms.models import load_tokenizer
    from algorithms.sampling.hf import encode_chat

    tokenizer = load_tokenizer()
    groups = [
        json.loads(line)
        for line in (run / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    groups = [g for g in groups if g.get("type") == "group"]
    per_step = []
    for i in range(0, len(groups), groups_per_step):
        prompts = responses = decode = 0
        for group in groups[i : i + groups_per_step]:
            # a group's rollouts share their task's prompt: rlrf's update runs it once
            prompts += len(encode_chat(tokenizer, group["trajectories"][0]["prompt"]))
            for traj in group["trajectories"]:
                for turn in traj["turns"]:
                    n = len(turn.get("response_token_ids") or [])
                    responses += n
                    decode = max(decode, n)
        per_step.append(
            {"prompt_tokens": prompts, "response_tokens": responses, "decode_steps": decode}
        )
    return per_step


def _worker(method: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    run = _trl_worker if method.startswith("trl") else _rlrf_worker
    result = run(method, args)
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


# --- driver ------------------------------------------------------------------------------


def _rlrf_python(args: argparse.Namespace, backend: str) -> str:
    if args.rlrf_python:
        return args.rlrf_python
    if backend == "vllm":
        venv = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
        if venv.is_file():
            return str(venv)
    return sys.executable


def _run_method(method: str, args: argparse.Namespace, backend: str) -> dict[str, Any] | None:
    python = _rlrf_python(args, backend) if method.startswith("rlrf") else sys.executable
    cmd = [python, __file__, "--worker", method, "--rlrf-generation-backend", backend]
    for name in (
        "steps",
        "questions",
        "rollouts",
        "max_new_tokens",
        "threads",
        "precision",
        "rlrf_micro_batch_size",
        "model",
    ):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.trl_gradient_checkpointing:
        cmd.append("--trl-gradient-checkpointing")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"{method}: FAILED (exit {proc.returncode}): " + " | ".join(tail))
        return None
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall_s"] = wall
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--model", default="smollm2-135m", help="model name or local folder")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument(
        "--rlrf-micro-batch-size",
        type=int,
        default=0,
        help="rollouts per rlrf forward/backward (default: all of a step's, as TRL's "
        "per_device_train_batch_size here; rlrf's own default is 8: less memory, slower)",
    )
    ap.add_argument("--only", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="TRL's own default (on); off unless given, as rlrf's default",
    )
    ap.add_argument(
        "--rlrf-generation-backend",
        default="hf",
        help='rlrf\'s sampling backend: "hf", "vllm" (its colocated engine) or "hf,vllm" (each '
        "rlrf method once per backend, in the same run)",
    )
    ap.add_argument(
        "--rlrf-python",
        default=None,
        help="interpreter for rlrf's runs (default: this one; .venv-vllm's with vllm)",
    )
    ap.add_argument("--smoke", action="store_true", help="CI's tiny run")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker, args)
        return
    if args.smoke:  # a tiny random model, 2 steps of 1 x 2 rollouts, 4 tokens
        from algorithms.testing import save_tiny

        args.steps, args.questions, args.rollouts, args.max_new_tokens = 2, 1, 2, 4
        args.model = str(save_tiny(Path(tempfile.mkdtemp()) / "tiny"))
        if importlib.util.find_spec("trl") is None:
            print("smoke: TRL is not installed, so its side is not run (pip install -e '.[bench]')")
            args.only = ",".join(m for m in args.only.split(",") if not m.startswith("trl"))

    import torch

    backends = [b.strip() for b in args.rlrf_generation_backend.split(",") if b.strip()]
    if not backends or set(backends) - {"hf", "vllm"}:
        raise SystemExit(
            f"--rlrf-generation-backend {args.rlrf_generation_backend!r}: give hf, vllm or hf,vllm"
        )
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads; {args.precision}; {args.steps} steps of "
        f"{args.questions} x {args.rollouts} rollouts, <= {args.max_new_tokens} new tokens; "
        f"micro-batch TRL {args.questions * args.rollouts}, rlrf "
        f"{args.rlrf_micro_batch_size or args.questions * args.rollouts}; "
        f"TRL gradient checkpointing {'on' if args.trl_gradient_checkpointing else 'off'}; "
        f"load average now {os.getloadavg()[0]:.1f} (ratios need a quiet machine); "
        "rlrf generation backend " + ", ".join(f"{b} ({_rlrf_python(args, b)})" for b in backends)
    )
    limits = machine_limits(args.threads)
    print(
        f"machine limits ({args.threads} threads): fp32 GEMM {limits['fp32_gflops']:.0f} "
        f"GFLOP/s, bf16 GEMM {limits['bf16_gflops']:.0f} GFLOP/s, copy "
        f"{limits['copy_gbps']:.1f} GB/s"
    )
    results: dict[str, dict[str, Any]] = {}
    params = (0, 0)
    runs = []
    for method in [m.strip() for m in args.only.split(",") if m.strip()]:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        runs += [(method, b) for b in (backends if method.startswith("rlrf") else ["hf"])]
    for method, backend in runs:
        r = _run_method(method, args, backend)
        if r is None:
            continue
        method = method if backend == "hf" else f"{method}+{backend}"
        step = _median_after_first([s["step"] for s in r["steps"]])
        gen = _median_after_first([s["generation"] for s in r["steps"]])
        results[method] = {"step": step, "generation": gen, "rss": r["peak_rss_mib"]}
        cpu = [s["update_cpu"] for s in r["steps"] if "update_cpu" in s]
        print(
            f"{method:15s} step {step:6.2f}s (generation {gen:5.2f}s, rest {step - gen:5.2f}s), "
            f"peak RSS {r['peak_rss_mib'] / 1024:.2f} GiB, {len(r['steps'])} steps, "
            f"process wall {r['wall_s']:.0f}s"
            + (f", update {_median_after_first(cpu):.2f} CPU-s" if cpu else "")
        )
        if r["steps"] and all("response_tokens" in x for x in r["steps"]):
            params = params if params[0] else _param_count(args.model)
            # HF generation reads the fp32 weights (bf16 copies under autocast); vLLM its bf16
            width = 2 if args.precision == "bf16" or backend == "vllm" else 4
            print(" " * 16 + _limit_fractions(r, params, args.precision, limits, width))
    if args.smoke and len(results) < len(runs):
        raise SystemExit(f"smoke: {len(runs) - len(results)} of {len(runs)} runs failed")
    for algo in ("grpo", "sdpo"):
        for backend in backends:
            a = results.get(f"trl-{algo}")
            b = results.get(f"rlrf-{algo}" + ("" if backend == "hf" else f"+{backend}"))
            if a and b:
                print(
                    f"{algo}: rlrf ({backend} sampling) is {a['step'] / b['step']:.2f}x faster "
                    f"per step than TRL (generation "
                    f"{a['generation'] / max(b['generation'], 1e-9):.2f}x), with "
                    f"{b['rss'] / a['rss']:.2f}x TRL's peak RSS"
                )


def _limit_fractions(
    r: dict[str, Any],
    params: tuple[int, int],
    precision: str,
    limits: dict[str, float],
    bytes_per_weight: int,
) -> str:
    """rlrf's update FLOP/s and generation bandwidth as fractions of the machine's limits."""
    steps = r["steps"][1:] if len(r["steps"]) > 1 else r["steps"]
    update_s = statistics.median(s["step"] - s["generation"] for s in steps)
    body, head = params
    flops = statistics.median(
        6 * body * (s["prompt_tokens"] + s["response_tokens"]) + 6 * head * s["response_tokens"]
        for s in steps
    )
    gemm = limits["bf16_gflops" if precision == "bf16" else "fp32_gflops"] * 1e9
    gen_bytes = statistics.median(
        bytes_per_weight * (body + head) * s["decode_steps"] for s in steps
    )
    gen_s = statistics.median(s["generation"] for s in steps)
    return (
        f"update {flops / 1e12:.2f} TFLOP in {update_s:.2f} s = {flops / update_s / 1e9:.0f} "
        f"GFLOP/s, {flops / update_s / gemm:.0%} of the {precision} GEMM limit; generation "
        f"{gen_bytes / 1e9:.1f} GB of weight reads in {gen_s:.2f} s = "
        f"{gen_bytes / gen_s / 1e9:.1f} GB/s, {gen_bytes / gen_s / 1e9 / limits['copy_gbps']:.0%} "
        "of the copy bandwidth"
    )


if __name__ == "__main__":
    main()
