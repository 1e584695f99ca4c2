"""Command line for training: ``rlrf train --algo grpo|sdpo|sdpo-srf`` and ``python -m``.

Every config field is a flag (``--lr 1e-5``, ``--top-k 100``, ``--use-feedback false``); its
docstring is the ``--help`` text. ``--config file.yaml`` sets any field (flat names or
``grpo:`` / ``sdpo:`` sections) and may name the algorithm (``algorithm: sdpo-srf``); flags
given on the command line win. An unknown field in the file is an error naming the closest
valid one. The presets and the resolution of all this live in :mod:`algorithms.config`
(:func:`~algorithms.config.resolve_config`): this module only parses flags, and nothing
imports it but the entry points.

Examples::

    python -m algorithms.cli --algo sdpo --env rlrf/Arithmetic-v0 --model smollm2-135m --steps 5
    rlrf train --algo grpo --config grpo.yaml --output-dir runs/grpo
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from algorithms.config import (
    DEFAULT_ALGORITHM,
    PRESETS,
    FlatField,
    SDPOTrainConfig,
    TrainConfig,
    build_config,
    flat_fields,
    resolve_config,
)
from rlrf.errors import RLRFError

__all__ = ["ALGORITHMS", "add_train_parser", "build_config", "main"]

COMMAND_HELP = "train a policy with GRPO, SDPO or the successful-rollout variant"
"""The help line of this ``rlrf`` subcommand."""

ALGORITHMS: dict[str, type[TrainConfig]] = {
    name: preset.config_class for name, preset in PRESETS.items()
}
"""Algorithm names accepted by ``--algo`` and their config classes (from the presets)."""


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(spec: FlatField) -> Any:
    tp = spec.type
    origin = typing.get_origin(tp)
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if origin is typing.Literal:
        return str
    if origin in (dict, list, tuple):
        return json.loads
    return str


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    groups = {
        None: parser.add_argument_group("training"),
        "grpo": parser.add_argument_group("GRPO loss"),
        "sdpo": parser.add_argument_group("SDPO"),
    }
    for name, spec in flat_fields(cls).items():
        group = groups[spec.section]
        help_text = spec.doc.replace("%", "%%")
        choices = None
        if typing.get_origin(spec.type) is typing.Literal:
            choices = list(typing.get_args(spec.type))
        kind = typing.get_origin(spec.type)
        if kind in (dict, list, tuple):
            help_text += " (JSON)"
        extra: dict[str, Any] = {"nargs": "?", "const": True} if spec.type is bool else {}
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            **extra,
            type=_converter(spec),
            choices=choices,
            default=argparse.SUPPRESS,
            metavar=name.upper() if choices is None else None,
            help=f"{help_text} [default: {spec.default!r}]",
        )


_EPILOG = (
    "Several GPUs or nodes: the same arguments under `accelerate launch --multi_gpu "
    "--num_processes N -m algorithms.sdpo ...` (data parallel); several CPU processes: "
    "`torchrun --nproc_per_node N -m algorithms.sdpo ...`."
)


def _configure(parser: argparse.ArgumentParser) -> None:
    presets = "; ".join(
        f"{name}: {p.summary} ({', '.join(f'{k}={v!r}' for k, v in p.values.items())})"
        for name, p in PRESETS.items()
    )
    parser.add_argument(
        "--algo",
        choices=sorted(ALGORITHMS),
        default=None,
        help=f"Algorithm preset (default: the config file's `algorithm:`, else "
        f"{DEFAULT_ALGORITHM}); a preset's values replace the field defaults shown below. "
        f"{presets}.".replace("%", "%%"),
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file setting any field below, and `algorithm:` (flags win).",
    )
    # SDPOTrainConfig's fields are a superset of GRPOTrainConfig's
    _add_fields(parser, SDPOTrainConfig)


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parsers object."""
    parser = subparsers.add_parser(
        "train",
        help="Train a model on an env with GRPO or SDPO.",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=_EPILOG,
    )
    _configure(parser)
    parser.set_defaults(func=run_from_args)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run training from parsed arguments; print where the run folder is."""
    from algorithms.checkpoint import RunInterrupted
    from algorithms.trainer import Trainer

    skip = {"algo", "config", "func", "command"}
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    config = resolve_config(
        args.config, algorithm=args.algo, overrides=flags, where="the command line"
    )
    try:
        result = Trainer(config).train()
    except RunInterrupted as e:  # Ctrl-C: say how to resume instead of a traceback
        print(f"\n{e}", file=sys.stderr)
        return 130
    if result.final_model_dir is None:
        return 0  # not the main process of a multi-process run: it reports
    last_eval = result.evals[-1] if result.evals else {}
    print(f"run folder: {result.output_dir}")
    if last_eval:
        print(
            f"held-out accuracy {last_eval.get('eval/accuracy', float('nan')):.3f} after "
            f"{result.steps} steps ({result.generations} generations)"
        )
    return 0


def main(
    argv: Sequence[str] | None = None, *, algo: str | None = None, prog: str | None = None
) -> int:
    """Entry point: ``python -m algorithms.cli [--algo ...] [fields...]`` and ``rlrf train``."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m algorithms." + (algo.replace("-", "_") if algo else "cli"),
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=_EPILOG,
    )
    _configure(parser)
    if algo is not None:
        parser.set_defaults(algo=algo)
    args, unknown = parser.parse_known_args(argv)
    flags = [u for u in unknown if u.startswith("--")]
    if unknown:
        valid = [a for action in parser._actions for a in action.option_strings]
        name = (flags or unknown)[0].split("=")[0]
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        parser.error(f"unknown option {name}{hint}")
    try:
        return run_from_args(args)
    except RLRFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
