"""``rlrf diagnose``: before training, measure whether SDPO's self-teacher beats the student.

The measurements and the verdict are :mod:`algorithms.diagnose`'s. It applies to every
installed algorithm whose config has SDPO's options (a ``SDPOConfig`` section): ``--algo``
names it and ``--set`` overrides its options.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from algorithms.diagnose import OUTPUT, DiagnoseConfig, diagnose, format_summary
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

COMMAND_HELP = "measure before training whether SDPO's self-teacher is better than the student"
"""The help line of this ``rlrf`` subcommand."""


def build_parser(prog: str = "rlrf diagnose") -> argparse.ArgumentParser:
    """The ``rlrf diagnose`` argument parser."""
    p = new_parser(
        prog,
        "Measure, before training, whether SDPO's self-teacher is better than the student.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_env_options(p)
    add_model_options(p, endpoint_note=" (the divergence then is not measured)")
    p.add_argument(
        "--algo",
        default="sdpo",
        help="an installed algorithm with SDPO's options (sdpo, sdpo-srf, or a plugin's)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an SDPO option, e.g. use_feedback=false, alpha=0.5 (repeatable)",
    )
    p.add_argument("--tasks", type=int, default=16, help="train tasks sampled")
    add_sampling_options(
        p, rollouts=8, rollouts_help="G: student rollouts per task (siblings for the solution)"
    )
    p.add_argument("--teacher-samples", type=int, default=1, help="answers per teacher prompt")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level")
    p.add_argument("--batch-tasks", type=int, default=4, help="tasks per step")
    p.add_argument("--score-batch", type=int, default=8, help="rows per divergence forward pass")
    p.add_argument("--env-workers", type=int, default=1, help="threads grading envs")
    p.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight")
    p.add_argument("--device", help="device of a local model (cuda if available, else cpu)")
    add_output_dir(p, None, "output folder (default diagnoses/<env>--<model>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "rlrf diagnose") -> int:
    """Run ``rlrf diagnose``; return the process exit status."""
    from rlrf.options import parse_key_values

    args = parse_args(build_parser(prog), argv)
    try:
        config = DiagnoseConfig(
            env=args.env, model=args.model, base_url=args.base_url,
            api_key_env=args.api_key_env, algo=args.algo,
            sdpo=parse_key_values(args.set, "--set"), tasks=args.tasks,
            group_size=args.rollouts_per_question, teacher_samples=args.teacher_samples,
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_new_tokens,
            seed=args.seed, bootstrap=args.bootstrap, confidence=args.confidence,
            batch_tasks=args.batch_tasks, score_batch=args.score_batch,
            env_workers=args.env_workers, concurrency=args.concurrency,
            env_kwargs=merge_env_kwargs(args.env_kwargs), device=args.device,
            out=args.output_dir,
        )  # fmt: skip
        result = diagnose(config, progress=not args.no_progress)
    except RLRFError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(format_summary(result.report))
    print(f"wrote {result.out / OUTPUT}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:], prog="python -m algorithms.commands.diagnose"))
