"""The main job: SDPO on the embedded SmolLM2-135M-Instruct, on the CPU, with a report.

``make demo`` (or ``rlrf demo``) trains the embedded model on one-digit addition
(``rlrf/Arithmetic-v0`` with ``digits=1, ops="+"``), where the base model answers about a
fifth of the questions right at temperature 1 and the feedback ("your answer 14 to 6 + 3 is
too high") is informative without giving the answer away; successful siblings supply the
"Correct solution:" section of the teacher context.

The loss is SDPO's logit-level distillation mixed with GRPO as in the paper's Eq. 3,
λ = 0.9 (``grpo_mix``), which the paper found to help at 0.6B. At 135M the self-teacher is
barely better than the student, and the GRPO baseline wins (measured with ``make demo``:
held-out accuracy 0.266 -> 0.922 for GRPO against 0.266 -> 0.719 for the mix; pure SDPO,
``--set grpo_mix=0``, went 0.266 -> 0.234 before the issue-18 loss fixes).

The main job shows its baseline: after the SDPO run it trains GRPO on the same settings and
seed (``<output-dir>-grpo``; ``--baseline none`` skips it), overlays both in the report and
prints which method reached which held-out accuracy after how many generations.

It leaves a run folder with ``metrics.jsonl``, ``trajectories.jsonl`` (feedback and teacher
contexts included), ``config.yaml``, ``final/`` (the trained model) and ``report/``
(Markdown and PNG plots), and prints where it is with the headline numbers. Every default
below can be overridden, e.g. ``rlrf demo --steps 4 --output-dir runs/try``; ``--model``
takes any local HF folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlrf.options import new_parser, parse_args

__all__ = ["DEMO_SETTINGS", "main"]

COMMAND_HELP = "the main job: SDPO and its GRPO baseline on the embedded model, with a report"
"""The help line of this ``rlrf`` subcommand."""

#: The demo's training settings (flat config fields of ``SDPOTrainConfig``).
DEMO_SETTINGS: dict[str, Any] = {
    "env": "rlrf/Arithmetic-v0",
    "env_kwargs": {"digits": 1, "ops": "+"},
    "steps": 12,
    "questions_per_step": 4,
    "rollouts_per_question": 8,
    "max_new_tokens": 48,
    "lr": 2e-5,
    "grpo_mix": 0.9,
    "eval_every": 4,
    "eval_tasks": 32,
    "eval_k": 2,
    "checkpoint_every": 0,
    "output_dir": "runs/demo",
}


def main(argv: Sequence[str] | None = None, prog: str = "rlrf demo") -> int:
    """Run the demo; return the process exit status."""
    parser = new_parser(prog, __doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="model name or local HF folder (default: the embedded SmolLM2-135M)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEMO_SETTINGS["steps"],
        help="training steps (default %(default)s)",
    )
    parser.add_argument(
        "--output-dir",
        default=DEMO_SETTINGS["output_dir"],
        help="run folder (default %(default)s; overwritten)",
    )
    parser.add_argument(
        "--baseline",
        choices=("grpo", "none"),
        default="grpo",
        help="also train GRPO on the same settings and seed, and compare (default %(default)s)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override any other config field, e.g. --set lr=1e-5",
    )
    args = parse_args(parser, argv)

    from algorithms.config import flat_fields
    from algorithms.engine.trainer import Trainer
    from algorithms.grpo.config import GRPOTrainConfig
    from algorithms.registry import build_config
    from algorithms.report import write_report
    from rlrf.options import parse_key_values

    values = {**DEMO_SETTINGS, "model": args.model, "steps": args.steps,
              "output_dir": args.output_dir}  # fmt: skip
    values.update(parse_key_values(args.set, flag="--set"))
    config = build_config("sdpo", values, where="rlrf demo --set")
    runs = [("SDPO (mixed with GRPO)", config)]
    if args.baseline == "grpo":
        grpo_fields = set(flat_fields(GRPOTrainConfig))
        grpo_values = {k: v for k, v in values.items() if k in grpo_fields}
        grpo_values["output_dir"] = f"{args.output_dir}-grpo"
        runs.append(("GRPO", build_config("grpo", grpo_values, where="rlrf demo --set")))
    results = []
    for name, cfg in runs:
        started = time.perf_counter()
        result = Trainer(cfg).train()
        results.append((name, cfg, result, (time.perf_counter() - started) / 60))
    folders = [r.output_dir for _, _, r, _ in results]
    report = write_report(folders, out=Path(folders[0]) / "report" if len(folders) > 1 else None)
    print(f"\nrun folder{'s' if len(folders) > 1 else ''}: {', '.join(map(str, folders))}")
    print(f"report:     {report}")
    for name, cfg, result, minutes in results:
        print(
            f"{name}: trained {result.steps} steps on {result.generations} generations in "
            f"{minutes:.1f} min"
        )
        evals = [e for e in result.evals if "eval/accuracy" in e]
        if evals:
            first, last = evals[0], evals[-1]
            per_step = cfg.questions_per_step * cfg.rollouts_per_question
            curve = ", ".join(f"{e['eval/accuracy']:.3f} @ {e['step'] * per_step}" for e in evals)
            print(
                f"  held-out accuracy (avg@{cfg.eval_k}, {cfg.eval_tasks} tasks): "
                f"{first['eval/accuracy']:.3f} -> {last['eval/accuracy']:.3f}; mean response "
                f"length {first.get('eval/response_tokens_mean', float('nan')):.1f} -> "
                f"{last.get('eval/response_tokens_mean', float('nan')):.1f} tokens"
            )
            print(f"  accuracy @ generations: {curve}")
    return 0
