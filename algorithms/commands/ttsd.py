r"""``rlrf ttsd``: test-time self-distillation against best-of-k and multi-turn retrying.

Example (the embedded model on the easiest arithmetic, 4 questions, 64 attempts each)::

    rlrf ttsd --env rlrf/Arithmetic-v0 --kwarg digits=1 --kwarg ops='"+"' \
        --split test --num-tasks 4 --budget 64 --max-new-tokens 96 --output-dir runs/ttsd

Prints, per question and method, whether it was solved, the attempts used and the winning
response; then discovery@k at a few budgets. Writes ``results.jsonl`` (one line per method
and question), ``discovery.jsonl`` (one line per method: discovery@k for k = 1..budget) and
``discovery.png`` into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rlrf.errors import ConfigError
from rlrf.options import (
    add_env_options,
    add_output_dir,
    merge_env_kwargs,
    new_parser,
    parse_args,
)

if TYPE_CHECKING:
    from algorithms.ttsd import QuestionResult

__all__ = ["build_parser", "main", "print_summary"]

COMMAND_HELP = "test-time self-distillation on hard questions"
"""The help line of this ``rlrf`` subcommand."""


def build_parser(prog: str = "rlrf ttsd") -> argparse.ArgumentParser:
    """Build the argument parser of ``rlrf ttsd``."""
    from algorithms.commands.train import add_config_fields
    from algorithms.ttsd import METHODS, TTSDConfig

    p = new_parser(
        prog,
        "Solve hard questions by test-time self-distillation (SDPO on one "
        "question at a time), against best-of-k sampling and multi-turn retrying on the "
        "same attempt budget.",
    )
    add_env_options(p)
    p.add_argument("--tasks", nargs="+", default=None, metavar="ID", help="task ids to solve")
    p.add_argument(
        "--split", default="test", help="without --tasks: take tasks from this split (test)"
    )
    p.add_argument(
        "--num-tasks", type=int, default=8, help="without --tasks: the split's first N (8)"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        help="methods to run (default: all)",
    )
    # every TTSDConfig field, with its docstring as help (the same flags as `rlrf train`)
    add_config_fields(p, TTSDConfig)
    add_output_dir(p, "runs/ttsd", "where results go")
    p.add_argument("--no-plot", action="store_true", help="skip discovery.png")
    return p


def print_summary(
    results: dict[str, list[QuestionResult]], budget: int, file: TextIO | None = None
) -> None:
    """Print per-question outcomes and discovery@k at a few budgets."""
    from algorithms.ttsd import attempts_to_reach, discovery_at_k

    file = file or sys.stdout
    for method, rows in results.items():
        for r in rows:
            if r.solved:
                response = " ".join((r.response or "").split())
                if len(response) > 80:
                    response = response[:77] + "..."
                line = f"solved in {r.attempts:>4} attempts: {response!r}"
            else:
                line = f"not solved in {r.attempts} attempts"
            print(f"{method:>10}  {r.task_id}  {line}", file=file)
    ks = sorted({k for k in (1, 4, 16, 32, 64, 128, 256, 512, 1024) if k < budget} | {budget})
    print("\ndiscovery@k " + " ".join(f"{k:>6}" for k in ks), file=file)
    curves = {m: discovery_at_k(rows, budget) for m, rows in results.items()}
    for method, curve in curves.items():
        print(f"{method:>11} " + " ".join(f"{curve[k - 1]:>6.3f}" for k in ks), file=file)
    if "ttsd" in curves and "best_of_k" in curves:
        target = curves["best_of_k"][-1]
        k_bok = attempts_to_reach(curves["best_of_k"], target)
        k_ttsd = attempts_to_reach(curves["ttsd"], target)
        if k_bok is None:
            print("best_of_k solved nothing: no ratio", file=file)
        elif k_ttsd is None:
            print(
                f"ttsd never reached best_of_k's final discovery {target:.3f} "
                f"(best_of_k: {k_bok} attempts)",
                file=file,
            )
        else:
            print(
                f"attempts to reach best_of_k's final discovery {target:.3f}: best_of_k "
                f"{k_bok}, ttsd {k_ttsd} (ratio {k_bok / k_ttsd:.2f}x)",
                file=file,
            )


def main(argv: Sequence[str] | None = None, prog: str = "rlrf ttsd") -> int:
    """Run ``rlrf ttsd``; return the exit status."""
    args = parse_args(build_parser(prog), list(sys.argv[1:] if argv is None else argv))
    import rlrf
    from algorithms.config import config_from_dict, flat_fields
    from algorithms.ttsd import (
        TTSDConfig,
        plot_discovery,
        run_methods,
        write_discovery,
        write_results,
    )

    try:
        fields = flat_fields(TTSDConfig)
        config = config_from_dict(
            TTSDConfig, {k: v for k, v in vars(args).items() if k in fields}, where="rlrf ttsd"
        )
        env = rlrf.make(args.env, **merge_env_kwargs(args.env_kwargs))
        tasks = args.tasks or list(env.task_ids(args.split))[: args.num_tasks]
        if not tasks:
            raise ConfigError(f"split {args.split!r} of {args.env} has no tasks; pass --tasks")
        print(
            f"{prog}: {len(tasks)} question(s), methods {', '.join(args.methods)}, "
            f"budget {config.budget}, batches of {config.batch_size}",
            flush=True,
        )
        results = run_methods(
            env, tasks, config, methods=args.methods, log=lambda s: print(s, flush=True)
        )
    except rlrf.RLRFError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    out = Path(args.output_dir)
    write_results(out / "results.jsonl", results)
    write_discovery(out / "discovery.jsonl", results, config.budget)
    if not args.no_plot:
        plot_discovery(out / "discovery.png", results, config.budget, title=args.env)
    print()
    print_summary(results, config.budget)
    print(f"\nwrote {out / 'results.jsonl'}, {out / 'discovery.jsonl'}", end="")
    print("" if args.no_plot else f", {out / 'discovery.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
