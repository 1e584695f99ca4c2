"""``rlrf eval``: evaluate a model or an OpenAI-compatible endpoint on an env (argparse only).

The logic, the files it writes and the metrics are :mod:`algorithms.evaluation`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from algorithms.evaluation import DEFAULT_SEED_TASKS, EvalConfig, evaluate, format_summary
from rlrf.errors import RLRFError
from rlrf.options import (
    DefaultsHelpFormatter,
    add_env_options,
    add_model_options,
    add_output_dir,
    add_sampling_options,
    merge_env_kwargs,
    new_parser,
    parse_args,
)

__all__ = ["build_parser", "main"]

COMMAND_HELP = "evaluate a model or an OpenAI-compatible endpoint on an env (avg@k, pass@k)"
"""The help line of this ``rlrf`` subcommand."""


def build_parser(prog: str = "rlrf eval") -> argparse.ArgumentParser:
    """The ``rlrf eval`` argument parser."""
    p = new_parser(
        prog,
        "Evaluate a model on an env without training (avg@k and pass@k over k samples a task).",
        formatter_class=DefaultsHelpFormatter,
    )
    add_env_options(p)
    add_model_options(p)
    p.add_argument("--split", default="test", help="task split")
    p.add_argument(
        "--tasks",
        type=int,
        help="evaluate the first N tasks of the split (default: all; Gymnasium-style envs: "
        f"N fixed reset seeds, default {DEFAULT_SEED_TASKS})",
    )
    add_sampling_options(
        p, rollouts=4, rollouts_help="k: samples per task (avg@k, pass@1..k)"
    )
    p.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight")
    p.add_argument("--batch-tasks", type=int, default=4, help="tasks per generate (local model)")
    p.add_argument("--env-workers", type=int, default=1, help="threads stepping/grading envs")
    p.add_argument(
        "--samples-per-request",
        type=int,
        help="cap n per endpoint request, for servers that limit it (default: k)",
    )
    p.add_argument(
        "--tokenizer",
        help="model folder or smollm2-135m whose tokenizer counts an endpoint's response tokens",
    )
    p.add_argument("--max-retries", type=int, default=3, help="retries per endpoint request")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per attempt")
    p.add_argument("--device", help="device of a local model (cuda if available, else cpu)")
    p.add_argument(
        "--generation-backend",
        choices=("hf", "vllm"),
        default="hf",
        help="sampler of a local model: hf, or vllm (an engine in this process)",
    )
    add_output_dir(p, None, "output folder (default evals/<env>--<model>)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard earlier results in --output-dir instead of resuming",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "rlrf eval") -> int:
    """Run ``rlrf eval``; return the process exit status."""
    args = parse_args(build_parser(prog), argv)
    try:
        config = EvalConfig(
            env=args.env,
            model=args.model,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            split=args.split,
            tasks=args.tasks,
            k=args.rollouts_per_question,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_new_tokens,
            seed=args.seed,
            concurrency=args.concurrency,
            batch_tasks=args.batch_tasks,
            env_workers=args.env_workers,
            samples_per_request=args.samples_per_request,
            tokenizer=args.tokenizer,
            max_retries=args.max_retries,
            request_timeout=args.request_timeout,
            env_kwargs=merge_env_kwargs(args.env_kwargs),
            device=args.device,
            generation_backend=args.generation_backend,
            out=args.output_dir,
        )
        result = evaluate(config, fresh=args.fresh, progress=not args.no_progress)
    except RLRFError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished tasks are kept, re-run to resume", file=sys.stderr)
        return 130
    print(format_summary(config, result))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:], prog="python -m algorithms.commands.eval"))
